//! The operation registry (`quiesce::api`) driven directly, without HTTP: idempotency per
//! id, one operation at a time, the deadline, the freeze scopes, the provider inside a
//! prepared operation, and the caller recorded in the report and the catalog.
//!
//! A freeze needs the guard, which re-executes the running binary: the scopes that freeze
//! are tested through `quiesce serve` (`tests/server.rs`).

use crate::support;

use quiesce::api::{Api, ApiError, Caller, FreezeScope, OpState, PrepareRequest};
use quiesce::codes::ErrorCode;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{LoopFs, Scratch};

fn q(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A registry whose config lives in `dir`: freezing as `freeze` says, one hook counting
/// its pre and post runs in `dir/pre` and `dir/post`, plus `extra` TOML.
fn api(dir: &Scratch, freeze: &str, extra: &str) -> Arc<Api> {
    let pre = dir.script(
        "pre.sh",
        &format!("#!/bin/sh\necho x >> {}\n", dir.join("pre").display()),
    );
    let post = dir.script(
        "post.sh",
        &format!("#!/bin/sh\necho x >> {}\n", dir.join("post").display()),
    );
    let text = format!(
        "[paths]\nstate_dir = {}\ncatalog = {}\n[freeze]\n{freeze}\n[server]\nsocket = {}\n\
         default_deadline = \"20s\"\n{extra}\n[[hook]]\nname = \"count\"\npre = [{}]\n\
         post = [{}]\ntimeout = \"5s\"\n",
        q(&dir.join("state")),
        q(&dir.join("catalog.db")),
        q(&dir.join("unused.sock")),
        q(&pre),
        q(&post),
    );
    let path = dir.file("quiesce.toml", &text, 0o600);
    let cfg = quiesce::config::load(Some(&path)).expect("config loads");
    Api::new(cfg).expect("api")
}

fn runs(dir: &Scratch, name: &str) -> usize {
    std::fs::read_to_string(dir.join(name))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn request(id: &str, scope: FreezeScope, deadline: Option<Duration>) -> PrepareRequest {
    PrepareRequest {
        id: id.into(),
        deadline,
        thaw_by: None,
        scope,
        caller: Caller::Platform("test".into()),
    }
}

#[test]
fn repeats_are_idempotent_and_a_finished_id_answers_its_final_state() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let dir = Scratch::new("api-idem");
    let api = api(&dir, "enabled = false", "");
    let a1 = api
        .prepare(request("op-1", FreezeScope::Nothing, None))
        .unwrap();
    let a2 = api
        .prepare(request("op-1", FreezeScope::Nothing, None))
        .unwrap();
    assert_eq!(a1, a2);
    assert_eq!(a1.state, OpState::Prepared);
    assert_eq!(runs(&dir, "pre"), 1, "the hook ran once");
    assert_eq!(api.active().unwrap().id, "op-1");
    let r1 = api.release("op-1").unwrap();
    let r2 = api.release("op-1").unwrap();
    assert_eq!(r1.operation_id, r2.operation_id);
    assert_eq!(r1.finished_at, r2.finished_at);
    assert_eq!(runs(&dir, "post"), 1);
    assert_eq!(r1.caller, Caller::Platform("test".into()));
    assert!(api.active().is_none());
    // A finished id never pretends to be prepared (or frozen) again.
    let again = api
        .prepare(request("op-1", FreezeScope::Nothing, None))
        .unwrap();
    assert_eq!(again.state, OpState::Released);
    assert!(again.frozen.is_empty());
    assert_eq!(runs(&dir, "pre"), 1);
    assert_eq!(api.status("op-1").unwrap().state, OpState::Released);
    let unknown = api.release("op-never").unwrap_err();
    assert!(
        matches!(unknown, ApiError::UnknownOperation(_)),
        "{unknown:?}"
    );
    assert_eq!(unknown.code(), ErrorCode::UnknownOperation);
}

#[test]
fn one_operation_at_a_time_and_a_refusal_is_not_remembered() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let dir = Scratch::new("api-one");
    let api = api(&dir, "enabled = false", "");
    api.prepare(request("op-a", FreezeScope::Nothing, None))
        .unwrap();
    let refused = api
        .prepare(request("op-b", FreezeScope::Nothing, None))
        .unwrap_err();
    match &refused {
        ApiError::InProgress { active } => assert_eq!(active, "op-a"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refused.code(), ErrorCode::OperationInProgress);
    assert!(matches!(
        api.status("op-b"),
        Err(ApiError::UnknownOperation(_))
    ));
    api.release("op-a").unwrap();
    // The same id, retried once the other operation is done, runs.
    let b = api
        .prepare(request("op-b", FreezeScope::Nothing, None))
        .unwrap();
    assert_eq!(b.state, OpState::Prepared);
    api.release("op-b").unwrap();
    assert_eq!(runs(&dir, "pre"), 2);
}

#[test]
fn an_unreleased_operation_expires_at_its_capped_deadline() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let dir = Scratch::new("api-deadline");
    let api = api(&dir, "enabled = false\ntimeout = \"1s\"", "");
    let start = Instant::now();
    let answer = api
        .prepare(request(
            "op-late",
            FreezeScope::Nothing,
            Some(Duration::from_secs(30)),
        ))
        .unwrap();
    assert!(answer.deadline_capped, "{answer:?}");
    assert_eq!(answer.deadline_s, 1.0);
    loop {
        let st = api.status("op-late").unwrap();
        if st.state == OpState::Expired {
            let report = st.report.expect("a finished operation has its report");
            assert_ne!(report.status.as_str(), "succeeded", "{report:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not expired: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(runs(&dir, "post"), 1, "post hooks ran at expiry");
    assert!(api.active().is_none());
    // A late release gets the final report; a late prepare the final state.
    assert_eq!(api.release("op-late").unwrap().operation_id, "op-late");
    let late = api
        .prepare(request("op-late", FreezeScope::Nothing, None))
        .unwrap();
    assert_eq!(late.state, OpState::Expired);
    assert!(late.frozen.is_empty());
}

#[test]
fn sync_only_freezes_nothing() {
    support::require_root!();
    let dir = Scratch::new("api-sync");
    let fs = LoopFs::new("ext4", 64);
    let api = api(
        &dir,
        &format!("enabled = true\ninclude = [{}]", q(&fs.mount_point)),
        "",
    );
    let answer = api
        .prepare(request("op-s", FreezeScope::SyncOnly, None))
        .unwrap();
    assert_eq!(answer.state, OpState::Prepared, "{answer:?}");
    assert!(answer.frozen.is_empty());
    assert!(support::writable_within(
        &fs.mount_point,
        Duration::from_secs(2)
    ));
    let report = api.release("op-s").unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.timings.freeze_ms.is_some(), "syncfs ran");
    assert!(report.frozen_ms.is_none());
}

#[test]
fn the_provider_takes_the_snapshot_inside_a_prepared_operation() {
    support::require_root!("the trust checks accept only root-owned scripts and configs");
    let dir = Scratch::new("api-snap");
    let snap = dir.script(
        "snap.sh",
        &format!(
            "#!/bin/sh\necho x >> {}\necho snap-$QUIESCE_OPERATION_ID\n",
            dir.join("snaps").display()
        ),
    );
    let api = api(
        &dir,
        "enabled = false",
        &format!(
            "[snapshot]\nprovider = \"command\"\ncommand = [{}]\n",
            q(&snap)
        ),
    );
    let err = api.snapshot("op-x").unwrap_err();
    assert!(matches!(err, ApiError::UnknownOperation(_)), "{err:?}");
    api.prepare(request("op-x", FreezeScope::Nothing, None))
        .unwrap();
    let refs = api.snapshot("op-x").unwrap();
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(
        api.snapshot("op-x").unwrap(),
        refs,
        "a repeat is idempotent"
    );
    assert_eq!(runs(&dir, "snaps"), 1);
    let report = api.release("op-x").unwrap();
    assert_eq!(report.snapshots, refs);
    assert_eq!(report.caller, Caller::Platform("test".into()));
    assert_eq!(report.status.as_str(), "succeeded", "{report:?}");
    assert!(matches!(
        api.snapshot("op-x"),
        Err(ApiError::NotPrepared {
            state: OpState::Released,
            ..
        })
    ));
    // The caller is in the catalog.
    let catalog = quiesce::catalog::Catalog::open_read_only(&dir.join("catalog.db"))
        .unwrap()
        .unwrap();
    let history = catalog.history(None, None).unwrap();
    assert_eq!(history[0].caller, "platform:test");
}
