//! Azure Backup's files: the plugin host INI (`VMSnapshotPluginHost.conf`) and the plugin
//! JSON (`VMSnapshotScriptPluginConfig.json` / `VMSnapshotPluginConfig.json`).
//!
//! Decisions where Azure is silent:
//! - plugin JSON keys: `preScriptLocation`, `postScriptLocation`, `timeoutInSeconds`,
//!   `continueBackupOnFailure` and `fsFreezeEnabled` are required; `pluginName`,
//!   `*ScriptParams` (default `[]`) and `*ScriptNoOfRetries` (default 0) are optional. An
//!   empty script location means "no script for that phase". Types are strict.
//! - plugin host: section `[pre_post]`, `numberOfPlugins`, and for each plugin
//!   `pluginName{i}`, `pluginPath{i}` (Azure's own runner; quiesce records it and ignores it)
//!   and `pluginConfigPath{i}`, indexed from 0 (indices 1..=n are accepted too).
//!   `timeoutInSeconds` there caps every plugin's script timeout. `numberOfPlugins` is at
//!   most [`MAX_PLUGINS`]: a larger count is refused rather than looped over (found by
//!   fuzzing: `numberOfPlugins = 999999992` ran for minutes, and `u64::MAX` overflowed).
//! - freezing is enabled only if every plugin has `fsFreezeEnabled: true`.

use super::read::{in_words, line_col, read_public, read_trusted};
use super::{Config, ConfigErrors, HookConfig, ScriptSpec};
use crate::codes::{ErrorCode, Location, Problem, Warning};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most plugins a plugin host file may declare (Azure's own files declare one or two).
pub const MAX_PLUGINS: u64 = 100;

const JSON: ErrorCode = ErrorCode::IncorrectJsonConfigFile;
const HOST: ErrorCode = ErrorCode::IncorrectPluginhostFile;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPlugin {
    plugin_name: Option<String>,
    pre_script_location: String,
    post_script_location: String,
    #[serde(default, deserialize_with = "lenient::params")]
    pre_script_params: Vec<String>,
    #[serde(default, deserialize_with = "lenient::params")]
    post_script_params: Vec<String>,
    #[serde(default, deserialize_with = "lenient::count")]
    pre_script_no_of_retries: u32,
    #[serde(default, deserialize_with = "lenient::count")]
    post_script_no_of_retries: u32,
    #[serde(deserialize_with = "lenient::seconds")]
    timeout_in_seconds: u64,
    #[serde(deserialize_with = "lenient::boolean")]
    continue_backup_on_failure: bool,
    #[serde(deserialize_with = "lenient::boolean")]
    fs_freeze_enabled: bool,
    // Azure's own optional keys: known, so no "unknown key" warning; quiesce polls nothing.
    #[serde(default, rename = "ScriptsExecutionPollTimeSeconds")]
    _poll_time: Option<serde_json::Value>,
}

/// What Azure accepts, read the way Azure means it, and what is really ambiguous refused in
/// the user's words: numbers in `*ScriptParams` become their decimal text, whole-number
/// floats (`30.0`) are whole numbers, `0`/`1` are booleans; the strings `"true"`,
/// `"false"` and `"30"` are refused (Azure silently treats `"false"` as true).
mod lenient {
    use serde::de::{self, Deserializer, SeqAccess, Visitor};
    use std::fmt;

    fn whole(v: f64) -> Option<u64> {
        (v.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(&v)).then_some(v as u64)
    }

    struct Whole(&'static str);
    impl Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("must be {}, found {v}", self.0)))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            whole(v).ok_or_else(|| E::custom(format!("must be {}, found {v}", self.0)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            Err(E::custom(format!(
                "must be {}, found the string {v:?} (write it without quotes)",
                self.0
            )))
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<u64, E> {
            Err(E::custom(format!("must be {}, found {v}", self.0)))
        }
    }

    pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole("a whole number of seconds"))
    }

    pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = d.deserialize_any(Whole("a whole number"))?;
        u32::try_from(n).map_err(|_| de::Error::custom(format!("{n} retries is too many")))
    }

    struct Bool;
    impl Visitor<'_> for Bool {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            match v {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(E::custom(format!(
                    "must be true or false (or 0/1), found {v}"
                ))),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            Err(E::custom(format!(
                "must be true or false (or 0/1), found {v}"
            )))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<bool, E> {
            Err(E::custom(format!(
                "must be true or false (or 0/1), found {v}"
            )))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
            Err(E::custom(format!(
                "must be true or false without quotes, found the string {v:?} (Azure would \
                 silently treat any string as true)"
            )))
        }
    }

    pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        d.deserialize_any(Bool)
    }

    struct Params;
    impl<'de> Visitor<'de> for Params {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element::<serde_json::Value>()? {
                out.push(match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(de::Error::custom(format!(
                            "parameters must be strings or numbers, found {other}"
                        )))
                    }
                });
            }
            Ok(out)
        }
    }

    pub fn params<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        d.deserialize_seq(Params)
    }
}

