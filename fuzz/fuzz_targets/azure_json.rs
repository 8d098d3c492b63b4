//! The Azure plugin JSON loader (`quiesce::config::azure::parse_plugin_json`).
//!
//! Oracle: never panics (nor overflows the run's time arithmetic, `pipeline::arithmetic::check`,
//! once accepted); a rejected file yields at least one problem, every problem carries
//! `IncorrectJSONConfigFile` and names the file; an accepted one has a positive timeout and
//! warnings without a code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::codes::ErrorCode;
use std::path::Path;

const PATH: &str = "/etc/azure/VMSnapshotScriptPluginConfig.json";

fuzz_target!(|data: &[u8]| {
    // The loader reads the file with read_to_string: non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match quiesce::config::azure::parse_plugin_json(Path::new(PATH), text) {
        Err(problems) => {
            assert!(!problems.is_empty(), "rejected without a problem");
            for p in &problems {
                assert_eq!(p.code, ErrorCode::IncorrectJsonConfigFile, "{p}");
                assert!(!p.message.is_empty(), "{p:?}");
                let loc = p.location.as_ref().expect("a JSON problem names its file");
                assert_eq!(loc.file, Path::new(PATH));
                if let Some(line) = loc.line {
                    assert!(line >= 1 && line <= text.lines().count().max(1) + 1, "{p}");
                }
            }
        }
        Ok(plugin) => {
            assert!(!plugin.hook.timeout.is_zero());
            assert_eq!(plugin.hook.name, "VMSnapshotScriptPluginConfig");
            let mut cfg = quiesce::config::Config::defaults(Path::new(PATH));
            cfg.hooks.push(plugin.hook.clone());
            // The run's time arithmetic must never overflow for an accepted configuration.
            let now = (std::time::Instant::now(), std::time::SystemTime::now());
            if let Err(e) = quiesce::pipeline::arithmetic::check(&cfg, now.0, now.1) {
                panic!("accepted configuration overflows at run time: {e}");
            }
            for w in &plugin.warnings {
                assert!(w.code.is_none(), "a warning carries no code: {w}");
            }
        }
    }
});
