//! Tests that drive Debian's real qemu-ga. Its `guest-fsfreeze-thaw` thaws every frozen
//! filesystem on the machine, so these live in a binary of their own (cargo runs test
//! binaries one after another: nothing else is freezing while they run), and every test
//! here holds [`QGA_LOCK`] so they never overlap each other either.

use std::sync::Mutex;

mod guest_agent;
mod platform_qga;
#[path = "../it/support/mod.rs"]
mod support;

/// Held by every test in this binary for its whole run.
pub static QGA_LOCK: Mutex<()> = Mutex::new(());
