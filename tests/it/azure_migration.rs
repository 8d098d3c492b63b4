//! An Azure Backup user migrating to quiesce, end to end, with a real MariaDB.
//!
//! The files are Azure's (a plugin JSON as Microsoft ships it, a second plugin with only a
//! post script, a plugin host INI at 0644), the scripts are the usual Azure kind: a pre
//! script (mode 0600, no execute bit) that sources `env.sh` next to itself through `$0`,
//! logs in with `~/.my.cnf` credentials and leaves a client holding
//! `FLUSH TABLES WITH READ LOCK` in the background; the post script ends that session.
//! While the snapshot is taken, a second client proves the lock is held. Then one plugin
//! file is broken (mode 0644): it is skipped and the snapshot is still taken, file-system
//! consistent.
//!
//! Safety: the Azure files are imported by a native TOML that names the one loop filesystem
//! to freeze (the MariaDB data volume); the plugin host INI is only given to `quiesce check`.
//! `~/.my.cnf` of root is the one file outside the scratch directories this test writes; an
//! existing one is moved aside and put back on drop.

use crate::support;
use crate::support::db;

use db::{MariaDb, OpenDir, RootMyCnf, User, MARIADB_QUIESCE_PASSWORD};
use quiesce::codes::ErrorCode;
use quiesce::hooks::{Phase, ScriptResult};
use quiesce::report::{Consistency, Report, Status};
use serde_json::Value;
use std::path::{Path, PathBuf};
use support::{LoopFs, Scratch};

/// Microsoft's sample plugin JSON, with our paths.
fn plugin_json(etc: &Scratch, name: &str, pre: &str, post: &str, mode: u32) -> PathBuf {
    let text = format!(
        "{{\r\n    \"pluginName\" : \"ScriptRunner\",\r\n    \"preScriptLocation\" : \"{pre}\",\r\n    \
         \"postScriptLocation\" : \"{post}\",\r\n    \"preScriptParams\" : [\"\", \"\"],\r\n    \
         \"postScriptParams\" : [\"\", \"\"],\r\n    \"preScriptNoOfRetries\" : 0,\r\n    \
         \"postScriptNoOfRetries\" : 0,\r\n    \"timeoutInSeconds\" : 30,\r\n    \
         \"continueBackupOnFailure\" : true,\r\n    \"fsFreezeEnabled\" : true\r\n}}\r\n"
    );
    etc.file(name, &text, mode)
}

/// The result of `hook` for `phase` in a report.
fn hook<'a>(r: &'a Report, name: &str, phase: Phase) -> &'a ScriptResult {
    r.hooks
        .iter()
        .find(|h| h.hook == name && h.phase == phase)
        .unwrap_or_else(|| panic!("no {phase:?} result of {name} in {r:#?}"))
}

/// `quiesce check --json`'s answer (not a run report).
fn check(config: &Path) -> (i32, Value) {
    let run = support::quiesce(&["check", "--json"]).config(config).run();
    (
        run.code,
        serde_json::from_str(&run.stdout).unwrap_or(Value::Null),
    )
}

