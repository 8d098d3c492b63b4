//! The native TOML loader (`quiesce::config::native::parse`).
//!
//! Oracle: never panics (nor overflows the run's time arithmetic,
//! `pipeline::arithmetic::check`, once accepted); a rejected file yields problems that all carry
//! `IncorrectConfigFile`, name the file, and (when they give a line) point inside it, except
//! problems about Azure plugin files the TOML imports (`azure_plugins`), which carry
//! `IncorrectJSONConfigFile`; an accepted configuration has positive timeouts and valid hooks.
//! (`azure_plugins` makes the loader open the named files through the trust check, read-only;
//! config files are read up to `native::MAX_CONFIG_BYTES`.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiesce::codes::ErrorCode;
use std::path::Path;

const PATH: &str = "/etc/quiesce/quiesce.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    match quiesce::config::native::parse(Path::new(PATH), text) {
        Err(e) => {
            assert!(!e.0.is_empty(), "rejected without a problem");
            for p in &e.0 {
                assert!(!p.message.is_empty(), "{p:?}");
                let loc = p
                    .location
                    .as_ref()
                    .expect("a config problem names its file");
                match p.code {
                    ErrorCode::IncorrectConfigFile => {
                        assert_eq!(loc.file, Path::new(PATH), "{p}");
                        if let Some(line) = loc.line {
                            assert!(line >= 1 && line <= lines, "{p}");
                        }
                    }
                    // A plugin file named by `azure_plugins`.
                    ErrorCode::IncorrectJsonConfigFile => {}
                    other => panic!("unexpected code {other}: {p}"),
                }
            }
        }
        Ok(cfg) => {
            assert!(!cfg.freeze.timeout.is_zero());
            for h in &cfg.hooks {
                assert!(!h.timeout.is_zero(), "{h:?}");
                assert!(!h.name.trim().is_empty(), "{h:?}");
                assert!(!(h.hold && (h.pre.is_none() || h.post.is_some())), "{h:?}");
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
