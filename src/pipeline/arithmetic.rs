//! The time arithmetic a run does with a configuration's durations (deadline = now +
//! timeout, the guard's deadline in nanoseconds, the exported `QUIESCE_DEADLINE`, retries,
//! grace periods), gathered in one checker so that unit tests and the config fuzz targets
//! can prove that no configuration the loaders accept overflows at run time.

use crate::config::Config;
use crate::process::deadline_after;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest grace a run adds on top of a configured duration (SIGTERM to SIGKILL twice, the
/// API watchdog's margin, the wait for killed processes): an upper bound, not a setting.
pub const GRACE_BOUND: Duration = Duration::from_secs(60);

/// Every duration of `cfg` that a run adds to the clock, with its key for messages.
pub fn durations(cfg: &Config) -> Vec<(String, Duration)> {
    let mut out = vec![
        ("freeze.timeout".to_string(), cfg.freeze.timeout),
        ("snapshot.timeout".to_string(), cfg.snapshot.timeout),
        (
            "server.default_deadline".to_string(),
            cfg.server.default_deadline,
        ),
    ];
    if let crate::config::ProviderConfig::Btrfs(b) = &cfg.snapshot.provider {
        if let Some(age) = b.max_age {
            out.push(("snapshot.max_age".to_string(), age));
        }
    }
    for h in &cfg.hooks {
        out.push((format!("hook `{}` timeout", h.name), h.timeout));
    }
    out
}

/// Do the run's time arithmetic for `cfg` at `now` / `wall`; an error names the duration
/// that would overflow. Never panics (the point is to find what would).
pub fn check(cfg: &Config, now: Instant, wall: SystemTime) -> Result<(), String> {
    let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    for (key, d) in durations(cfg) {
        let overflow = || format!("{key} ({d:?}) overflows the clock");
        // Deadlines with a grace on top (the API uses plain `+`).
        let with_grace = d.checked_add(GRACE_BOUND).ok_or_else(overflow)?;
        now.checked_add(with_grace).ok_or_else(overflow)?;
        // Hooks' wall-clock deadline (exported to scripts) and the guard's nanoseconds.
        wall.checked_add(with_grace).ok_or_else(overflow)?;
        since_epoch.checked_add(with_grace).ok_or_else(overflow)?;
        let ns = u64::try_from(d.as_nanos()).map_err(|_| overflow())?;
        let now_ns = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
        now_ns.checked_add(ns).ok_or_else(overflow)?;
        // The runtime's saturating helpers, exercised as a run calls them.
        let _ = deadline_after(now, d);
        let _ = crate::hooks::deadline_unix(since_epoch, d);
    }
    for h in &cfg.hooks {
        // Attempts: retries + 1, as the hook runner counts them.
        let _ = h.pre_retries.saturating_add(1);
        let _ = h.post_retries.saturating_add(1);
        let _ = crate::hooks::hold::eof_wait(h.timeout, GRACE_BOUND);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{azure, native};
    use std::path::Path;

    #[test]
    fn the_longest_accepted_durations_never_overflow() {
        let century = "36500d";
        let toml = format!(
            "[freeze]\ntimeout = \"{century}\"\n[server]\ndefault_deadline = \"{century}\"\n\
             [snapshot]\nprovider = \"btrfs\"\nsubvolumes = [\"/a\"]\ndirectory = \"/s\"\n\
             timeout = \"{century}\"\nmax_age = \"{century}\"\n\
             [[hook]]\nname = \"h\"\npre = [\"/x\"]\ntimeout = \"{century}\"\n\
             pre_retries = 4294967295\npost_retries = 4294967295\n"
        );
        let cfg = native::parse(Path::new("/q.toml"), &toml).unwrap();
        assert!(cfg.hooks[0].timeout >= Duration::from_secs(36500 * 86400));
        let json = r#"{"preScriptLocation": "/a", "postScriptLocation": "/b",
            "timeoutInSeconds": 604800, "continueBackupOnFailure": true,
            "fsFreezeEnabled": true, "preScriptNoOfRetries": 4294967295}"#;
        let plugin = azure::parse_plugin_json(Path::new("/p.json"), json).unwrap();
        let mut with_plugin = cfg.clone();
        with_plugin.hooks.push(plugin.hook);
        // Now, and a wall clock in 2262 (the last year whose nanoseconds fit in a u64 less
        // a century and a minute).
        let late = UNIX_EPOCH + Duration::from_secs(9_000_000_000);
        for wall in [SystemTime::now(), UNIX_EPOCH, late] {
            check(&with_plugin, Instant::now(), wall).unwrap();
        }
    }

    #[test]
    fn an_unbounded_duration_is_caught() {
        let mut cfg = native::parse(Path::new("/q.toml"), "").unwrap();
        cfg.freeze.timeout = Duration::MAX;
        let e = check(&cfg, Instant::now(), SystemTime::now()).unwrap_err();
        assert!(e.contains("freeze.timeout"), "{e}");
        cfg.freeze.timeout = Duration::from_secs(u64::MAX / 2);
        assert!(check(&cfg, Instant::now(), SystemTime::now()).is_err());
    }
}
