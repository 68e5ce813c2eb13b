//! The crate layering as a Cargo rule: which trustgate crate may depend on which, checked
//! against `cargo metadata`. ARCHITECTURE.md draws the same graph.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The host crates, bottom layer first. A crate's normal and build dependencies may only be
/// crates of a *lower* layer; its dev-dependencies may not point to a higher one.
pub const LAYERS: &[&[&str]] = &[
    // Know nothing of each other or of anything above.
    &[
        "trustgate-protocol",
        "trustgate-runtime",
        "trustgate-k8s",
        "trustgate-builtins",
        "trustgate-devcluster",
    ],
    // Composes the bottom layer.
    &["trustgate-gateway"],
    // The binary: CLI, worker client, demo.
    &["trustgate"],
];

/// Development tools: they may be a normal dependency only of these crates, and only an
/// optional one (a feature a production build can leave out).
pub const DEV_TOOLS: &[(&str, &[&str])] = &[("trustgate-devcluster", &["trustgate"])];

/// One dependency edge of a workspace package.
#[derive(Debug, Clone)]
struct Edge {
    to: String,
    /// `normal`, `build` or `dev`.
    kind: String,
    optional: bool,
    /// For path dependencies: the dependency's directory.
    path: Option<String>,
}

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&name))
}

/// Checks `cargo metadata --format-version 1 --no-deps` output; returns every violation.
pub fn check(metadata: &Value) -> Vec<String> {
    let root = metadata["workspace_root"].as_str().unwrap_or_default();
    let mut packages: BTreeMap<String, (String, Vec<Edge>)> = BTreeMap::new();
    for p in metadata["packages"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let manifest = p["manifest_path"].as_str().unwrap_or_default();
        let dir = manifest
            .strip_prefix(root)
            .unwrap_or(manifest)
            .trim_start_matches('/')
            .trim_end_matches("Cargo.toml")
            .trim_end_matches('/')
            .to_string();
        let edges = p["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| Edge {
                to: d["name"].as_str().unwrap_or_default().to_string(),
                kind: d["kind"].as_str().unwrap_or("normal").to_string(),
                optional: d["optional"].as_bool().unwrap_or(false),
                path: d["path"].as_str().map(|p| {
                    p.strip_prefix(root)
                        .unwrap_or(p)
                        .trim_start_matches('/')
                        .to_string()
                }),
            })
            .collect();
        packages.insert(name, (dir, edges));
    }
    let mut violations = Vec::new();
    for (name, (dir, edges)) in &packages {
        let own = layer_of(name);
        let is_guest = dir.starts_with("plugins/") || dir.starts_with("tests/guests/");
        for e in edges {
            let production = e.kind != "dev";
            // Guests share nothing with the host but wit/.
            if is_guest && (layer_of(&e.to).is_some() || e.to == "trustgate-tests") {
                violations.push(format!(
                    "{name} (a guest) depends on host crate {}: guests share only wit/",
                    e.to
                ));
            }
            let Some(own) = own else { continue };
            // Nothing under tests/ in the production graph of a host crate.
            if production && e.path.as_deref().is_some_and(|p| p.starts_with("tests/")) {
                violations.push(format!(
                    "{name} depends on {} under tests/ ({}): test code must stay out of the production graph",
                    e.to,
                    e.path.as_deref().unwrap_or_default()
                ));
            }
            if let Some((_, allowed)) = DEV_TOOLS.iter().find(|(tool, _)| *tool == e.to)
                && production
                && !(allowed.contains(&name.as_str()) && e.optional)
            {
                violations.push(format!(
                    "{name} depends on the development tool {} ({} dependency): only an optional dependency of {allowed:?} may",
                    e.to, e.kind
                ));
            }
            let Some(theirs) = layer_of(&e.to) else {
                continue;
            };
            if production && theirs >= own {
                violations.push(format!(
                    "{name} (layer {own}) has a {} dependency on {} (layer {theirs}): a crate may only depend on lower layers",
                    e.kind, e.to
                ));
            } else if !production && theirs > own {
                violations.push(format!(
                    "{name} (layer {own}) has a dev-dependency on {} (layer {theirs}), a higher layer",
                    e.to
                ));
            }
        }
    }
    // Every layered crate must exist, so a rename cannot silently drop it from the check.
    let present: BTreeSet<&str> = packages.keys().map(String::as_str).collect();
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        if !present.contains(name) {
            violations.push(format!(
                "{name} is listed in the layers but is not a workspace package"
            ));
        }
    }
    violations
}

// === Modules within a crate ===

/// Which top-level modules of a crate each top-level module names: `crate::x` anywhere in
/// its files (`x.rs`, or `x/` with `mod.rs`), `super::x` in a file directly under `src/`, and
/// `crate::{a, b::c}` lists. A name that is not a module (an item `lib.rs` defines or
/// re-exports) counts as the root, `lib`.
pub fn module_graph(src: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<String, Vec<(std::path::PathBuf, bool)>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(src) else {
        return BTreeMap::new();
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            let mut files = Vec::new();
            collect_rs(&path, &mut files);
            modules
                .entry(name)
                .or_default()
                .extend(files.into_iter().map(|f| (f, false)));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" {
            modules.entry(name).or_default().push((path, true));
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, files) in &modules {
        let mut uses = BTreeSet::new();
        for (file, top_level) in files {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let text = strip_comments(&text);
            for name in referenced(&text, "crate::") {
                uses.insert(if names.contains(&name) {
                    name
                } else {
                    "lib".into()
                });
            }
            if *top_level {
                for name in referenced(&text, "super::") {
                    uses.insert(if names.contains(&name) {
                        name
                    } else {
                        "lib".into()
                    });
                }
            }
        }
        uses.remove(module);
        graph.insert(module.clone(), uses);
    }
    graph
}

fn collect_rs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text without `//` comments (doc comments name paths that are not imports).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segments after each `prefix` (`crate::x::y` → `x`; `crate::{a, b::c}` → `a`, `b`).
fn referenced(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices(prefix) {
        // Not the tail of a longer path (`foo::crate::` does not occur; `self::super::` does).
        if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in list.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || c != '{' {
                    item.push(c);
                }
            }
            if !item.trim().is_empty() {
                out.push(ident(item.trim()));
            }
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|n| !n.is_empty() && n != "self" && n != "super");
    out
}

/// Module cycles of a crate: every group of top-level modules that name each other in a
/// loop (strongly connected components of more than one module), each as its sorted names.
pub fn module_cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iterative enough for a few dozen modules.
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !graph.contains_key(w) {
                continue;
            }
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}
