//! Man pages and shell completions, generated from the clap definitions of the command line
//! (the caller passes them in), so the command line is described in one place only:
//! `quiesce generate man DIR`, `quiesce generate completions DIR` (used by
//! `scripts/release.sh`).

use std::path::Path;

/// The version `quiesce --version` prints: the crate version and the commit it was built
/// from (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("QUIESCE_COMMIT"),
    ")"
);

/// What `quiesce generate` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Artefact {
    /// `quiesce.1` and one `quiesce-SUBCOMMAND.1` per visible subcommand.
    Man,
    /// bash (`quiesce.bash`), zsh (`_quiesce`) and fish (`quiesce.fish`) completions.
    Completions,
}

/// Write `what` for the command line `cmd` into `dir` (created if missing); returns the
/// process exit code.
pub fn run(cmd: clap::Command, what: Artefact, dir: &Path) -> i32 {
    match write(cmd, what, dir) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("quiesce: cannot write into {}: {e}", dir.display());
            1
        }
    }
}

fn write(cmd: clap::Command, what: Artefact, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    match what {
        Artefact::Man => clap_mangen::generate_to(cmd, dir),
        Artefact::Completions => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut cmd.clone(), "quiesce", dir)?;
            }
            Ok(())
        }
    }
}

/// Open the catalog for writing, which migrates a catalog written by an older release
/// (`quiesce migrate-catalog`, run by the package's postinst on upgrade). No catalog yet is
/// fine.
pub fn migrate_catalog(cfg: &crate::config::Config) -> i32 {
    if !cfg.paths.catalog.exists() {
        return 0;
    }
    match crate::catalog::Catalog::open(&cfg.paths.catalog) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("quiesce: {}", e.problem());
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_page_per_visible_subcommand_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("quiesce-generate-{}", std::process::id()));
        let cmd = || <crate::cli::Cli as clap::CommandFactory>::command();
        assert_eq!(run(cmd(), Artefact::Man, &dir), 0);
        assert_eq!(run(cmd(), Artefact::Completions, &dir), 0);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for want in [
            "quiesce.1",
            "quiesce-snapshot.1",
            "quiesce-check.1",
            "quiesce.bash",
            "_quiesce",
            "quiesce.fish",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.contains("generate")),
            "hidden command documented: {names:?}"
        );
        let page = std::fs::read_to_string(dir.join("quiesce-snapshot.1")).unwrap();
        assert!(page.contains("dry"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_names_the_commit() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        let commit = VERSION
            .rsplit("commit ")
            .next()
            .unwrap()
            .trim_end_matches(')');
        assert!(
            commit == "unknown"
                || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{VERSION}"
        );
    }
}
