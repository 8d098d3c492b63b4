//! `quiesce guest-agent`: quiesce as the QEMU guest agent (see `docs/guest-agent.md`).
//!
//! A hypervisor (Proxmox, libvirt, OpenStack Nova) quiesces a guest by sending guest-agent
//! commands over the virtio-serial port `org.qemu.guest_agent.0`. quiesce answers the
//! protocol itself ([`protocol`]) for synchronisation, ping, info and the fsfreeze commands;
//! a freeze is a whole quiesce prepare (pre hooks, syncfs, parallel freeze under the guard)
//! and a thaw its release (thaw, post hooks, report in the catalog). Every other command is
//! forwarded unchanged to a real qemu-ga on a local unix socket when one is configured
//! ([`proxy`]), and answered `CommandNotFound` otherwise.
//!
//! Freezes are operations of the transport-neutral registry ([`crate::api`]), recorded with
//! the caller `guest-agent`. The guard deadline applies: a host that freezes and never thaws
//! (it crashed, the connection broke) gets the guest thawed after `--max-freeze` (capped by
//! `freeze.timeout`); the registry's watchdog then finishes the operation and records it.

pub mod protocol;
pub mod proxy;
pub mod transport;

use crate::api::{Api, Caller, FreezeScope, OpState, PrepareRequest};
use crate::codes::ErrorCode;
use crate::config::Config;
use crate::pipeline::opid;
use protocol::{Command, Frame, QgaError, Request};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the agent is set up.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Longest freeze; the effective deadline is the smaller of this and `freeze.timeout`.
    pub max_freeze: Duration,
    /// A real qemu-ga listening on this unix socket answers every command quiesce does not.
    pub forward_to: Option<PathBuf>,
}

/// The agent: one per process, shared by the connection loop; freezes are operations of
/// the process's [`Api`] (which owns the guard deadline and its watchdog).
pub struct Agent {
    api: Arc<Api>,
    opts: AgentOptions,
    /// The operation a host's freeze started, and how many filesystems it froze.
    held: Mutex<Option<(String, usize)>>,
}

impl Agent {
    /// An agent for `cfg`.
    pub fn new(cfg: Config, opts: AgentOptions) -> Result<Arc<Agent>, crate::codes::Problem> {
        Ok(Arc::new(Agent {
            api: Api::new(cfg)?,
            opts,
            held: Mutex::new(None),
        }))
    }

    /// The guard deadline a freeze gets (`--max-freeze` capped at `freeze.timeout`).
    pub fn deadline(&self) -> Duration {
        self.api.effective_deadline(Some(self.opts.max_freeze)).0
    }

    /// Is a host's freeze in force right now? (Not once the deadline thawed it.)
    pub fn frozen(&self) -> bool {
        let mut held = self.held.lock().unwrap();
        let Some((id, _)) = held.as_ref() else {
            return false;
        };
        let frozen = matches!(self.api.status(id), Ok(s) if s.state == OpState::Frozen);
        if !frozen {
            *held = None;
        }
        frozen
    }

    /// Answer every frame of one read; the answers are written with `write` in order.
    pub fn handle_frames(self: &Arc<Self>, frames: Vec<Frame>, write: &mut dyn FnMut(&[u8])) {
        for frame in frames {
            match frame {
                Frame::Garbage(why) => {
                    write(&protocol::answer_error(&QgaError::generic(why), None))
                }
                Frame::Message(msg) => self.handle_message(&msg, write),
            }
        }
    }

    /// Answer one message.
    pub fn handle_message(self: &Arc<Self>, msg: &[u8], write: &mut dyn FnMut(&[u8])) {
        let req = match protocol::decode(msg) {
            Ok(r) => r,
            Err((e, id)) => return write(&protocol::answer_error(&e, id.as_ref())),
        };
        let id = req.id.clone();
        let own = match protocol::command(&req) {
            Err(e) => return write(&protocol::answer_error(&e, id.as_ref())),
            Ok(c) => c,
        };
        if self.frozen() && !protocol::ALLOWED_WHILE_FROZEN.contains(&req.execute.as_str()) {
            let e = QgaError::disabled_while_frozen(&req.execute);
            return write(&protocol::answer_error(&e, id.as_ref()));
        }
        let Some(cmd) = own else {
            return self.forward(&req, msg, write);
        };
        let result = match cmd {
            Command::Sync { id: n, delimited } => {
                if delimited {
                    write(&[protocol::SYNC_BYTE]);
                }
                Ok(json!(n))
            }
            Command::Ping => Ok(json!({})),
            Command::Info => Ok(self.info()),
            Command::FreezeStatus => Ok(json!(if self.frozen() { "frozen" } else { "thawed" })),
            Command::Freeze => self.freeze(None).map(|n| json!(n)),
            Command::FreezeList { mountpoints } => self.freeze(mountpoints).map(|n| json!(n)),
            Command::Thaw => Ok(json!(self.thaw())),
        };
        match result {
            Ok(v) => write(&protocol::answer_return(&v, id.as_ref())),
            Err(e) => write(&protocol::answer_error(&e, id.as_ref())),
        }
    }

