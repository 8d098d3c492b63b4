//! The rule "who may depend on whom" of `docs/architecture.md`, checked against the code.
//!
//! The table in that file is the one source: this test reads it, reads every file under
//! `src/`, finds the top-level modules each module names through the crate root (outside
//! comments, string literals and `#[cfg(test)]` items), and fails on every use the table
//! does not allow, on a module the table does not list, and on a cycle in the table itself.
//! A new edge is a decision: write it into the table (and keep the table acyclic) first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The crate root's path prefix, spelled so that this file names no module itself.
const ROOT: &str = concat!("crate", "::");
const TEST_ATTR: &str = "#[cfg(test)]";

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with comments blanked and string and char literals emptied; line breaks kept.
fn code_only(text: &str) -> String {
    let s: Vec<char> = text.chars().collect();
    let blank = |out: &mut String, part: &[char]| {
        out.extend(part.iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
    };
    let starts = |i: usize, pat: &str| {
        pat.chars()
            .enumerate()
            .all(|(k, p)| s.get(i + k) == Some(&p))
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let after_ident = i > 0 && is_ident(s[i - 1]);
        let end = if starts(i, "//") {
            (i..s.len()).find(|&j| s[j] == '\n').unwrap_or(s.len())
        } else if starts(i, "/*") {
            let (mut depth, mut j) = (0usize, i);
            while j < s.len() {
                if starts(j, "/*") {
                    depth += 1;
                    j += 2;
                } else if starts(j, "*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            j
        } else if c == 'r' && !after_ident && (starts(i + 1, "\"") || starts(i + 1, "#")) {
            let hashes = (i + 1..s.len()).take_while(|&j| s[j] == '#').count();
            if s.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: String = std::iter::once('"')
                .chain("#".repeat(hashes).chars())
                .collect();
            let from = i + 2 + hashes;
            (from..s.len())
                .find(|&j| starts(j, &close))
                .map_or(s.len(), |j| j + close.chars().count())
        } else if c == '"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && s.get(i + 1) == Some(&'\\') {
            (i + 2..s.len())
                .find(|&j| s[j] == '\'')
                .map_or(s.len(), |j| j + 1)
        } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
            i + 3
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        let end = end.min(s.len());
        blank(&mut out, &s[i..end]);
        i = end;
    }
    out
}

/// `code` without its `#[cfg(test)]` items; the names of test-only `mod NAME;` files.
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut code = code.to_string();
    let mut test_files = Vec::new();
    while let Some(at) = code.find(TEST_ATTR) {
        let body = at + TEST_ATTR.len();
        let stop = code[body..]
            .find(['{', ';'])
            .map_or(code.len(), |k| body + k);
        let end = if code[stop..].starts_with(';') {
            let item: Vec<&str> = code[body..stop].split_whitespace().collect();
            if let [.., "mod", name] = item.as_slice() {
                test_files.push(name.to_string());
            }
            stop + 1
        } else {
            let mut depth = 0usize;
            let mut end = code.len();
            for (k, c) in code[stop..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = stop + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        };
        code.replace_range(at..end, "");
    }
    (code, test_files)
}

/// Top-level modules `code` names through the crate root: `crate::X` anywhere, and
/// `super::…::X` climbing out of a file `depth` modules deep.
fn named_modules(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident_at = |rest: &str| -> String { rest.chars().take_while(|&c| is_ident(c)).collect() };
    for (at, _) in code.match_indices(ROOT) {
        if !code[..at].ends_with(|c: char| is_ident(c) || c == '$') {
            found.insert(ident_at(&code[at + ROOT.len()..]));
        }
    }
    for (at, _) in code.match_indices("super::") {
        if code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
            continue;
        }
        let mut rest = &code[at..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups >= depth {
            found.insert(ident_at(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`freeze/plan.rs` → `["freeze", "plan"]`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// Which top-level module uses which, as the code says.
fn code_edges(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut read = Vec::new();
    let mut test_only: BTreeSet<PathBuf> = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap().to_path_buf();
        let path = module_path(&rel);
        let (code, tests) = without_tests(&code_only(&std::fs::read_to_string(file).unwrap()));
        // `#[cfg(test)] mod NAME;` in `a/b.rs` or `a/b/mod.rs` names `a/b/NAME.rs`; in
        // `lib.rs`, `NAME.rs`.
        let dir: PathBuf = path.iter().filter(|p| *p != "lib").collect();
        for name in tests {
            test_only.insert(dir.join(format!("{name}.rs")));
            test_only.insert(dir.join(&name).join("mod.rs"));
        }
        read.push((rel, path, code));
    }
    let mut edges = Graph::new();
    for (rel, path, code) in read {
        if path == ["lib"] || path == ["main"] || test_only.contains(&rel) {
            continue;
        }
        let used = edges.entry(path[0].clone()).or_default();
        used.extend(named_modules(&code, path.len()));
        used.remove(&path[0]);
    }
    edges
}

/// Top-level modules declared in `lib.rs` (test-only ones aside).
fn declared_modules(src: &Path) -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let (code, _) = without_tests(&code_only(&lib));
    code.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// The table "who may depend on whom" of `docs/architecture.md`: the modules of the first
/// column, each allowed the modules of the last (`nothing`, `everything`, or backquoted
/// names, of which the first path segment counts).
fn allowed(doc: &str, modules: &BTreeSet<String>) -> Result<Graph, String> {
    let mut rows = doc
        .lines()
        .skip_while(|l| !l.starts_with("| module |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .peekable();
    if rows.peek().is_none() {
        return Err("docs/architecture.md has no `| module | ... |` table".into());
    }
    let names = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|n| n.split("::").next().unwrap_or_default().to_string())
            .collect()
    };
    let mut table = Graph::new();
    for row in rows {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let (first, last) = (cells[0], cells[cells.len() - 1]);
        let uses: BTreeSet<String> = match last {
            "nothing" => BTreeSet::new(),
            "everything" => modules.clone(),
            _ => names(last).into_iter().collect(),
        };
        for name in names(first).into_iter().chain(names(last)) {
            if !modules.contains(&name) {
                return Err(format!(
                    "the table names `{name}`, which is no module of src/lib.rs"
                ));
            }
        }
        for m in names(first) {
            let mut uses = uses.clone();
            uses.remove(&m);
            if table.insert(m.clone(), uses).is_some() {
                return Err(format!("the table has two rows for `{m}`"));
            }
        }
    }
    Ok(table)
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(graph, n, &mut Vec::new(), &mut done))
}

#[test]
fn modules_use_only_what_docs_architecture_allows_and_nothing_points_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let modules = declared_modules(&src);
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let table = allowed(&doc, &modules).unwrap();
    let unlisted: Vec<_> = modules.iter().filter(|m| !table.contains_key(*m)).collect();
    assert!(
        unlisted.is_empty(),
        "docs/architecture.md has no row for {unlisted:?}"
    );
    assert_eq!(cycle(&table), None, "the table itself has a cycle");
    let mut forbidden = Vec::new();
    for (module, uses) in code_edges(&src) {
        for used in uses.difference(&table[&module]) {
            forbidden.push(format!("{module} -> {used}"));
        }
    }
    assert!(
        forbidden.is_empty(),
        "uses that docs/architecture.md does not allow: {forbidden:?}"
    );
}

#[test]
fn the_reader_skips_comments_literals_and_test_items() {
    let text = concat!(
        "use crate::a; // crate::b\n/* crate::c /* crate::d */ */ let s = \"crate::e\";\n",
        "let r = r#\"crate::f\"#; let c = '\"'; let l: &'static str = x; crate::g::h();\n",
        "#[cfg(test)]\nmod tests { use crate::i; fn f() { crate::j(); } }\n",
        "#[cfg(test)]\nmod more;\nsuper::super::k::x(); super::m();\n"
    );
    let (code, test_files) = without_tests(&code_only(text));
    let found: Vec<String> = named_modules(&code, 2).into_iter().collect();
    assert_eq!(found, ["a", "g", "k"]);
    assert_eq!(test_files, ["more"]);
    let table = allowed(
        "| module | what | may use |\n|---|---|---|\n| `a` | x | nothing |\n| `b`, `c` | y | `a` (through `a::f`) |\n| `d` | z | everything |\n",
        &["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect(),
    )
    .unwrap();
    assert_eq!(table["c"], ["a".to_string()].into());
    assert_eq!(table["d"].len(), 3);
    assert_eq!(cycle(&table), None);
    let mut looped = table.clone();
    looped.get_mut("a").unwrap().insert("d".into());
    assert_eq!(
        cycle(&looped),
        Some(vec!["a".into(), "d".into(), "a".into()])
    );
}
