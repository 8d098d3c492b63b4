//! Running where the platforms call: the bridge their hooks run and the installer. The hook
//! sources read from the platforms' own conventions (Google's snapshot scripts, qemu-ga's
//! `fsfreeze-hook.d`) are configuration: [`crate::config::platform`]. `docs/platforms/` has
//! one page per platform.

pub mod bridge;
pub mod install;
