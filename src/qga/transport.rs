//! The channel to the host: a virtio-serial port, or a unix socket for tests and for
//! hypervisors that hand the guest a socket.

use super::protocol::Splitter;
use super::Agent;
use rustix::event::{poll, PollFd, PollFlags};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The port name hypervisors give the guest agent's channel.
pub const PORT_NAME: &str = "org.qemu.guest_agent.0";

/// How often the loops look at the termination flag.
const TICK: Duration = Duration::from_millis(200);

/// Find the virtio-serial port called `name`: `DEV_DIR/name` when udev made the link, else the
/// port whose `SYS_DIR/*/name` says `name` (its device is `/dev/<entry>`).
pub fn find_port(dev_dir: &Path, sys_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let link = dev_dir.join(name);
    if link.exists() {
        return Ok(link);
    }
    let entries = std::fs::read_dir(sys_dir)
        .map_err(|e| format!("no virtio-serial ports ({}: {e})", sys_dir.display()))?;
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for entry in names {
        let port_name =
            std::fs::read_to_string(sys_dir.join(&entry).join("name")).unwrap_or_default();
        if port_name.trim_end() == name {
            return Ok(Path::new("/dev").join(entry));
        }
    }
    Err(format!(
        "no virtio-serial port named {name} (is the guest agent channel configured for this VM?)"
    ))
}

fn wait_readable(fd: &impl std::os::fd::AsFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let t = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: TICK.as_nanos() as i64,
    };
    matches!(poll(&mut fds, Some(&t)), Ok(n) if n > 0)
}

/// Read, answer and write until end of input or termination. `Ok(true)` at end of input.
fn converse<S: Read + Write + std::os::fd::AsFd>(
    agent: &Arc<Agent>,
    stream: &mut S,
) -> std::io::Result<bool> {
    let mut splitter = Splitter::new();
    let mut buf = [0u8; 8192];
    loop {
        if crate::termination::requested() {
            return Ok(false);
        }
        if !wait_readable(stream) {
            continue;
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        let frames = splitter.push(&buf[..n]);
        let mut out = Vec::new();
        agent.handle_frames(frames, &mut |b| out.extend_from_slice(b));
        if !out.is_empty() {
            stream.write_all(&out)?;
        }
    }
}

/// Listen on a unix socket (mode 0600) and serve one client at a time.
pub fn serve_unix(agent: &Arc<Agent>, path: &Path) -> Result<(), String> {
    let listener = crate::server::listen::bind_private(path)?;
    eprintln!("quiesce guest-agent: listening on {}", path.display());
    while !crate::termination::requested() {
        if !wait_readable(&listener) {
            continue;
        }
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        if let Err(e) = converse(agent, &mut stream) {
            tracing::warn!(error = %e, "guest-agent connection ended");
        }
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Serve the host on a virtio-serial port. While no host is connected, reads see end of
/// input: the agent waits and reads again.
pub fn serve_port(agent: &Arc<Agent>, path: &Path) -> Result<(), String> {
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    eprintln!("quiesce guest-agent: serving {}", path.display());
    while !crate::termination::requested() {
        match converse(agent, &mut port) {
            Ok(true) => std::thread::sleep(TICK),
            Ok(false) => break,
            Err(e) => {
                tracing::warn!(error = %e, "virtio-serial port error");
                std::thread::sleep(TICK);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_through_sysfs_without_udev() {
        if crate::skipped_unless_root(
            "finds_the_port_through_sysfs_without_udev",
            "scratch under /var/lib/quiesce-tests",
        ) {
            return;
        }
        let dir =
            Path::new("/var/lib/quiesce-tests").join(format!("qga-port-{}", std::process::id()));
        let sys = dir.join("sys");
        for (entry, name) in [("vport0p1", "com.example.other"), ("vport1p1", PORT_NAME)] {
            std::fs::create_dir_all(sys.join(entry)).unwrap();
            std::fs::write(sys.join(entry).join("name"), format!("{name}\n")).unwrap();
        }
        let dev = dir.join("dev");
        std::fs::create_dir_all(&dev).unwrap();
        assert_eq!(
            find_port(&dev, &sys, PORT_NAME).unwrap(),
            Path::new("/dev/vport1p1")
        );
        std::fs::write(dev.join(PORT_NAME), "").unwrap();
        assert_eq!(
            find_port(&dev, &sys, PORT_NAME).unwrap(),
            dev.join(PORT_NAME)
        );
        let err = find_port(&dev, &sys, "nope").unwrap_err();
        assert!(err.contains("no virtio-serial port named nope"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
