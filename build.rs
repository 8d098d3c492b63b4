//! Build script: records the commit the binary is built from, for `quiesce --version`.
//!
//! Looked up in this order: the `QUIESCE_COMMIT` environment variable (a packager's
//! override), `git rev-parse HEAD` in a checkout, then `packaging/commit.txt`, which
//! `git archive` fills in (`export-subst` in `.gitattributes`), so that a source tarball
//! without `.git` still knows its commit. Otherwise the commit is "unknown".
use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// A hexadecimal commit id, shortened to 12 digits; `None` for anything else.
fn commit_id(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() >= 7 && s.chars().all(|c| c.is_ascii_hexdigit())).then(|| s[..s.len().min(12)].into())
}

fn from_git() -> Option<String> {
    // Rebuild when HEAD moves: HEAD itself, the branch it names, and the packed refs.
    let dir = git(&["rev-parse", "--git-dir"])?;
    println!("cargo:rerun-if-changed={dir}/HEAD");
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={common}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let ref_file = Path::new(&common).join(branch);
            if ref_file.exists() {
                println!("cargo:rerun-if-changed={}", ref_file.display());
            }
        }
    }
    commit_id(&git(&["rev-parse", "HEAD"])?)
}

fn main() {
    println!("cargo:rerun-if-env-changed=QUIESCE_COMMIT");
    println!("cargo:rerun-if-changed=packaging/commit.txt");
    let commit = std::env::var("QUIESCE_COMMIT")
        .ok()
        .and_then(|s| commit_id(&s))
        .or_else(from_git)
        .or_else(|| {
            std::fs::read_to_string("packaging/commit.txt")
                .ok()
                .and_then(|s| commit_id(&s))
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=QUIESCE_COMMIT={commit}");
}