#[test]
fn azure_migration_end_to_end_with_a_real_mariadb() {
    support::require_root!();
    let my = User::get("mysql");
    let open = OpenDir::new("azure-mig");
    let private = Scratch::new("azure-mig-priv");
    let vol = LoopFs::create(
        "ext4",
        384,
        &private.join("data.img"),
        &open.path().join("vol"),
    );
    let datadir = vol.path("mysql");
    let server = MariaDb::fresh(&my, &datadir, &open);
    server.sql("CREATE DATABASE mig; CREATE TABLE mig.t (id INT PRIMARY KEY) ENGINE=InnoDB");
    let _cnf = RootMyCnf::install(&format!(
        "[client]\nuser=quiesce\npassword={MARIADB_QUIESCE_PASSWORD}\nsocket={}\n",
        server.sock.display()
    ));

    // "/etc/azure": root's, 0700.
    let etc = Scratch::new("azure-mig-etc");
    let state = etc.join("state");
    std::fs::create_dir(&state).unwrap();
    etc.file(
        "env.sh",
        &format!(
            "STATE={}\nSOCK={}\n",
            state.display(),
            server.sock.display()
        ),
        0o600,
    );
    // Mode 0600: Azure runs it with `sh`; no execute bit needed.
    let pre = etc.file(
        "pre-script.sh",
        r#"#!/bin/sh
. "$(dirname "$0")/env.sh"
cd "$(dirname "$0")"
rm -f "$STATE/holder.out"
( echo "FLUSH TABLES WITH READ LOCK;"; echo "SELECT 'locked';"; exec sleep 3600 ) |
    mariadb --batch --unbuffered --skip-column-names > "$STATE/holder.out" 2>&1 &
echo $! > "$STATE/holder.pid"
i=0
until grep -q locked "$STATE/holder.out" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 400 ] || { cat "$STATE/holder.out" >&2; exit 1; }
    sleep 0.05
done
echo "pre: lock held; HOME=$HOME USER=$USER cwd=$(pwd)"
"#,
        0o600,
    );
    let post = etc.script(
        "post-script.sh",
        r#"#!/bin/sh
. "$(dirname "$0")/env.sh"
kill "$(cat "$STATE/holder.pid")"
echo "post: session ended"
"#,
    );
    let post_only = etc.script(
        "post-only.sh",
        "#!/bin/sh\n. \"$(dirname \"$0\")/env.sh\"\necho ran > \"$STATE/post-only-ran\"\n",
    );
    // The snapshot: a second client proves the global read lock is held right now.
    let probe = etc.script(
        "probe.sh",
        &format!(
            "#!/bin/sh\n. {}/env.sh\n\
             mariadb --no-defaults --socket=\"$SOCK\" -u root --batch -e \
             \"SET SESSION lock_wait_timeout=1; INSERT INTO mig.t VALUES (1)\" \
             > \"$STATE/probe.out\" 2>&1\necho \"rc=$?\" >> \"$STATE/probe.out\"\necho snap-1\n",
            etc.path.display()
        ),
    );
    let main_json = plugin_json(
        &etc,
        "VMSnapshotScriptPluginConfig.json",
        pre.to_str().unwrap(),
        post.to_str().unwrap(),
        0o600,
    );
    let post_json = plugin_json(
        &etc,
        "PostOnly.json",
        "",
        post_only.to_str().unwrap(),
        0o600,
    );
    let native = |plugins: &[&Path]| {
        let list: Vec<String> = plugins
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        etc.file(
            "quiesce.toml",
            &format!(
                "azure_plugins = [{}]\n[paths]\nstate_dir = {:?}\ncatalog = {:?}\n\
                 [freeze]\ninclude = [{:?}]\ntimeout = \"30s\"\n\
                 [snapshot]\nprovider = \"command\"\ncommand = [\"/bin/sh\", {:?}]\n",
                list.join(", "),
                etc.join("run").display().to_string(),
                etc.join("catalog.db").display().to_string(),
                vol.mount_point.display().to_string(),
                probe.display().to_string(),
            ),
            0o600,
        )
    };

    // 1. The migration as it should be: application-consistent, the lock really held.
    let cfg = native(&[&main_json, &post_json]);
    let run = support::quiesce(&["snapshot", "--json"]).config(&cfg).run();
    assert_eq!(run.code, 0, "{}", run.describe());
    let r = run.report();
    assert_eq!(r.consistency, Consistency::Application);
    assert_eq!(r.frozen[0], vol.mount_point.display().to_string());
    let probe_out = std::fs::read_to_string(state.join("probe.out")).unwrap();
    assert!(
        probe_out.contains("Lock wait timeout") && probe_out.contains("rc=1"),
        "the second client must be blocked by the read lock during the snapshot: {probe_out}"
    );
    let pre_r = hook(&r, "VMSnapshotScriptPluginConfig", Phase::Pre);
    assert!(
        pre_r
            .stdout_tail
            .contains(&format!("HOME=/root USER=root cwd={}", etc.path.display())),
        "{pre_r:#?}"
    );
    assert!(
        !pre_r.leftovers.is_empty(),
        "the report records what the pre script left running: {pre_r:#?}"
    );
    let post_r = hook(&r, "VMSnapshotScriptPluginConfig", Phase::Post);
    assert_eq!(post_r.error, None, "{post_r:#?}");
    assert!(
        !post_r.leftovers.is_empty(),
        "the sleeping half of the session is terminated after the post: {post_r:#?}"
    );
    assert!(
        state.join("post-only-ran").exists(),
        "a post-only hook runs"
    );
    assert_eq!(server.sql("SELECT COUNT(*) FROM mig.t"), "0");
    server.sql("INSERT INTO mig.t VALUES (2)");
    assert!(
        server.quiesce_sessions().is_empty(),
        "{:?}",
        server.quiesce_sessions()
    );

    // 2. The plugin host INI as Azure installs it (0644) is accepted.
    let host = etc.file(
        "VMSnapshotPluginHost.conf",
        &format!(
            "[pre_post]\r\nnumberofplugins = 1\r\ntimeoutInSeconds = 1800\r\n\
             pluginName0 = ScriptRunner\r\npluginPath0 = main/ScriptRunner.py\r\n\
             pluginConfigPath0 = {}\r\n",
            main_json.display()
        ),
        0o644,
    );
    let (_, c) = check(&host);
    assert!(
        c["problems"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["code"] != "IncorrectPluginhostFile"),
        "{c:#}"
    );

    // 3. A broken plugin file (mode 0644, as a careless copy leaves it): skipped with its
    // code, the others still run, the snapshot is still taken with the freeze.
    let broken = plugin_json(&etc, "Broken.json", "", post_only.to_str().unwrap(), 0o644);
    let cfg = native(&[&main_json, &broken]);
    let run = support::quiesce(&["snapshot", "--json"]).config(&cfg).run();
    assert_eq!(run.code, 3, "{}", run.describe());
    let r = run.report();
    assert_eq!(r.status, Status::Degraded);
    assert_eq!(r.consistency, Consistency::FileSystem);
    assert!(
        support::codes(&r).contains(&ErrorCode::IncorrectJsonConfigFile),
        "{}",
        run.describe()
    );
    assert_eq!(r.snapshots.len(), 1, "{}", run.describe());
    let (code, c) = check(&cfg);
    assert_eq!(code, 1, "check still reports the broken plugin: {c:#}");
    assert!(server.quiesce_sessions().is_empty());
}
