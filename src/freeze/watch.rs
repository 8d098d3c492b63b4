//! The agent's own watch on its guard while filesystems are frozen.
//!
//! The guard guarantees the thaw if the agent dies; this watch covers the other way round.
//! A thread of the agent waits on the guard's pidfd and on the deadline (plus a short
//! grace, so that a guard that is alive fires first). If the guard exits without having
//! fired (killed), or has not fired by the deadline plus the grace (SIGSTOPped, stuck), the
//! watch kills it (a stopped guard must never wake up and thaw later: what is frozen then
//! may be somebody else's freeze) and thaws at once by itself.
use super::guard::GuardHandle;
use super::{ioctl, monotonic_ns, GuardLost, LostWhy};
use crate::codes::Problem;
use rustix::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long after the deadline the guard has to fire before the agent acts.
pub const DEADLINE_GRACE: Duration = Duration::from_millis(300);

/// What a thaw by the agent did.
#[derive(Debug, Default)]
pub struct Thawed {
    pub problems: Vec<Problem>,
    pub thaw_ns: u64,
    pub last_thaw: Option<u64>,
}

/// Thaw each listed filesystem in order.
pub fn thaw_all(list: &[(OwnedFd, PathBuf)]) -> Thawed {
    let mut out = Thawed::default();
    for (fd, mp) in list {
        let t0 = monotonic_ns();
        let r = ioctl::thaw(fd);
        let t1 = monotonic_ns();
        out.thaw_ns += t1.saturating_sub(t0);
        match r {
            Ok(ioctl::Thawed::Thawed) => out.last_thaw = Some(t1),
            Ok(ioctl::Thawed::WasNotFrozen) => {}
            Err(e) => out.problems.push(ioctl::thaw_problem(mp, e)),
        }
    }
    out
}

/// A running watch.
pub struct Watch {
    stop: OwnedFd,
    thread: std::thread::JoinHandle<Option<(GuardLost, Thawed)>>,
}

impl Watch {
    /// Watch `guard` until [`Watch::stop`]; `thaw` lists the frozen filesystems in thaw
    /// order, `deadline_ns` is the guard's deadline (CLOCK_MONOTONIC).
    pub fn start(
        guard: Arc<Mutex<GuardHandle>>,
        thaw: Vec<(OwnedFd, PathBuf)>,
        deadline_ns: u64,
    ) -> Option<Watch> {
        let pidfd = guard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pidfd_dup()?;
        let (stop_r, stop_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ok()?;
        let until = deadline_ns
            .saturating_add(u64::try_from(DEADLINE_GRACE.as_nanos()).unwrap_or(u64::MAX));
        let thread = std::thread::Builder::new()
            .name("guard-watch".into())
            .spawn(move || watch(&guard, &pidfd, &stop_r, until, &thaw))
            .ok()?;
        Some(Watch {
            stop: stop_w,
            thread,
        })
    }

    /// Stop watching; what the watch did, if it had to act.
    pub fn stop(self) -> Option<(GuardLost, Thawed)> {
        drop(self.stop);
        self.thread.join().ok().flatten()
    }
}

fn watch(
    guard: &Mutex<GuardHandle>,
    pidfd: &OwnedFd,
    stop: &OwnedFd,
    until_ns: u64,
    thaw: &[(OwnedFd, PathBuf)],
) -> Option<(GuardLost, Thawed)> {
    use rustix::event::{PollFd, PollFlags};
    let why = loop {
        let now = monotonic_ns();
        let left = Duration::from_nanos(until_ns.saturating_sub(now));
        let mut pfds = [
            PollFd::new(pidfd, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        let ts = rustix::time::Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: left.subsec_nanos().into(),
        };
        if rustix::event::poll(&mut pfds, Some(&ts)).is_err() {
            continue; // EINTR
        }
        if !pfds[1].revents().is_empty() {
            return None;
        }
        let exited = !pfds[0].revents().is_empty();
        if exited || monotonic_ns() >= until_ns {
            let mut g = guard.lock().unwrap_or_else(|e| e.into_inner());
            if g.poll().fired.is_some() {
                // The guard did its job; the agent's thaw comes later, if at all.
                return None;
            }
            if exited {
                break LostWhy::Died;
            }
            g.kill_and_wait(Duration::from_secs(2));
            if g.poll().fired.is_some() {
                return None;
            }
            break LostWhy::Unresponsive;
        }
    };
    let at = monotonic_ns();
    let thawed = thaw_all(thaw);
    Some((
        GuardLost {
            why,
            at_monotonic_ns: at,
        },
        thawed,
    ))
}
