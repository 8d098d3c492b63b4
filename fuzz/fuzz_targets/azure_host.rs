//! The Azure plugin host INI loader (`quiesce::config::azure::parse_plugin_host`), with a
//! loader closure instead of the filesystem: the input is `INI text \0 plugin JSON`, and
//! every plugin path the INI names loads that same JSON, except paths containing `missing`,
//! which fail the way a missing file does.
//!
//! Oracle: never panics (nor runs away with a huge `numberOfPlugins`, nor overflows the run's
//! time arithmetic, `pipeline::arithmetic::check`, once accepted); a rejected file yields problems whose codes are `IncorrectPluginhostFile` (the INI) or
//! `IncorrectJSONConfigFile` (a plugin); an accepted one has one hook per plugin that
//! loaded, each with a positive timeout, and every plugin that did not load is skipped with
//! its problem (Azure still takes the backup without it), never dropped silently.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::codes::{ErrorCode, Location, Problem};
use quiesce::config::azure::{parse_plugin_host, parse_plugin_json, PluginJson};
use std::cell::Cell;
use std::path::Path;

const PATH: &str = "/etc/azure/VMSnapshotPluginHost.conf";

fuzz_target!(|data: &[u8]| {
    let (ini, json) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Ok(ini), Ok(json)) = (std::str::from_utf8(ini), std::str::from_utf8(json)) else {
        return;
    };
    let (loads, failed) = (Cell::new(0usize), Cell::new(0usize));
    let load = |p: &Path| -> Result<PluginJson, Vec<Problem>> {
        loads.set(loads.get() + 1);
        let loaded = if p.to_string_lossy().contains("missing") {
            Err(vec![Problem::new(
                ErrorCode::IncorrectJsonConfigFile,
                "refused: no such file",
            )
            .at(Location {
                file: p.to_path_buf(),
                line: None,
                column: None,
            })])
        } else {
            parse_plugin_json(p, json)
        };
        if loaded.is_err() {
            failed.set(failed.get() + 1);
        }
        loaded
    };
    match parse_plugin_host(Path::new(PATH), ini, &load) {
        Err(e) => {
            assert!(!e.0.is_empty(), "rejected without a problem");
            for p in &e.0 {
                assert!(
                    matches!(
                        p.code,
                        ErrorCode::IncorrectPluginhostFile | ErrorCode::IncorrectJsonConfigFile
                    ),
                    "{p}"
                );
                assert!(!p.message.is_empty(), "{p:?}");
                assert!(p.location.is_some(), "{p}");
            }
        }
        Ok(cfg) => {
            assert_eq!(
                cfg.hooks.len() + failed.get(),
                loads.get(),
                "one hook per plugin loaded, the others skipped"
            );
            assert_eq!(failed.get() > 0, !cfg.skipped.is_empty(), "skipped without a word");
            for p in &cfg.skipped {
                assert_eq!(p.code, ErrorCode::IncorrectJsonConfigFile, "{p}");
                assert!(p.location.is_some(), "{p}");
            }
            for h in &cfg.hooks {
                assert!(!h.timeout.is_zero());
            }
            // The run's time arithmetic must never overflow for an accepted configuration.
            let now = (std::time::Instant::now(), std::time::SystemTime::now());
            if let Err(e) = quiesce::pipeline::arithmetic::check(&cfg, now.0, now.1) {
                panic!("accepted configuration overflows at run time: {e}");
            }
            for w in &cfg.warnings {
                assert!(w.code.is_none(), "a warning carries no code: {w}");
            }
        }
    }
});
