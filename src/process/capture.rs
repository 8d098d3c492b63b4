//! Output capture: one poll loop drains stdout and stderr into bounded tails (and the
//! optional stdout capture and line watch) and notices the exit through the pidfd.
use super::wait::end_of;
use super::Process;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{WaitId, WaitIdOptions};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// Bytes read from a pipe at a time.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// Longest line the line watcher keeps; longer lines cannot be the watched line.
const MAX_WATCHED_LINE: usize = 256;

/// Keeps the last `cap` bytes written to it.
#[derive(Debug, Clone)]
pub struct Tail {
    cap: usize,
    buf: std::collections::VecDeque<u8>,
    total: u64,
}

impl Tail {
    pub fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: std::collections::VecDeque::with_capacity(cap.min(4096)),
            total: 0,
        }
    }
    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = if data.len() > self.cap {
            &data[data.len() - self.cap..]
        } else {
            data
        };
        let overflow = (self.buf.len() + data.len()).saturating_sub(self.cap);
        self.buf.drain(..overflow);
        self.buf.extend(data);
    }
    /// Total bytes ever pushed.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// The kept bytes, lossily decoded.
    pub fn to_string_lossy(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl Process {
    /// Drain output (and notice the exit) until `wake` becomes readable or hangs up. Used by
    /// the hold-mode drain thread; quiesce wakes it by closing the write end.
    pub fn drain_until(&mut self, wake: BorrowedFd<'_>) {
        loop {
            if self.poll_once(None, Some(wake)) {
                return;
            }
        }
    }

    /// One round: poll the open pipes, the pidfd (until the exit is seen) and `wake`; read
    /// everything available. Returns true when `wake` fired.
    pub(super) fn poll_once(
        &mut self,
        timeout: Option<Duration>,
        wake: Option<BorrowedFd<'_>>,
    ) -> bool {
        let woken;
        let (out_ready, err_ready, pid_ready) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
            let mut slots = [usize::MAX; 4];
            if let Some(fd) = &self.stdout {
                slots[0] = fds.len();
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            if let Some(fd) = &self.stderr {
                slots[1] = fds.len();
                fds.push(PollFd::new(fd, PollFlags::IN));
            }
            if self.exit.is_none() && !self.reaped {
                slots[2] = fds.len();
                fds.push(PollFd::new(&self.pidfd, PollFlags::IN));
            }
            if let Some(w) = &wake {
                slots[3] = fds.len();
                fds.push(PollFd::from_borrowed_fd(*w, PollFlags::IN));
            }
            let ts = timeout.map(|d| Timespec {
                tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: d.subsec_nanos() as _,
            });
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) => {}
                Err(Errno::INTR) => return false,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                    return false;
                }
            }
            let ready = |slot: usize| slot != usize::MAX && !fds[slot].revents().is_empty();
            woken = ready(slots[3]);
            (ready(slots[0]), ready(slots[1]), ready(slots[2]))
        };
        if out_ready {
            self.read_stream(true);
        }
        if err_ready {
            self.read_stream(false);
        }
        if pid_ready {
            if let Ok(Some(st)) = rustix::process::waitid(
                WaitId::PidFd(self.pidfd.as_fd()),
                WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
            ) {
                self.exit = Some(end_of(&st));
            }
        }
        woken
    }

    /// Read what is available on one pipe (bounded rounds, so one busy stream cannot starve
    /// the other or the exit check); EOF closes our end.
    fn read_stream(&mut self, stdout: bool) {
        for _ in 0..16 {
            let fd = if stdout { &self.stdout } else { &self.stderr };
            let Some(fd) = fd else { return };
            match rustix::io::read(fd, &mut self.buf[..]) {
                Ok(0) => {
                    if stdout {
                        self.stdout = None;
                    } else {
                        self.stderr = None;
                    }
                    return;
                }
                Ok(n) => {
                    if stdout {
                        let data = &self.buf[..n];
                        self.stdout_tail.push(data);
                        if self.capture_limit > 0 {
                            let room = self.capture_limit.saturating_sub(self.capture.len());
                            self.capture.extend_from_slice(&data[..room.min(n)]);
                            if n > room {
                                self.capture_overflow = true;
                            }
                        }
                        if self.watch.is_some() && !self.line_seen {
                            self.scan_lines(n);
                        }
                    } else {
                        self.stderr_tail.push(&self.buf[..n]);
                    }
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return,
                Err(e) => {
                    tracing::warn!(error = %e, stdout, "read from child pipe failed; closing it");
                    if stdout {
                        self.stdout = None;
                    } else {
                        self.stderr = None;
                    }
                    return;
                }
            }
        }
    }

    fn scan_lines(&mut self, n: usize) {
        let Some(want) = &self.watch else { return };
        for &b in &self.buf[..n] {
            if b == b'\n' {
                let mut line = &self.line[..];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                if !self.line_overlong && line == &want[..] {
                    self.line_seen = true;
                    return;
                }
                self.line.clear();
                self.line_overlong = false;
            } else if self.line.len() < MAX_WATCHED_LINE {
                self.line.push(b);
            } else {
                self.line_overlong = true;
            }
        }
    }
}

/// Read and discard `fds` until every one reached EOF (the last writer is gone).
pub(super) fn drain_to_eof(fds: Vec<OwnedFd>) {
    let mut open: Vec<OwnedFd> = fds;
    let mut buf = vec![0u8; READ_CHUNK];
    while !open.is_empty() {
        let mut pfds: Vec<PollFd<'_>> =
            open.iter().map(|f| PollFd::new(f, PollFlags::IN)).collect();
        if rustix::event::poll(&mut pfds, None).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let ready: Vec<bool> = pfds.iter().map(|p| !p.revents().is_empty()).collect();
        drop(pfds);
        let mut i = 0;
        open.retain(|fd| {
            let r = ready[i];
            i += 1;
            !r || !matches!(rustix::io::read(fd, &mut buf[..]), Ok(0) | Err(Errno::BADF))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn keeps_only_the_tail() {
        let mut t = Tail::new(4);
        t.push(b"ab");
        t.push(b"cdef");
        assert_eq!(t.to_string_lossy(), "cdef");
        t.push(b"0123456789");
        assert_eq!(t.to_string_lossy(), "6789");
        assert_eq!(t.total(), 16);
    }
}