/// One plugin JSON file, as a hook plus the plugin-wide setting.
#[derive(Debug, Clone)]
pub struct PluginJson {
    pub hook: HookConfig,
    pub fs_freeze_enabled: bool,
    pub warnings: Vec<Warning>,
}

fn loc(path: &Path, line: Option<usize>, column: Option<usize>) -> Location {
    Location {
        file: path.to_path_buf(),
        line,
        column,
    }
}

/// Load one plugin JSON file (trust-checked). Problems carry `IncorrectJSONConfigFile`.
pub fn load_plugin_json(path: &Path) -> Result<PluginJson, Vec<Problem>> {
    let text = read_trusted(path, JSON).map_err(|p| vec![p])?;
    parse_plugin_json(path, &text)
}

/// Parse plugin JSON text.
pub fn parse_plugin_json(path: &Path, text: &str) -> Result<PluginJson, Vec<Problem>> {
    let (raw, ignored) = deserialize_plugin(path, text)?;
    let mut warnings = plugin_warnings(path, text, &raw, ignored);
    warnings.extend(check_timeout(path, text, raw.timeout_in_seconds)?);
    let spec = |location: &str, params: &[String]| {
        (!location.trim().is_empty()).then(|| ScriptSpec {
            path: PathBuf::from(location),
            args: params.to_vec(),
        })
    };
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    Ok(PluginJson {
        hook: HookConfig {
            name,
            pre: spec(&raw.pre_script_location, &raw.pre_script_params),
            post: spec(&raw.post_script_location, &raw.post_script_params),
            timeout: Duration::from_secs(raw.timeout_in_seconds),
            pre_retries: raw.pre_script_no_of_retries,
            post_retries: raw.post_script_no_of_retries,
            continue_on_failure: raw.continue_backup_on_failure,
            hold: false,
            origin: path.to_path_buf(),
        },
        fs_freeze_enabled: raw.fs_freeze_enabled,
        warnings,
    })
}

/// The raw plugin and the keys nobody asked for; a JSON or type error is the only problem.
fn deserialize_plugin(path: &Path, text: &str) -> Result<(RawPlugin, Vec<String>), Vec<Problem>> {
    let mut ignored = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let raw: RawPlugin = match serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        &mut de,
        &mut |p: serde_ignored::Path| ignored.push(p.to_string()),
    )) {
        Ok(r) => r,
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let mut msg = inner.to_string();
            // serde_json appends " at line L column C"; the location says it already.
            if let Some(i) = msg.rfind(" at line ") {
                msg.truncate(i);
            }
            msg = in_words(&msg, "a JSON object with the plugin's keys");
            if !key.is_empty() && key != "." && key != "?" {
                msg = format!("`{key}`: {msg}");
            }
            return Err(vec![Problem::new(JSON, msg).at(loc(
                path,
                Some(inner.line()),
                Some(inner.column()),
            ))]);
        }
    };
    if let Err(e) = de.end() {
        return Err(vec![Problem::new(
            JSON,
            "trailing characters after the JSON object",
        )
        .at(loc(path, Some(e.line()), Some(e.column())))]);
    }
    Ok((raw, ignored))
}

