//! Whether quiesce was told to stop (SIGTERM, SIGINT or SIGQUIT). The signal handler that
//! [`crate::freeze::install_signal_handlers`] installs sets it; every wait that must end
//! early when the agent is stopping (interruptible children, the accept loops, the freeze
//! steps) reads it. Here, not in the freeze guard, so that those readers depend on nothing
//! but this flag.
use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Has a termination signal been received?
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Record a termination signal. Async-signal-safe (one atomic store).
pub(crate) fn note() {
    REQUESTED.store(true, Ordering::SeqCst);
}
