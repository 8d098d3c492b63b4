//! quiesce: application-consistent snapshots for Linux.
//!
//! The modules mirror the flow of one run:
//! [`config`] (native and Azure formats into one model) -> [`trust`] checks ->
//! [`hooks`] (pre scripts) -> [`freeze`] (syncfs, FIFREEZE, guard) -> [`snapshot`] providers ->
//! thaw -> [`hooks`] (post scripts) -> [`pipeline`] (outcomes into codes and a consistency
//! level) -> [`report`], [`catalog`], [`metrics`]. [`api`] is the operation registry every front end drives ([`server`]: HTTP).

pub mod api;
pub mod catalog;
pub mod cli;
pub mod codes;
pub mod config;
pub mod files;
pub mod freeze;
pub mod generate;
pub mod group;
pub mod hooks;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod platform;
pub mod process;
pub mod qga;
pub mod quote;
pub mod report;
pub mod server;
pub mod snapshot;
pub mod termination;
pub mod time;
pub mod trust;
pub mod verify;

#[cfg(test)]
mod dependency_rules;

/// Unit tests that need root (root-owned files, FIFREEZE, test scratch under `/var/lib`)
/// call this first: as an ordinary user they return early and say so on stderr, past the
/// harness's output capture, so a plain `cargo test` shows what it did not run.
#[cfg(test)]
pub(crate) fn skipped_unless_root(test: &str, why: &str) -> bool {
    use std::io::Write;
    if rustix::process::geteuid().is_root() {
        return false;
    }
    let _ = writeln!(std::io::stderr(), "{test}: skipped: needs root ({why})");
    true
}