/// Unknown keys, and a `pluginName` Azure does not document.
fn plugin_warnings(path: &Path, text: &str, raw: &RawPlugin, ignored: Vec<String>) -> Vec<Warning> {
    let mut warnings: Vec<Warning> = ignored
        .into_iter()
        .map(|k| {
            let (l, c) = text
                .find(&format!("\"{k}\""))
                .map(|off| line_col(text, off))
                .map_or((None, None), |(l, c)| (Some(l), Some(c)));
            Warning::new(format!("unknown key `{k}` ignored")).at(loc(path, l, c))
        })
        .collect();
    if let Some(name) = &raw.plugin_name {
        if name != "ScriptRunner" {
            warnings.push(
                Warning::new(format!(
                    "`pluginName` is {name:?}; Azure documents \"ScriptRunner\""
                ))
                .at(loc(path, None, None)),
            );
        }
    }
    warnings
}

/// `timeoutInSeconds` within 1 s..a week; a warning above Azure's own cap.
fn check_timeout(path: &Path, text: &str, secs: u64) -> Result<Vec<Warning>, Vec<Problem>> {
    let (l, c) = text
        .find("\"timeoutInSeconds\"")
        .map(|o| line_col(text, o))
        .map_or((None, None), |(l, c)| (Some(l), Some(c)));
    let max = super::read::MAX_TIMEOUT.as_secs();
    if secs == 0 || secs > max {
        return Err(vec![Problem::new(
            JSON,
            format!("`timeoutInSeconds` must be between 1 and {max} (a week), found {secs}"),
        )
        .at(loc(path, l, c))]);
    }
    let mut warnings = Vec::new();
    if secs > super::read::AZURE_TIMEOUT_CAP_SECS {
        warnings.push(
            Warning::new(format!(
                "`timeoutInSeconds` is {secs}; Azure caps script timeouts at {} s",
                super::read::AZURE_TIMEOUT_CAP_SECS
            ))
            .at(loc(path, l, c)),
        );
    }
    Ok(warnings)
}

/// A configuration made of one plugin JSON file and defaults for everything else.
pub fn load_plugin_json_config(path: &Path) -> Result<Config, ConfigErrors> {
    let p = load_plugin_json(path).map_err(ConfigErrors)?;
    let mut cfg = Config::defaults(path);
    cfg.freeze.enabled = p.fs_freeze_enabled;
    cfg.warnings = p.warnings;
    cfg.hooks.push(p.hook);
    Ok(cfg)
}

/// A parsed INI file: section -> key -> (value, line).
type Ini = BTreeMap<String, BTreeMap<String, (String, usize)>>;

/// The documented spelling of a lowercased plugin host key, for messages.
fn shown(key: &str) -> &str {
    match key {
        "numberofplugins" => "numberOfPlugins",
        "timeoutinseconds" => "timeoutInSeconds",
        other => other,
    }
}

/// Parse INI text: `[section]`, `key = value` or `key: value`, `#`/`;` comments. Section
/// names and keys are case-insensitive (lowercased here, as Azure's own parser does).
fn parse_ini(path: &Path, text: &str) -> Result<Ini, Problem> {
    let mut ini = Ini::new();
    let mut section: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(Problem::new(HOST, "unterminated section header").at(loc(
                    path,
                    Some(n),
                    Some(1),
                )));
            };
            section = Some(name.trim().to_ascii_lowercase());
            ini.entry(name.trim().to_ascii_lowercase()).or_default();
            continue;
        }
        let Some(sep) = line.find(['=', ':']) else {
            return Err(
                Problem::new(HOST, format!("expected `key = value`, found {line:?}")).at(loc(
                    path,
                    Some(n),
                    Some(1),
                )),
            );
        };
        let Some(sec) = &section else {
            return Err(Problem::new(HOST, "key outside of any section").at(loc(
                path,
                Some(n),
                Some(1),
            )));
        };
        let key = line[..sep].trim().to_ascii_lowercase();
        let value = line[sep + 1..].trim().to_string();
        ini.get_mut(sec).unwrap().insert(key, (value, n));
    }
    Ok(ini)
}

