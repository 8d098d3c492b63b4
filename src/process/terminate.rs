//! Ending a tree: SIGTERM, a grace period, SIGKILL, verified by pid; the leftovers of a
//! normal exit are terminated, or kept running for a hold ([`KeptGroup`]).
use super::capture::drain_to_eof;
use super::cgroup::Cgroup;
use super::tree::{cgroup_members, descendants, live_group_members, stat_state_pgrp, tree_members};
use super::{deadline_after, AttemptEnd, Process, KILL_WAIT, LINGER};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`Process::finish`] found and did.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Group members still alive after the leader exited, which were terminated.
    pub terminated: Vec<i32>,
    /// Members that did not die even after SIGKILL and [`KILL_WAIT`] (uninterruptible).
    pub unkillable: Vec<i32>,
    /// Something outside the group still held an output pipe after [`LINGER`]; quiesce
    /// closed its ends.
    pub pipes_abandoned: bool,
    /// Group members left running on purpose ([`Process::keep_leftovers`]): a pre script's
    /// background session that must live until the hook's post script has run.
    pub kept: Option<KeptGroup>,
}

/// Leftovers of a finished script, kept running until [`KeptGroup::end`] (or drop): the
/// process group id and a thread draining (and discarding) whatever they still write to
/// the script's output pipes, so they never block on a full pipe nor die of `SIGPIPE`.
#[derive(Debug)]
pub struct KeptGroup {
    pgid: Pid,
    cgroup: Option<Arc<Cgroup>>,
    /// Pids alive when the script exited.
    pub pids: Vec<i32>,
    drain: Option<std::thread::JoinHandle<()>>,
}

impl KeptGroup {
    /// Terminate what is left of the group: SIGTERM, up to `grace`, SIGKILL, up to
    /// [`KILL_WAIT`]. Signals go to the group only while a live member still pins its id.
    /// Returns the pids that were still alive (and were terminated).
    pub fn end(mut self, grace: Duration) -> Vec<i32> {
        self.end_now(grace)
    }

    fn end_now(&mut self, grace: Duration) -> Vec<i32> {
        let pgid = self.pgid.as_raw_nonzero().get();
        let cg = self.cgroup.clone();
        let members = move || tree_members(pgid, cg.as_deref(), None);
        let alive = members();
        for (sig, wait) in [(Signal::TERM, grace), (Signal::KILL, KILL_WAIT)] {
            if members().is_empty() {
                break;
            }
            if !live_group_members(pgid).is_empty() {
                let _ = rustix::process::kill_process_group(self.pgid, sig);
            }
            if let Some(cg) = &self.cgroup {
                cg.signal(sig);
            }
            let until = deadline_after(Instant::now(), wait);
            while !members().is_empty() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(t) = self.drain.take() {
            if members().is_empty() {
                let _ = t.join();
            }
        }
        alive
    }
}

impl Drop for KeptGroup {
    fn drop(&mut self) {
        if self.drain.is_some() {
            self.end_now(Duration::from_millis(100));
        }
    }
}

impl Process {
    /// Send `sig` to the whole process group. Does nothing once the leader is reaped (the
    /// group id could then belong to someone else).
    pub fn signal_group(&self, sig: Signal) {
        // Without a cgroup, note the leader's descendants first: once the group signal kills
        // their parent they lose the parent chain that finds them (a `setsid` daemon).
        if self.cgroup.is_none() && !self.reaped {
            let mut tracked = self.tracked.borrow_mut();
            for pid in descendants(self.pid()) {
                if !tracked.contains(&pid) {
                    tracked.push(pid);
                }
            }
        }
        if !self.reaped || self.group_outlives_leader {
            match rustix::process::kill_process_group(self.pid, sig) {
                Ok(()) | Err(Errno::SRCH) => {}
                Err(e) => {
                    tracing::warn!(pgid = self.pid(), error = %e, "kill of process group failed")
                }
            }
        }
        // Members that left the group (setsid): by cgroup, else those tracked above.
        match &self.cgroup {
            Some(cg) => cg.signal(sig),
            None => {
                let mut tracked = self.tracked.borrow_mut();
                tracked.retain(|p| stat_state_pgrp(*p).is_some_and(|(st, _)| st != 'Z'));
                for pid in tracked.iter() {
                    if let Some(pid) = Pid::from_raw(*pid) {
                        let _ = rustix::process::kill_process(pid, sig);
                    }
                }
            }
        }
    }

    /// Live members of the tree: the process group, the cgroup (or, without one, the
    /// leader's descendants by parent chain while it is unreaped).
    pub(super) fn members(&self) -> Vec<i32> {
        let anchor = (!self.reaped).then(|| self.pid());
        let mut pids = tree_members(self.pid(), self.cgroup.as_deref(), anchor);
        for p in self.tracked.borrow().iter() {
            if !pids.contains(p) && stat_state_pgrp(*p).is_some_and(|(st, _)| st != 'Z') {
                pids.push(*p);
            }
        }
        pids
    }

