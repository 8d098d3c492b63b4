//! Hold mode (SPEC section 4): one process kept alive across the snapshot.
//!
//! The hook signals "quiesced" by printing a line `READY` on stdout within its pre timeout.
//! After the snapshot and thaw quiesce releases it: stdin is closed, then SIGTERM to its
//! process group after a grace period, then SIGKILL. Its exit status is the post result.
