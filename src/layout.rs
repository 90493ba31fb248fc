//! The shape of the code, checked: the dependency direction between top-level modules, that
//! only `redis/` holds raw Redis connections, and the size of files and functions.
//!
//! Invariant (the dependency rule, ARCHITECTURE.md): a module may use only modules of its own
//! layer or below, and the graph of `use crate::…` references has no cycle:
//!
//! ```text
//! util, metrics, token, shutdown, tls, limits   ← redis ← config ← delivery, push, devices,
//!     ops ← http, intake, cli ← node ← dev (← main, the binary)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module: lower is more basic.
const LAYERS: &[(&str, u8)] = &[
    ("util", 0),
    ("metrics", 0),
    ("token", 0),
    ("shutdown", 0),
    ("tls", 0),
    ("limits", 0),
    ("redis", 1),
    ("config", 2),
    ("delivery", 3),
    ("push", 3),
    ("devices", 3),
    ("ops", 3),
    ("http", 4),
    ("intake", 4),
    ("cli", 4),
    ("node", 5),
    ("dev", 6),
];

/// Longest function and file (lines before its tests), unless a `// long:` comment right above
/// the function, or a `//! long:` line in the file, says why.
const MAX_FN_LINES: usize = 80;
const MAX_FILE_LINES: usize = 500;

fn sources() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|path| {
            let rel = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let top = rel.split(['/', '.']).next().unwrap().to_string();
            (top != "lib" && top != "main" && top != "layout").then_some((top, path))
        })
        .collect()
}

/// The part of a file before its `#[cfg(test)]` module.
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// Top-level modules a source names as `crate::<module>`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `paynotify_crate::`
        }
        let rest = &text[i + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    // `use crate::{a, b::c}` groups.
    for (i, _) in text.match_indices("use crate::{") {
        let rest = &text[i + "use crate::{".len()..];
        let group = &rest[..rest.find("};").unwrap_or(rest.len())];
        for part in group.split(',') {
            let name: String = part
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .unwrap_or_else(|| panic!("module {module} has no layer in src/layout.rs"))
        .1
}

#[test]
fn the_dependency_rule_holds_and_the_module_graph_has_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (top, path) in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        for used in uses(without_tests(&text)) {
            if used == top || !LAYERS.iter().any(|(m, _)| *m == used) {
                continue;
            }
            if layer(&used) > layer(&top) {
                wrong.push(format!("{} uses crate::{used}", path.display()));
            }
            graph.entry(top.clone()).or_default().insert(used);
        }
    }
    assert!(
        wrong.is_empty(),
        "uses against the layers:\n{}",
        wrong.join("\n")
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn a_cycle_is_found() {
    // The checker itself: modules naming each other in a ring make a cycle.
    let edges = [("push", "http"), ("http", "delivery"), ("delivery", "push")];
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a.into()).or_default().insert(b.into());
    }
    let cycle = find_cycle(&graph).expect("the ring is a cycle");
    assert_eq!(cycle.first(), cycle.last());
    graph.get_mut("delivery").unwrap().clear();
    assert_eq!(find_cycle(&graph), None);
    assert!(
        uses("use crate::push::Hub;\nlet x = crate::http::error::ApiError;")
            .is_superset(&["push".to_string(), "http".to_string()].into())
    );
    assert_eq!(
        uses("use crate::{delivery::store, push};"),
        ["delivery".to_string(), "push".to_string()].into()
    );
}

/// Only `redis/` holds connections and runs commands on them.
#[test]
fn only_the_redis_module_touches_connections() {
    let mut wrong = Vec::new();
    for (top, path) in sources() {
        if top == "redis" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in [
            "query_async",
            "invoke_async",
            "redis::aio::",
            "get_multiplexed",
        ] {
            if without_tests(&text).contains(needle) {
                wrong.push(format!("{}: {needle}", path.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "raw Redis outside redis/:\n{}",
        wrong.join("\n")
    );
}

/// The domains and Redis name no HTTP type: handlers, extractors, responses and websockets
/// belong to `http/`, which carries them to the domains.
#[test]
fn domain_code_names_no_http_type() {
    let mut wrong = Vec::new();
    for (top, path) in sources() {
        if !["redis", "delivery", "push", "devices"].contains(&top.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in ["axum", "hyper::", "StatusCode"] {
            if without_tests(&text).contains(needle) {
                wrong.push(format!("{}: {needle}", path.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "HTTP types in domain code:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn files_and_functions_are_short_or_say_why() {
    let mut long = Vec::new();
    for (_, path) in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let body = without_tests(&text);
        let lines: Vec<&str> = body.lines().collect();
        if lines.len() > MAX_FILE_LINES && !body.contains("//! long:") {
            long.push(format!("{}: {} lines", path.display(), lines.len()));
        }
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "pub(super) async fn ",
                "pub(crate) async fn ",
            ]
            .iter()
            .any(|p| trimmed.starts_with(p));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let indent = &line[..line.len() - trimmed.len()];
            let end = lines[i..]
                .iter()
                .position(|l| *l == format!("{indent}}}"))
                .unwrap_or(0);
            let said = lines[..i]
                .iter()
                .rev()
                .take_while(|l| {
                    l.trim_start().starts_with("//") || l.trim_start().starts_with("#[")
                })
                .any(|l| l.contains("// long:"));
            if end + 1 > MAX_FN_LINES && !said {
                long.push(format!(
                    "{}:{}: {} lines: {trimmed}",
                    path.display(),
                    i + 1,
                    end + 1
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "too long, with no `// long:` reason:\n{}",
        long.join("\n")
    );
}
