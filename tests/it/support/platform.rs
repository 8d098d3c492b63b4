//! Shared by the platform tests: a `quiesce serve` configuration with one held hook.

use super::{LoopFs, Scratch};
use std::path::{Path, PathBuf};

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A configuration freezing `fs`, serving on `socket`, with a held hook `db` that appends
/// `held` to `log` once quiesced and `released` when quiesce lets it go.
pub fn held_hook_config(dir: &Scratch, fs: &LoopFs, socket: &Path, log: &Path) -> PathBuf {
    let hold = dir.script(
        "hold.sh",
        &format!(
            "#!/bin/sh\necho held >> {log}\necho READY\ncat >/dev/null\necho released >> {log}\n",
            log = q(log)
        ),
    );
    dir.file(
        "quiesce.toml",
        &format!(
            "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\ninclude = [{}]\ntimeout = \"30s\"\n\
             [server]\nsocket = {}\n[[hook]]\nname = \"db\"\npre = [{}]\nhold = true\n",
            q(&dir.join("state")),
            q(&dir.join("catalog.db")),
            q(&fs.mount_point),
            q(socket),
            q(&hold)
        ),
        0o600,
    )
}