    fn forward(&self, req: &Request, msg: &[u8], write: &mut dyn FnMut(&[u8])) {
        let id = req.id.as_ref();
        match &self.opts.forward_to {
            None => write(&protocol::answer_error(
                &QgaError::not_found(&req.execute),
                id,
            )),
            Some(sock) => match proxy::forward(sock, msg, proxy::expects_answer(&req.execute)) {
                Ok(Some(answer)) => write(&answer),
                Ok(None) => {}
                Err(e) => write(&protocol::answer_error(
                    &QgaError::generic(format!(
                        "the command {} could not be forwarded to qemu-ga at {}: {e}",
                        req.execute,
                        sock.display()
                    )),
                    id,
                )),
            },
        }
    }

    /// `guest-info`: quiesce's version and its commands, plus those of the qemu-ga behind it.
    fn info(&self) -> Value {
        let frozen = self.frozen();
        let mut commands: Vec<Value> = protocol::OWN_COMMANDS
            .iter()
            .map(|name| {
                json!({
                    "name": name,
                    "enabled": !frozen || protocol::ALLOWED_WHILE_FROZEN.contains(name),
                    "success-response": true,
                })
            })
            .collect();
        if let Some(sock) = &self.opts.forward_to {
            if let Ok(Some(answer)) = proxy::forward(sock, br#"{"execute":"guest-info"}"#, true) {
                let theirs: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                if let Some(list) = theirs["return"]["supported_commands"].as_array() {
                    for c in list {
                        let name = c["name"].as_str().unwrap_or_default();
                        if protocol::is_own(name) {
                            continue;
                        }
                        let mut c = c.clone();
                        if frozen {
                            c["enabled"] = json!(false);
                        }
                        commands.push(c);
                    }
                }
            }
        }
        json!({ "version": env!("CARGO_PKG_VERSION"), "supported_commands": commands })
    }

    /// Pre hooks + syncfs + freeze. `None` is the configured plan; a list names exact mount
    /// points (paths that are not mount points are skipped, as qemu-ga does). Returns how
    /// many filesystems are frozen.
    fn freeze(self: &Arc<Self>, mountpoints: Option<Vec<String>>) -> Result<usize, QgaError> {
        let mut held = self.held.lock().unwrap();
        if held.is_some() {
            // Only reachable by a racing second connection: the frozen check came first.
            return Err(QgaError::disabled_while_frozen("guest-fsfreeze-freeze"));
        }
        let scope = match mountpoints {
            None => FreezeScope::Plan,
            Some(list) => {
                let kept = existing_mount_points(&list);
                if kept.is_empty() {
                    return Ok(0);
                }
                FreezeScope::Mounts(kept)
            }
        };
        let id = format!("qga-{}", opid::generate());
        let req = PrepareRequest {
            id: id.clone(),
            deadline: Some(self.opts.max_freeze),
            thaw_by: None,
            scope,
            caller: Caller::GuestAgent,
        };
        let answer = self
            .api
            .prepare(req)
            .map_err(|e| problems_error(&e.problems()))?;
        match answer.state {
            OpState::Frozen => {
                let count = answer.frozen.len();
                tracing::info!(operation_id = %id, count, "frozen for the host");
                *held = Some((id, count));
                Ok(count)
            }
            OpState::Prepared => {
                // Nothing to freeze (freezing disabled, an empty plan): finish at once.
                drop(held);
                let _ = self.api.release(&id);
                Ok(0)
            }
            _ => Err(problems_error(&answer.errors)),
        }
    }

