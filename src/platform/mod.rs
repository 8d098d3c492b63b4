//! Running where the platforms call: hook sources read from the platforms' own conventions
//! (Google's snapshot scripts, qemu-ga's `fsfreeze-hook.d`). `docs/platforms/` has one page
//! per platform.

pub mod bridge;
pub mod install;
/// Read while a configuration loads, so kept under `config` (see [`crate::config::platforms`]).
pub use crate::config::platforms as sources;
