//! The layout's rules, checked on the source: no two modules of one parent
//! import each other (directly or around a loop), and the pure core
//! (`src/domain/`) imports nothing that does I/O or reads the clock; and
//! every `select!` is biased, so that simulated runs repeat from their seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of the server crate by path (`actors::account::create`),
/// with its source less comments and test modules.
fn modules() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    let mut stack: Vec<PathBuf> = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut name = relative.to_string_lossy().replace('/', "::");
            if let Some(parent) = name.strip_suffix("::mod") {
                name = parent.to_owned();
            }
            if name == "lib" || name == "main" {
                continue;
            }
            let source = std::fs::read_to_string(&path).expect("read module");
            let code: String = source
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .map(|line| line.split("//").next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            found.insert(name, code);
        }
    }
    found
}

/// Grouped paths (`crate::{a::B, c::{d, e}}`) written out one by one
/// (`crate::a::B crate::c::d crate::c::e`), innermost group first.
fn expand_groups(code: &str) -> String {
    let mut code = code.to_owned();
    while let Some(open) = code.rfind("::{") {
        let Some(close) = code[open..].find('}').map(|at| open + at) else {
            break;
        };
        let start = code[..open]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |at| at + 1);
        let prefix = code[start..open].to_owned();
        let expanded = code[open + 3..close]
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|item| !item.is_empty())
            .map(|item| format!("{prefix}::{item}"))
            .collect::<Vec<_>>()
            .join(" ");
        code.replace_range(start..=close, &expanded);
    }
    code
}

/// The modules `module` names through `crate::…` or `super::…` paths.
fn imports(module: &str, code: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code = expand_groups(code);
    let words: Vec<&str> = code
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("crate::") || word.starts_with("super::"))
        .collect();
    for word in words {
        let mut parts: Vec<&str> = word.split("::").filter(|part| !part.is_empty()).collect();
        let mut base: Vec<String> = Vec::new();
        if parts[0] == "crate" {
            parts.remove(0);
        } else {
            base = module.split("::").map(str::to_owned).collect();
            while parts.first() == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
        }
        let full: Vec<String> = base
            .into_iter()
            .chain(parts.iter().map(|part| part.to_string()))
            .collect();
        if let Some(target) = (1..=full.len())
            .rev()
            .map(|n| full[..n].join("::"))
            .find(|name| known.contains_key(name))
        {
            out.insert(target);
        }
    }
    out
}

/// A cycle among the children of `scope`, if any (children named by their
/// first segment below `scope`; a parent and its own children are not
/// counted: a parent declares them).
fn cycle_below(scope: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let prefix = if scope.is_empty() {
        String::new()
    } else {
        format!("{scope}::")
    };
    let child = |module: &str| -> Option<String> {
        module
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split("::").next())
            .map(str::to_owned)
    };
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, targets) in edges {
        let Some(a) = child(from) else { continue };
        for target in targets {
            if let Some(b) = child(target) {
                if a != b {
                    graph.entry(a.clone()).or_default().insert(b);
                }
            }
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            return Some(path[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, &graph, &mut Vec::new(), &mut done))
}

#[test]
fn grouped_imports_are_seen() {
    assert_eq!(
        expand_groups("use crate::{actors::inbox::X, domain::{a, b::C}};"),
        "use crate::actors::inbox::X crate::domain::a crate::domain::b::C;"
    );
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let modules = modules();
    let edges: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(name, code)| (name.clone(), imports(name, code, &modules)))
        .collect();
    let mut scopes: BTreeSet<String> = BTreeSet::from([String::new()]);
    for name in modules.keys() {
        let segments: Vec<&str> = name.split("::").collect();
        for n in 1..segments.len() {
            scopes.insert(segments[..n].join("::"));
        }
    }
    for scope in scopes {
        assert_eq!(
            cycle_below(&scope, &edges),
            None,
            "modules below `{scope}` import each other"
        );
    }
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let forbidden = [
        "tokio",
        "tonic",
        "aws_",
        "ractor",
        "rusqlite",
        "hyper",
        "crate::store",
        "crate::clock",
        "crate::random",
        "crate::actors",
        "crate::connectors",
        "SystemTime",
        "Instant",
        "std::fs",
        "std::net",
    ];
    for (name, code) in modules() {
        if !name.starts_with("domain") {
            continue;
        }
        for word in forbidden {
            assert!(!code.contains(word), "{name} uses {word}");
        }
    }
}

/// Every `select!` of the server is `biased` (its branches polled in the
/// order written): tokio's unbiased select draws from a generator that is
/// not seeded, and the simulator's runs must repeat from their seed. (A
/// `watch` channel with several waiters wakes them in an order drawn the
/// same way: the simulator's `Gate` is none, and a crashed simulated
/// node's shutdown signal never fires.)
#[test]
fn every_select_is_biased() {
    for (name, code) in modules() {
        let mut rest = code.as_str();
        while let Some(at) = rest.find("select! {") {
            rest = &rest[at + "select! {".len()..];
            assert!(
                rest.trim_start().starts_with("biased;"),
                "a select! in {name} is not biased: {}",
                rest.lines().take(2).collect::<Vec<_>>().join(" ")
            );
        }
    }
}