    /// SIGTERM to the group, up to `grace` for the whole group to be gone (output keeps
    /// draining), then SIGKILL to the group and up to [`KILL_WAIT`] for it to disappear.
    /// Returns the leader's exit if it came, and whether SIGKILL was needed. Does not reap.
    pub fn terminate(&mut self, grace: Duration) -> (Option<AttemptEnd>, bool) {
        if self.reaped && !self.group_outlives_leader {
            return (self.exit.clone(), false);
        }
        self.signal_group(Signal::TERM);
        if self.wait_group_gone(deadline_after(Instant::now(), grace)) {
            return (self.exit.clone(), false);
        }
        self.signal_group(Signal::KILL);
        self.wait_group_gone(Instant::now() + KILL_WAIT);
        self.killed = true;
        (self.exit.clone(), true)
    }

    /// Drain output until the leader has exited and no live member of the group is left, or
    /// `until` passes. Returns true when the group is gone.
    fn wait_group_gone(&mut self, until: Instant) -> bool {
        loop {
            if self.exit.is_some() && self.members().is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            // While the leader lives its pidfd wakes us; after that, members are polled.
            let step = if self.exit.is_some() {
                Duration::from_millis(5).min(until - now)
            } else {
                until - now
            };
            self.poll_once(Some(step), None);
        }
    }

    /// After the leader exited (or gave up being killed): terminate what is left of its group
    /// (SIGTERM, `grace`, SIGKILL, verified by pid), read the pipes until EOF or [`LINGER`],
    /// close them and reap the leader. Idempotent.
    pub fn finish(&mut self, grace: Duration) -> Leftovers {
        let mut left = Leftovers::default();
        if self.reaped {
            return left;
        }
        if self.exit.is_none() && !self.killed {
            // Misuse: take the tree down first (once; a leader that survived SIGKILL and
            // KILL_WAIT is stuck in the kernel, e.g. writing to a frozen filesystem, and
            // waiting again would only keep the freeze longer).
            self.terminate(grace);
        }
        // Whatever is already in the pipes.
        self.poll_once(Some(Duration::ZERO), None);
        let pgid = self.pid();
        if self.exit.is_some() {
            self.reap();
            // Leftovers, cheaply: after the reap the group id stays allocated exactly as long
            // as some member of the group is left, so `kill(-pgid, 0)` failing with ESRCH
            // proves the group empty (the common case, one system call). If it succeeds, the
            // id is still pinned by our own leftovers (it cannot have been freed and handed
            // to a new group leader in between without the pid space wrapping around), and
            // `/proc` tells the live ones from zombies. When the group is empty, only members
            // that left it (setsid) can be left, and the cgroup holds every one of them: its
            // one small file is read, not every `/proc/PID/stat` on the machine (a scan that
            // costs milliseconds per hook on a busy machine).
            let pinned = rustix::process::test_kill_process_group(self.pid).is_ok();
            let strays = match (pinned, self.cgroup.as_deref()) {
                (true, _) => self.members(),
                (false, Some(cg)) => cgroup_members(cg),
                (false, None) => Vec::new(),
            };
            match strays.is_empty() {
                true => {}
                false => {
                    let normal = matches!(self.exit, Some(AttemptEnd::Exited { .. }));
                    if self.keep && normal {
                        let fds: Vec<OwnedFd> = [self.stdout.take(), self.stderr.take()]
                            .into_iter()
                            .flatten()
                            .collect();
                        let drain = std::thread::Builder::new()
                            .name(format!("kept-{pgid}"))
                            .spawn(move || drain_to_eof(fds))
                            .ok();
                        left.kept = Some(KeptGroup {
                            pgid: self.pid,
                            cgroup: self.cgroup.clone(),
                            pids: strays,
                            drain,
                        });
                    } else {
                        left.terminated = strays;
                        self.group_outlives_leader = true;
                        self.terminate(grace);
                        left.unkillable = self.members();
                        self.group_outlives_leader = false;
                    }
                }
            }
        } else {
            left.unkillable = self.members();
        }
        let end = Instant::now() + LINGER;
        while self.stdout.is_some() || self.stderr.is_some() {
            let now = Instant::now();
            if now >= end {
                left.pipes_abandoned = true;
                break;
            }
            self.poll_once(Some(end - now), None);
        }
        self.stdout = None;
        self.stderr = None;
        self.stdin = None;
        // A leader that never died is handed to a reaper thread.
        self.reap();
        if !left.unkillable.is_empty() {
            tracing::error!(pgid, pids = ?left.unkillable, "processes survived SIGKILL (uninterruptible sleep)");
        }
        left
    }
}
