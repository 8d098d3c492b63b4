//! Running where the platforms call: hook sources read from the platforms' own conventions
//! (Google's snapshot scripts, qemu-ga's `fsfreeze-hook.d`). `docs/platforms/` has one page
//! per platform.

pub mod bridge;
pub mod install;
pub mod sources;
