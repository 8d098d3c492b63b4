//! Forwarding to a real qemu-ga on a local unix socket: the host's message is sent
//! unchanged and the first answer that comes back is given back unchanged.

use super::protocol::{Frame, Splitter};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest wait for qemu-ga's answer (`guest-exec` and friends answer at once; slow commands
/// such as `guest-fstrim` still fit).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Wait for a possible error answer to a command that answers nothing when it succeeds.
const SILENT_WAIT: Duration = Duration::from_secs(1);

/// Commands qemu-ga answers nothing to when they succeed (`success-response: false`).
pub fn expects_answer(command: &str) -> bool {
    !matches!(
        command,
        "guest-shutdown" | "guest-suspend-disk" | "guest-suspend-ram" | "guest-suspend-hybrid"
    )
}

/// Send `msg` to the qemu-ga at `socket` and return its answer line (with its newline), or
/// `None` when a command that answers nothing on success got no answer.
pub fn forward(
    socket: &Path,
    msg: &[u8],
    expects_answer: bool,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut stream = UnixStream::connect(socket)?;
    let wait = if expects_answer {
        ANSWER_TIMEOUT
    } else {
        SILENT_WAIT
    };
    stream.set_write_timeout(Some(wait))?;
    stream.write_all(msg)?;
    stream.write_all(b"\n")?;
    let deadline = Instant::now() + wait;
    let mut splitter = Splitter::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if expects_answer {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in time",
                ))
            } else {
                Ok(None)
            };
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => {
                return if expects_answer {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "qemu-ga closed the connection without answering",
                    ))
                } else {
                    Ok(None)
                }
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for frame in splitter.push(&buf[..n]) {
            if let Frame::Message(mut answer) = frame {
                answer.push(b'\n');
                return Ok(Some(answer));
            }
        }
    }
}
