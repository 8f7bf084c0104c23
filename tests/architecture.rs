//! The module graph of src/, read from the code's `crate::` paths (grouped
//! imports `crate::host::{chain, domain}` included; test modules left out):
//! no cycles, which NUTSNBOLTS.md's module map relies on; paths that name
//! the folders (`crate::store::record`, never a crate-root alias); the
//! planners' layering: a pure planner reaches no libvirt domain, file
//! system, process, qemu-img or system call; the commands on top: nothing
//! below `cmd/` calls a command; and one module that reads and writes the
//! domain XML.

use std::collections::{BTreeMap, BTreeSet};

/// The groups (folders) of src/.
const GROUPS: &[&str] = &["host", "backup", "merge", "state", "store", "sync", "cmd"];

/// Every .rs file of src/ with its module's path below the crate
/// (`store::record`, `report`; a file of `host/ffi/` is `host::ffi`) and
/// its code without test modules.
fn sources() -> Vec<(String, std::path::PathBuf, String)> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files
        .into_iter()
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            let parent = p.parent().unwrap();
            let dir = parent.file_name().unwrap().to_string_lossy().into_owned();
            let module = if dir == "ffi" {
                "host::ffi".to_string()
            } else if GROUPS.contains(&dir.as_str()) {
                format!("{dir}::{stem}")
            } else {
                stem
            };
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap().to_string();
            (module, p, code)
        })
        .collect()
}

/// The modules a `crate::...` path names: the path after `crate::`, read
/// up to its end, with braces opened (`host::{chain, domain::X}`).
fn modules_named(rest: &str) -> Vec<String> {
    fn ident(s: &str) -> (&str, &str) {
        let n = s
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        (&s[..n], &s[n..])
    }
    fn module_of(first: &str, rest: &str) -> Option<String> {
        if !GROUPS.contains(&first) {
            return Some(first.to_string());
        }
        let rest = rest.strip_prefix("::")?;
        let (second, _) = ident(rest);
        if second.is_empty() {
            return None;
        }
        Some(format!("{first}::{second}"))
    }
    let (first, after) = ident(rest);
    if first.is_empty() {
        return Vec::new();
    }
    if GROUPS.contains(&first) {
        if let Some(inner) = after.strip_prefix("::{") {
            // A grouped import inside a group: each item's first name.
            let body = &inner[..inner.find('}').unwrap_or(inner.len())];
            return body
                .split(',')
                .map(|item| ident(item.trim()).0.to_string())
                .filter(|n| !n.is_empty() && n != "self")
                .map(|n| format!("{first}::{n}"))
                .collect();
        }
    }
    module_of(first, after).into_iter().collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, _, code) in sources() {
        if module == "main" || module == "lib" {
            continue;
        }
        let deps = g.entry(module.clone()).or_default();
        for part in code.split("crate::").skip(1) {
            for name in modules_named(part) {
                if name != module {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

#[test]
fn paths_are_read_as_modules() {
    let rows: &[(&str, &[&str])] = &[
        ("store::record::{Index, Record};", &["store::record"]),
        (
            "host::{chain, domain::DiskFacts};",
            &["host::chain", "host::domain"],
        ),
        ("host::ffi::libvirt as blockjob;", &["host::ffi"]),
        ("error::{Error, Result};", &["error"]),
        ("report::metrics(&r)", &["report"]),
    ];
    for (path, want) in rows {
        assert_eq!(modules_named(path), *want, "{path}");
    }
}

#[test]
fn src_has_no_import_cycles() {
    let g = graph();
    // Depth-first search for a back edge, reporting the cycle found.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == n) {
            panic!("import cycle: {} -> {n}", path[i..].join(" -> "));
        }
        path.push(n.to_string());
        for d in g
            .get(n)
            .into_iter()
            .flatten()
            .filter(|d| g.contains_key(*d))
        {
            visit(d, g, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, &g, &mut Vec::new(), &mut done);
    }
    assert!(g.len() > 30, "the graph was not read: {g:?}");
    let known: BTreeSet<&String> = g.keys().collect();
    for (m, deps) in &g {
        for d in deps {
            assert!(
                known.contains(d),
                "{m} names crate::{d}, which is no module of src/ (a crate-root alias?)"
            );
        }
    }
}

/// The pure planners: facts in, a plan out.
#[test]
fn planners_touch_nothing() {
    let planners = ["backup/plan.rs", "sync/plan.rs", "store/retention.rs"];
    let forbidden_modules = [
        "host::ffi",
        "host::libvirt",
        "host::process",
        "host::qemu_img",
        "host::facts",
        "backup::exec",
        "sync::far",
    ];
    let forbidden_text = ["std::fs", "std::process", "Dom,", "&Dom", "Dom)", "Libvirt"];
    let g = graph();
    for (module, path, code) in sources() {
        let rel = path.to_string_lossy().into_owned();
        if !planners.iter().any(|p| rel.ends_with(p)) {
            continue;
        }
        for d in g.get(&module).into_iter().flatten() {
            assert!(
                !forbidden_modules.contains(&d.as_str()),
                "{rel} (a planner) uses crate::{d}"
            );
        }
        for t in forbidden_text {
            assert!(!code.contains(t), "{rel} (a planner) names {t}");
        }
    }
}

/// Commands are the top layer: below `cmd/`, code names only the
/// process-wide parts that live there (the signal flag, the log scope, the
/// parsed configuration), never a command (restore, settle, sweep, ...).
#[test]
fn nothing_below_the_commands_calls_one() {
    let shared = ["cmd::signals", "cmd::logging", "cmd::config"];
    let g = graph();
    let mut seen = 0;
    for (module, deps) in &g {
        if module.starts_with("cmd::") || module == "main" {
            continue;
        }
        for d in deps.iter().filter(|d| d.starts_with("cmd::")) {
            seen += 1;
            assert!(
                shared.contains(&d.as_str()),
                "{module} (below cmd/) uses crate::{d}, a command"
            );
        }
    }
    assert!(seen > 0, "no use of cmd/ from below was read: {g:?}");
}

/// The domain XML is parsed and written in `host::domxml` only: one parser
/// setup, one escape, one way of editing an element.
#[test]
fn one_module_reads_and_writes_the_domain_xml() {
    let mut readers = Vec::new();
    for (module, _, code) in sources() {
        if code.contains("roxmltree") {
            readers.push(module);
        }
    }
    assert_eq!(readers, ["host::domxml"], "modules that parse XML");
}
