//! The native TOML configuration.
use super::{Config, ConfigErrors};
use std::path::Path;
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let _ = path;
    todo!()
}
