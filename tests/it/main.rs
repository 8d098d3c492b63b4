//! The integration tests: one binary, a module per area, and `support` for what they share.
//! Everything here runs the real binary against real processes, loop filesystems and
//! servers; the root-only tests skip themselves with a visible reason when run unprivileged.
//! Tests of different areas run concurrently in this one binary, so each test owns its
//! scratch directories, loop filesystems, sockets and state paths.

mod alerts;
mod api;
mod azure_compat;
mod azure_migration;
mod btrfs;
mod catalog;
mod command_provider;
mod databases;
mod freeze;
mod freeze_errors;
mod group;
mod hardening;
mod hooks;
mod image_copy;
mod logging;
mod metrics;
mod package;
mod pipeline_rules;
mod platform_sources;
mod qemu_guest;
mod run_records;
mod server;
mod server_hardening;
mod support;
mod trust;
mod verify;