/// Load the plugin host INI file and every plugin JSON it names.
pub fn load_plugin_host(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read_public(path, HOST).map_err(|p| ConfigErrors(vec![p]))?;
    parse_plugin_host(path, &text, &|p| load_plugin_json(p))
}

/// Parse plugin host text; `load_json` loads each named plugin file.
pub fn parse_plugin_host(
    path: &Path,
    text: &str,
    load_json: &dyn Fn(&Path) -> Result<PluginJson, Vec<Problem>>,
) -> Result<Config, ConfigErrors> {
    let ini = parse_ini(path, text).map_err(|p| ConfigErrors(vec![p]))?;
    let Some(sec) = ini.get("pre_post") else {
        return Err(ConfigErrors(vec![Problem::new(
            HOST,
            "missing section [pre_post]",
        )
        .at(loc(path, None, None))]));
    };
    let mut problems = Vec::new();
    let (count, host_timeout) = host_numbers(path, sec, &mut problems);
    let first = if sec.contains_key("pluginconfigpath0") || count == 0 {
        0
    } else {
        1
    };
    let mut cfg = Config::defaults(path);
    let mut warnings = Vec::new();
    for i in first..first + count {
        for k in ["pluginName", "pluginPath"] {
            if !sec.contains_key(&format!("{k}{i}").to_ascii_lowercase()) {
                warnings
                    .push(Warning::new(format!("`{k}{i}` is missing")).at(loc(path, None, None)));
            }
        }
        let Some((json, _)) = sec.get(&format!("pluginconfigpath{i}")) else {
            problems.push(
                Problem::new(HOST, format!("missing `pluginConfigPath{i}` in [pre_post]"))
                    .at(loc(path, None, None)),
            );
            continue;
        };
        match load_json(Path::new(json)) {
            Ok(mut p) => {
                if let Some(t) = host_timeout.filter(|t| *t > 0) {
                    p.hook.timeout = p.hook.timeout.min(Duration::from_secs(t));
                }
                if !p.fs_freeze_enabled {
                    cfg.freeze.enabled = false;
                }
                warnings.append(&mut p.warnings);
                cfg.hooks.push(p.hook);
            }
            // An unreadable plugin is skipped, not fatal: the backup still happens.
            Err(mut e) => cfg.skipped.append(&mut e),
        }
    }
    warnings.extend(unknown_host_keys(path, sec));
    super::dedupe_hook_names(&mut cfg.hooks);
    cfg.warnings = warnings;
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigErrors(problems))
    }
}

/// `numberOfPlugins` (0 when missing or wrong, with a problem) and `timeoutInSeconds`.
fn host_numbers(
    path: &Path,
    sec: &BTreeMap<String, (String, usize)>,
    problems: &mut Vec<Problem>,
) -> (u64, Option<u64>) {
    let int = |key: &str, problems: &mut Vec<Problem>| -> Option<u64> {
        let (v, line) = sec.get(key)?;
        match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(
                    Problem::new(
                        HOST,
                        format!("`{}` must be a whole number, not {v:?}", shown(key)),
                    )
                    .at(loc(path, Some(*line), None)),
                );
                None
            }
        }
    };
    let count = int("numberofplugins", problems).filter(|n| {
        let ok = *n <= MAX_PLUGINS;
        if !ok {
            problems.push(
                Problem::new(
                    HOST,
                    format!(
                        "`numberOfPlugins` is {n}; at most {MAX_PLUGINS} plugins are supported"
                    ),
                )
                .at(loc(path, sec.get("numberofplugins").map(|(_, l)| *l), None)),
            );
        }
        ok
    });
    let host_timeout = int("timeoutinseconds", problems);
    if count.is_none() && !sec.contains_key("numberofplugins") {
        problems.push(
            Problem::new(HOST, "missing `numberOfPlugins` in [pre_post]").at(loc(path, None, None)),
        );
    }
    (count.unwrap_or(0), host_timeout)
}