    /// Thaw + post hooks; returns how many filesystems were thawed (0 when nothing was held,
    /// or the deadline already thawed them).
    fn thaw(&self) -> usize {
        let Some((id, count)) = self.held.lock().unwrap().take() else {
            return 0;
        };
        match self.api.release(&id) {
            Ok(report)
                if report
                    .errors
                    .iter()
                    .all(|e| e.code != ErrorCode::FreezeGuardFired) =>
            {
                count
            }
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "thaw: nothing to release");
                0
            }
        }
    }

    /// Thaw and finish whatever is held (at shutdown).
    pub fn shutdown(&self) {
        self.api.shutdown();
    }
}

fn problems_error(problems: &[crate::codes::Problem]) -> QgaError {
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    QgaError::generic(text.join("; "))
}

/// The paths of `list` that are mount points right now, as given (exact match, like qemu-ga).
fn existing_mount_points(list: &[String]) -> Vec<PathBuf> {
    let mounts = crate::freeze::mountinfo::read_self().unwrap_or_default();
    list.iter()
        .map(PathBuf::from)
        .filter(|p| {
            let found = mounts.iter().any(|m| &m.mount_point == p);
            if !found {
                tracing::warn!(path = %p.display(), "freeze-list: not a mount point, skipped");
            }
            found
        })
        .collect()
}

/// `quiesce guest-agent` options (qemu-ga's spelling where it has one).
#[derive(clap::Args, Debug, Clone)]
pub struct GuestAgentArgs {
    /// Channel method: `virtio-serial` (default) or `unix-listen` (as qemu-ga's `-m`).
    #[arg(long, short = 'm', default_value = "virtio-serial", value_parser = ["virtio-serial", "unix-listen"])]
    pub method: String,
    /// Port or socket path (default: the virtio-serial port named org.qemu.guest_agent.0).
    #[arg(long, short = 'p', value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Longest freeze a host may hold; capped by freeze.timeout ("5m").
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    pub max_freeze: Duration,
    /// A real qemu-ga listening on this unix socket answers every other command.
    #[arg(long, value_name = "SOCKET")]
    pub forward_to: Option<PathBuf>,
}

/// Run `quiesce guest-agent` with its arguments. Returns the exit code.
pub fn run(cfg: Config, args: GuestAgentArgs) -> i32 {
    let channel = match (args.method.as_str(), args.path) {
        ("unix-listen", Some(p)) => Channel::UnixListen(p),
        ("unix-listen", None) => {
            eprintln!("quiesce guest-agent: unix-listen needs --path SOCKET");
            return crate::codes::EXIT_USAGE;
        }
        (_, Some(p)) => Channel::VirtioSerial(p),
        (_, None) => match default_port() {
            Ok(p) => Channel::VirtioSerial(p),
            Err(e) => {
                eprintln!("quiesce guest-agent: {e}");
                return 1;
            }
        },
    };
    if args.max_freeze.is_zero() {
        eprintln!("quiesce guest-agent: --max-freeze must be more than 0");
        return crate::codes::EXIT_USAGE;
    }
    let opts = AgentOptions {
        max_freeze: args.max_freeze,
        forward_to: args.forward_to,
    };
    serve(cfg, channel, opts)
}

/// Where the agent talks to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A virtio-serial port (character device).
    VirtioSerial(PathBuf),
    /// Listen on a unix socket, one client at a time (qemu-ga's `-m unix-listen`).
    UnixListen(PathBuf),
}

/// Run `quiesce guest-agent` until SIGTERM/SIGINT. Returns the exit code.
pub fn serve(cfg: Config, channel: Channel, opts: AgentOptions) -> i32 {
    let agent = match Agent::new(cfg, opts) {
        Ok(a) => a,
        Err(p) => {
            eprintln!("quiesce guest-agent: {p}");
            return 1;
        }
    };
    let result = match &channel {
        Channel::UnixListen(path) => transport::serve_unix(&agent, path),
        Channel::VirtioSerial(path) => transport::serve_port(&agent, path),
    };
    agent.shutdown();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("quiesce guest-agent: {e}");
            1
        }
    }
}

/// The default virtio-serial port, found by name (works without udev).
pub fn default_port() -> Result<PathBuf, String> {
    transport::find_port(
        Path::new("/dev/virtio-ports"),
        Path::new("/sys/class/virtio-ports"),
        transport::PORT_NAME,
    )
}
