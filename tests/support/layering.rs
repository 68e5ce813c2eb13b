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