/// A warning for every key of [pre_post] Azure does not know.
fn unknown_host_keys(path: &Path, sec: &BTreeMap<String, (String, usize)>) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for key in sec.keys() {
        let known = ["numberofplugins", "timeoutinseconds"].contains(&key.as_str())
            || ["pluginname", "pluginpath", "pluginconfigpath"]
                .iter()
                .any(|p| {
                    key.strip_prefix(p)
                        .is_some_and(|n| n.parse::<u64>().is_ok())
                });
        if !known {
            warnings.push(Warning::new(format!("unknown key `{key}` ignored")).at(loc(
                path,
                Some(sec[key].1),
                None,
            )));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
    "pluginName" : "ScriptRunner",
    "preScriptLocation" : "/etc/azure/pre.sh",
    "postScriptLocation" : "/etc/azure/post.sh",
    "preScriptParams" : ["a", "b"],
    "postScriptParams" : [],
    "preScriptNoOfRetries" : 1,
    "postScriptNoOfRetries" : 0,
    "timeoutInSeconds" : 30,
    "continueBackupOnFailure" : true,
    "fsFreezeEnabled" : true
}"#;

    fn pj(text: &str) -> Result<PluginJson, Vec<Problem>> {
        parse_plugin_json(
            Path::new("/etc/azure/VMSnapshotScriptPluginConfig.json"),
            text,
        )
    }

    #[test]
    fn documented_file_parses() {
        let p = pj(GOOD).unwrap();
        assert_eq!(p.hook.pre.as_ref().unwrap().args, vec!["a", "b"]);
        assert_eq!(p.hook.pre_retries, 1);
        assert_eq!(p.hook.timeout, Duration::from_secs(30));
        assert!(p.hook.continue_on_failure && p.fs_freeze_enabled);
        assert_eq!(p.hook.name, "VMSnapshotScriptPluginConfig");
    }

    #[test]
    fn string_false_rejected_with_line_and_column() {
        let text = GOOD.replace(
            "\"continueBackupOnFailure\" : true",
            "\"continueBackupOnFailure\" : \"false\"",
        );
        let e = pj(&text).unwrap_err();
        assert_eq!(e[0].code, ErrorCode::IncorrectJsonConfigFile);
        let l = e[0].location.as_ref().unwrap();
        assert_eq!(l.line, Some(10));
        assert!(l.column.unwrap() > 30);
        assert!(
            e[0].message.contains("continueBackupOnFailure"),
            "{}",
            e[0].message
        );
        assert!(e[0].message.contains("true or false"), "{}", e[0].message);
        assert!(
            e[0].message.contains("treat any string as true"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn string_number_and_missing_key_rejected() {
        let e = pj(&GOOD.replace(": 30", ": \"30\"")).unwrap_err();
        assert!(e[0].message.contains("timeoutInSeconds"));
        let e = pj(&GOOD.replace("\"fsFreezeEnabled\" : true", "\"x\" : 1")).unwrap_err();
        assert!(e[0].message.contains("fsFreezeEnabled"), "{}", e[0].message);
        let e = pj("{ not json").unwrap_err();
        assert_eq!(e[0].location.as_ref().unwrap().line, Some(1));
    }

    #[test]
    fn unknown_key_warns_and_empty_location_means_no_script() {
        let text = GOOD
            .replace("\"/etc/azure/post.sh\"", "\"\"")
            .replace("\"pluginName\"", "\"colour\": 1, \"pluginName\"");
        let p = pj(&text).unwrap();
        assert!(p.hook.post.is_none());
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].message.contains("colour"));
    }

    #[test]
    fn lenient_forms_azure_accepts() {
        let text = GOOD
            .replace("[\"a\", \"b\"]", "[\"a\", 5, 2.5]")
            .replace(": 30", ": 30.0")
            .replace(
                "\"preScriptNoOfRetries\" : 1",
                "\"preScriptNoOfRetries\" : 1.0",
            )
            .replace("\"fsFreezeEnabled\" : true", "\"fsFreezeEnabled\" : 0")
            .replace(
                "\"pluginName\"",
                "\"ScriptsExecutionPollTimeSeconds\": 5, \"pluginName\"",
            );
        let p = pj(&text).unwrap();
        assert_eq!(p.hook.pre.as_ref().unwrap().args, vec!["a", "5", "2.5"]);
        assert_eq!(p.hook.timeout, Duration::from_secs(30));
        assert_eq!(p.hook.pre_retries, 1);
        assert!(!p.fs_freeze_enabled);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let e = pj(&GOOD.replace(": 30", ": \"30\"")).unwrap_err();
        assert!(
            e[0].message
                .contains("must be a whole number of seconds, found the string \"30\""),
            "{}",
            e[0].message
        );
        assert!(!e[0].message.contains("u64"), "{}", e[0].message);
        assert_eq!(e[0].location.as_ref().unwrap().line, Some(9));
        let e = pj(&GOOD.replace(": 30", ": 30.5")).unwrap_err();
        assert!(e[0].message.contains("whole number"), "{}", e[0].message);
    }

    #[test]
    fn wrong_shapes_are_refused_in_the_users_words() {
        let keys = |extra: &str| {
            format!(
                r#"{{"preScriptLocation": "/a", "postScriptLocation": "/b",
                "timeoutInSeconds": 5, "continueBackupOnFailure": true,
                "fsFreezeEnabled": true{extra}}}"#
            )
        };
        for (text, want) in [
            ("[]".to_string(), "must be a JSON object"),
            ("[\"a\"]".to_string(), "must be a JSON object"),
            (
                "1".to_string(),
                "must be a JSON object with the plugin's keys, found the number 1",
            ),
            ("null".to_string(), "found null"),
            (
                "{\"preScriptLocation\": 1}".to_string(),
                "must be a string, found the number 1",
            ),
            (
                "{\"preScriptLocation\": []}".to_string(),
                "must be a string, found a list",
            ),
            (
                "{\"preScriptLocation\": {}}".to_string(),
                "must be a string, found a JSON object",
            ),
            (
                keys(r#", "preScriptParams": "a""#),
                "must be a list of strings",
            ),
            (
                keys(r#", "pluginName": 5"#),
                "must be a string, found the number 5",
            ),
            (
                keys(r#", "preScriptNoOfRetries": [1]"#),
                "must be a whole number, found a list",
            ),
            (keys(r#", "fsFreezeEnabled": {}"#), "given twice"),
            (
                "{\"preScriptLocation\": \"/a\"}".to_string(),
                "the required key",
            ),
            ("{".to_string(), "ends too early"),
            ("".to_string(), "ends too early"),
        ] {
            let e = pj(&text).unwrap_err();
            let msg = &e[0].message;
            assert!(msg.contains(want), "{text:?}: {msg}");
            for bad in crate::config::read::NOT_USERS_WORDS {
                assert!(!msg.contains(bad), "{text:?}: {msg}");
            }
        }
    }

    #[test]
    fn huge_timeouts_are_refused_and_long_ones_warned() {
        let e = pj(&GOOD.replace(": 30", ": 18446744073709551615")).unwrap_err();
        assert!(e[0].message.contains("between 1 and"), "{}", e[0].message);
        let p = pj(&GOOD.replace(": 30", ": 3600")).unwrap();
        assert!(p.warnings.iter().any(|w| w.message.contains("1800")));
    }

    #[test]
    fn warnings_carry_no_code() {
        let text = GOOD.replace(": 30", ": 3600").replace(
            "\"pluginName\" : \"ScriptRunner\"",
            "\"pluginName\" : \"x\", \"colour\": 1",
        );
        let p = pj(&text).unwrap();
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        for w in &p.warnings {
            assert_eq!(w.code, None, "{w}");
            assert!(!w.to_string().contains("IncorrectJSONConfigFile"), "{w}");
            let json = serde_json::to_value(w).unwrap();
            assert!(json.get("code").is_none(), "{json}");
        }
        let host = "[pre_post]\nnumberOfPlugins = 1\npluginConfigPath0 = /a.json\nshade = 2\n";
        let cfg = parse_plugin_host(Path::new("/h"), host, &|_| pj(GOOD)).unwrap();
        assert_eq!(cfg.warnings.len(), 3, "{:?}", cfg.warnings);
        assert!(cfg.warnings.iter().all(|w| w.code.is_none()));
    }

    #[test]
    fn plugin_host_with_two_plugins() {
        let host = "[pre_post]\ntimeoutInSeconds = 10\nnumberOfPlugins = 2\n\
            pluginName0 = ScriptRunner\npluginPath0 = x\npluginConfigPath0 = /a/one.json\n\
            pluginName1 = ScriptRunner\npluginPath1 = x\npluginConfigPath1 = /a/two.json\n";
        let cfg = parse_plugin_host(Path::new("/h.conf"), host, &|p| {
            let mut j = pj(GOOD)?;
            j.hook.name = p.file_stem().unwrap().to_str().unwrap().into();
            Ok(j)
        })
        .unwrap();
        assert_eq!(cfg.hooks.len(), 2);
        assert_eq!(cfg.hooks[1].name, "two");
        assert_eq!(cfg.hooks[0].timeout, Duration::from_secs(10));
    }

    #[test]
    fn absurd_plugin_count_is_refused_at_once() {
        // Found by fuzz/fuzz_targets/azure_host.rs: these looped for minutes or overflowed.
        let load = |_: &Path| pj(GOOD);
        for n in ["101", "999999992", "18446744073709551615"] {
            let host = format!("[pre_post]\nnumberOfPlugins = {n}\npluginConfigPath1 = /a.json\n");
            let t = std::time::Instant::now();
            let e = parse_plugin_host(Path::new("/h"), &host, &load).unwrap_err();
            assert!(t.elapsed() < Duration::from_secs(1));
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].code, ErrorCode::IncorrectPluginhostFile);
            assert!(e.0[0].message.contains("at most 100"), "{}", e.0[0].message);
            assert_eq!(e.0[0].location.as_ref().unwrap().line, Some(2));
        }
        let host = "[pre_post]\nnumberOfPlugins = 100\n";
        let e = parse_plugin_host(Path::new("/h"), host, &load).unwrap_err();
        assert_eq!(
            e.0.len(),
            100,
            "one missing pluginConfigPath per declared plugin"
        );
    }

    #[test]
    fn broken_plugin_host() {
        let load = |_: &Path| pj(GOOD);
        let e = parse_plugin_host(
            Path::new("/h"),
            "[pre_post]\nnumberOfPlugins = two\n",
            &load,
        )
        .unwrap_err();
        assert_eq!(e.0[0].code, ErrorCode::IncorrectPluginhostFile);
        assert_eq!(e.0[0].location.as_ref().unwrap().line, Some(2));
        let e = parse_plugin_host(Path::new("/h"), "garbage\n", &load).unwrap_err();
        assert_eq!(e.0[0].code, ErrorCode::IncorrectPluginhostFile);
        let e = parse_plugin_host(Path::new("/h"), "[other]\n", &load).unwrap_err();
        assert!(e.0[0].message.contains("pre_post"));
        let e = parse_plugin_host(Path::new("/h"), "[pre_post]\nnumberOfPlugins = 1\n", &load)
            .unwrap_err();
        assert!(
            e.0[0].message.contains("pluginConfigPath"),
            "{}",
            e.0[0].message
        );
    }
}
