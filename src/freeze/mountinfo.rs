//! Decoding `/proc/self/mountinfo` (see proc(5)).
use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// Root of the mount within the filesystem (decoded).
    pub root: PathBuf,
    /// Mount point (decoded).
    pub mount_point: PathBuf,
    pub mount_options: Vec<String>,
    pub optional_fields: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: Vec<String>,
}
