//! Azure's plugin host INI file and plugin JSON files.
use super::{Config, ConfigErrors};
use std::path::Path;
pub fn load_plugin_host(path: &Path) -> Result<Config, ConfigErrors> {
    let _ = path;
    todo!()
}
pub fn load_plugin_json_config(path: &Path) -> Result<Config, ConfigErrors> {
    let _ = path;
    todo!()
}
