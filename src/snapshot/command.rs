//! The `command` provider: any external command, run with a timeout while the set is frozen.
use super::{Provider, SnapshotContext, SnapshotError};
use crate::report::SnapshotRef;
use std::path::PathBuf;

pub struct CommandProvider {
    argv: Vec<String>,
}

impl CommandProvider {
    pub fn new(argv: Vec<String>) -> Self {
        CommandProvider { argv }
    }
}

impl Provider for CommandProvider {
    fn name(&self) -> &'static str {
        "command"
    }
    fn must_not_freeze(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    fn take(&mut self, ctx: &SnapshotContext<'_>) -> Result<Vec<SnapshotRef>, SnapshotError> {
        let _ = (ctx, &self.argv);
        todo!("command provider")
    }
}
