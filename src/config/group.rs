//! The `[group]` section of the native configuration: its TOML form ([`RawGroup`]) and the
//! validated settings ([`GroupConfig`]) that the group module runs with. It lives with the
//! configuration so that loading a configuration never needs the group machinery.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// TLS files of the `[group]` section: the CA that signed etcd's certificates, and this
/// client's certificate and key (for etcd's `--client-cert-auth`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// The `[group]` section of the native configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    /// The group this machine belongs to; it acts only on this group's operations.
    pub name: String,
    /// This member's name in the group (default: the host name).
    pub member: String,
    /// etcd client endpoints, `host:port`.
    pub endpoints: Vec<String>,
    /// etcd user (etcd auth); the password is read from `password_file` (root only).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// TLS to etcd (`https://` endpoints): CA file, and client certificate and key.
    pub tls: TlsFiles,
    /// Lease time-to-live of members and coordinators: how fast a death is noticed.
    pub lease_ttl: Duration,
    /// How often members and the coordinator re-read etcd while a watch stream is lost
    /// (they are woken by the watch otherwise).
    pub poll: Duration,
}

/// `[group]` as written in TOML.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RawGroup {
    name: Option<String>,
    member: Option<String>,
    endpoints: Vec<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    lease_ttl: Option<String>,
    poll: Option<String>,
}

/// Is `s` usable as a group, member or operation name (it becomes part of an etcd key)?
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != ".."
}

fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

impl RawGroup {
    /// Validate; problems are phrased for the person editing the file.
    pub fn into_config(self) -> Result<GroupConfig, String> {
        let name = self.name.ok_or("`group.name` is required")?;
        if !valid_name(&name) {
            return Err(format!(
                "`group.name` {name:?} may hold only letters, digits, '-', '_' and '.'"
            ));
        }
        let member = self.member.unwrap_or_else(host_name);
        if !valid_name(&member) {
            return Err(format!(
                "`group.member` {member:?} may hold only letters, digits, '-', '_' and '.'"
            ));
        }
        if self.endpoints.is_empty() {
            return Err("`group.endpoints` must name at least one etcd endpoint".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err("`group.user` and `group.password_file` go together".into());
        }
        let tls = TlsFiles {
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
        };
        check_tls(&self.endpoints, &tls)?;
        let dur = |v: Option<String>, key: &str, default: Duration| match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(&s)
                .map_err(|e| format!("`group.{key}`: invalid duration {s:?}: {e}")),
        };
        let lease_ttl = dur(self.lease_ttl, "lease_ttl", Duration::from_secs(3))?;
        if lease_ttl < Duration::from_secs(1) {
            return Err("`group.lease_ttl` must be at least 1s".into());
        }
        Ok(GroupConfig {
            name,
            member,
            endpoints: self.endpoints,
            user: self.user,
            password_file: self.password_file,
            tls,
            lease_ttl,
            poll: dur(self.poll, "poll", Duration::from_millis(20))?,
        })
    }
}

/// TLS settings and endpoint schemes must agree.
fn check_tls(endpoints: &[String], tls: &TlsFiles) -> Result<(), String> {
    let https = endpoints
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https > 0 && tls.ca_file.is_none() {
        return Err(
            "`group.endpoints` has https:// endpoints: set `group.ca_file` to the CA that signed etcd's certificate"
                .into(),
        );
    }
    if https > 0 && https < endpoints.len() {
        return Err("`group.endpoints` mixes https:// and plain endpoints; use one kind".into());
    }
    if https == 0 && (tls.ca_file.is_some() || tls.cert_file.is_some()) {
        return Err(
            "`group.ca_file`/`group.cert_file` are set but no endpoint is https://; write the endpoints as https://HOST:PORT"
                .into(),
        );
    }
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err("`group.cert_file` and `group.key_file` go together".into());
    }
    Ok(())
}

impl RawGroup {
    /// Settings for a machine that is not a member (an admin box): only the group and the
    /// endpoints are known.
    pub fn into_config_for(
        mut self,
        name: &str,
        endpoints: &[String],
    ) -> Result<GroupConfig, String> {
        self.name = Some(name.to_string());
        self.endpoints = endpoints.to_vec();
        if self.endpoints.is_empty() {
            return Err(
                "no etcd endpoint: give --endpoints, or a configuration with a [group] section"
                    .into(),
            );
        }
        self.into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_problems_are_in_words() {
        let raw = |t: &str| -> RawGroup { toml::from_str(t).unwrap() };
        let ok = raw("name = \"db\"\nmember = \"a\"\nendpoints = [\"127.0.0.1:2379\"]\n")
            .into_config()
            .unwrap();
        assert_eq!(ok.lease_ttl, Duration::from_secs(3));
        for (text, words) in [
            ("endpoints = [\"x:1\"]", "`group.name` is required"),
            ("name = \"a/b\"\nendpoints = [\"x:1\"]", "may hold only"),
            ("name = \"a\"", "at least one etcd endpoint"),
            (
                "name = \"a\"\nendpoints = [\"x:1\"]\nuser = \"u\"",
                "go together",
            ),
            (
                "name = \"a\"\nendpoints = [\"x:1\"]\nlease_ttl = \"5\"",
                "invalid duration",
            ),
            (
                "name = \"a\"\nendpoints = [\"x:1\"]\nlease_ttl = \"10ms\"",
                "at least 1s",
            ),
            (
                "name = \"a\"\nendpoints = [\"https://x:1\"]",
                "set `group.ca_file`",
            ),
            (
                "name = \"a\"\nendpoints = [\"https://x:1\", \"x:2\"]\nca_file = \"/c\"",
                "mixes https:// and plain",
            ),
            (
                "name = \"a\"\nendpoints = [\"x:1\"]\nca_file = \"/c\"",
                "no endpoint is https://",
            ),
            (
                "name = \"a\"\nendpoints = [\"https://x:1\"]\nca_file = \"/c\"\ncert_file = \"/c\"",
                "`group.cert_file` and `group.key_file` go together",
            ),
        ] {
            let e = raw(text).into_config().unwrap_err();
            assert!(e.contains(words), "{text}: {e}");
        }
    }
}
