//! The crate layering is a Cargo rule: protocol, runtime and Kubernetes client know nothing
//! of the gateway, the gateway nothing of the binary, guests nothing of the host, and nothing
//! under tests/ is in the production graph. Checked on the real workspace, and shown to catch
//! each kind of violation on doctored copies of it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use serde_json::{Value, json};
use trustgate_tests::layering::{self, check};

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("metadata JSON")
}

/// The metadata with one more dependency edge.
fn with_edge(mut m: Value, from: &str, dep: Value) -> Value {
    let p = m["packages"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["name"] == from)
        .unwrap_or_else(|| panic!("no package {from}"));
    p["dependencies"].as_array_mut().unwrap().push(dep);
    m
}

fn dep(name: &str, kind: Option<&str>, path: Option<&str>) -> Value {
    json!({"name": name, "kind": kind, "optional": false, "path": path})
}

#[test]
fn the_workspace_respects_its_layers() {
    let violations = check(&metadata());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn each_kind_of_violation_is_caught() {
    let m = metadata();
    let root = m["workspace_root"].as_str().unwrap().to_string();
    let cases = [
        // a lower crate gaining a dependency on a higher one
        (
            "trustgate-runtime",
            dep("trustgate-gateway", None, None),
            "trustgate-runtime (layer 0) has a normal dependency on trustgate-gateway (layer 1)",
        ),
        // the bottom layer knowing each other
        (
            "trustgate-runtime",
            dep("trustgate-protocol", None, None),
            "only depend on lower layers",
        ),
        (
            "trustgate-k8s",
            dep("trustgate-runtime", Some("build"), None),
            "has a build dependency on trustgate-runtime",
        ),
        // test code in the production graph
        (
            "trustgate-gateway",
            dep("helper", None, Some(&format!("{root}/tests/helper"))),
            "under tests/",
        ),
        // the development cluster outside the binary's optional feature
        (
            "trustgate-gateway",
            dep("trustgate-devcluster", None, None),
            "development tool trustgate-devcluster",
        ),
        // a guest reaching into the host
        (
            "trustgate-allowlist",
            dep("trustgate-runtime", None, None),
            "guests share only wit/",
        ),
        // a dev-dependency pointing up
        (
            "trustgate-protocol",
            dep("trustgate", Some("dev"), None),
            "dev-dependency on trustgate (layer 2)",
        ),
    ];
    for (from, edge, expected) in cases {
        let violations = check(&with_edge(m.clone(), from, edge.clone()));
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "{from} -> {edge}: expected a violation containing {expected:?}, got {violations:#?}"
        );
    }
}

/// The modules of `crate_dir/src` that import from `lib.rs`, and the import cycles.
fn module_problems(crate_dir: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let graph = layering::module_graph(&root.join(crate_dir).join("src"));
    assert!(graph.len() > 5, "{crate_dir}: modules not found");
    let up: Vec<String> = graph
        .iter()
        .filter(|(_, uses)| uses.contains("lib"))
        .map(|(m, _)| m.clone())
        .collect();
    (up, layering::module_cycles(&graph))
}

#[test]
fn the_runtime_and_the_gateway_modules_depend_in_one_direction() {
    for krate in ["host/runtime", "host/gateway"] {
        let (up, cycles) = module_problems(krate);
        assert!(
            cycles.is_empty(),
            "{krate}: modules that import each other in a loop: {cycles:?}"
        );
        assert!(
            up.is_empty(),
            "{krate}: modules that import from lib.rs (which composes them): {up:?}"
        );
    }
}

#[test]
fn the_module_check_finds_a_loop_and_an_import_from_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c; pub struct Root;").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "use crate::b::B; // crate::c is not an import",
    )
    .unwrap();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(src.join("b/mod.rs"), "mod inner; pub struct B;").unwrap();
    std::fs::write(src.join("b/inner.rs"), "use crate::{a::A, c};").unwrap();
    std::fs::write(src.join("c.rs"), "use super::Root;").unwrap();
    let graph = layering::module_graph(src);
    assert_eq!(
        layering::module_cycles(&graph),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
    assert!(graph["c"].contains("lib"), "{graph:?}");
    assert!(
        !graph["a"].contains("c"),
        "comments are not imports: {graph:?}"
    );
}
