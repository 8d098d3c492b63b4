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
