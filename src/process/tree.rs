//! The members of a process tree, found in `/proc` (and its cgroup).
use super::cgroup::Cgroup;

/// Live members of a tree: process group `pgid`, plus the cgroup's members, plus (without a
/// cgroup) the descendants of `anchor` by parent chain.
pub(super) fn tree_members(pgid: i32, cgroup: Option<&Cgroup>, anchor: Option<i32>) -> Vec<i32> {
    let mut pids = live_group_members(pgid);
    let more = match (cgroup, anchor) {
        (Some(cg), _) => cgroup_members(cg),
        (None, Some(a)) => live(descendants(a)),
        (None, None) => Vec::new(),
    };
    for p in more {
        if !pids.contains(&p) {
            pids.push(p);
        }
    }
    pids
}

/// Live (not zombie) members of `cgroup`.
pub(super) fn cgroup_members(cgroup: &Cgroup) -> Vec<i32> {
    live(cgroup.pids())
}

fn live(pids: Vec<i32>) -> Vec<i32> {
    pids.into_iter()
        .filter(|p| stat_state_pgrp(*p).is_some_and(|(st, _)| st != 'Z' && st != 'X'))
        .collect()
}

/// Live descendants of `root` (not itself), following `/proc/PID/stat` parent pids.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_ppid(pid) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    out.remove(0);
    out
}

fn stat_ppid(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Pids of the live (not zombie) members of process group `pgid`, from `/proc`.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some((state, pg)) = stat_state_pgrp(pid) {
            if pg == pgid && state != 'Z' && state != 'X' {
                out.push(pid);
            }
        }
    }
    out
}

/// State letter and process group of `pid` from `/proc/PID/stat`; `None` when it is gone.
pub fn stat_state_pgrp(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid pgrp ..." where comm may contain anything: split after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_ascii_whitespace();
    let state = it.next()?.chars().next()?;
    let _ppid = it.next()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, pgrp))
}
