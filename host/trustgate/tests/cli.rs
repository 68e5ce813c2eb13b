//! The `trustgate` binary's plugin and config commands, run as a user would run them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::path::Path;
use std::process::{Command, Output};

use trustgate_builtins::builtin;
use trustgate_runtime::sha256_hex;

fn trustgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(args)
        .env("TRUSTGATE_LOG", "error")
        .output()
        .expect("run trustgate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

#[test]
fn inspect_prints_world_and_sha256_of_the_allowlist_component() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = builtin("allowlist").unwrap();
    let file = write(dir.path(), "allowlist.wasm", bytes);
    let out = trustgate(&["plugin", "inspect", &file]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("world:   trustgate:auth/auth-plugin@0.3.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sha256:  {}", sha256_hex(bytes))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("size:    {} bytes", bytes.len())),
        "{stdout}"
    );
    assert!(
        stdout.contains("instance  trustgate:auth/plugin@0.3.0"),
        "{stdout}"
    );
}

#[test]
fn inspect_refuses_random_files_and_core_modules() {
    let dir = tempfile::tempdir().unwrap();
    let random = write(
        dir.path(),
        "random.bin",
        b"\x13\x37 definitely not wasm at all",
    );
    let out = trustgate(&["plugin", "inspect", &random]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&random) && err.contains("not a WebAssembly component"),
        "{err}"
    );

    let core = write(
        dir.path(),
        "core.wasm",
        &wat::parse_str("(module (func (export \"f\")))").unwrap(),
    );
    let out = trustgate(&["plugin", "inspect", &core]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&core) && err.contains("is a core WebAssembly module, not a component"),
        "{err}"
    );

    let missing = dir.path().join("nope.wasm").display().to_string();
    let out = trustgate(&["plugin", "inspect", &missing]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read"));
}

#[test]
fn plugin_check_runs_configure_with_a_toml_table() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "allowlist.wasm", builtin("allowlist").unwrap());
    let good = write(
        dir.path(),
        "good.toml",
        b"[[rules]]\nnamespace = \"prod\"\n",
    );
    let out = trustgate(&["plugin", "check", &file, "--config", &good]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "));

    let bad = write(dir.path(), "bad.toml", b"rules = []\n");
    let out = trustgate(&["plugin", "check", &file, "--config", &bad]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("rejected its configuration: rules: is empty"),
        "{err}"
    );
}

#[test]
fn config_default_is_printed_and_passes_config_check() {
    let out = trustgate(&["config", "default"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "trustgate.toml", &out.stdout);
    let out = trustgate(&["config", "check", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("1. policy (sha256 "));
    let out = trustgate(&["config", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn config_check_names_file_key_and_line_of_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "typo.toml",
        b"[plugins]\ndeadline_ms = 50\nmemroy_mib = 64\n\n[[auth.plugins]]\nbuiltin = \"allowlist\"\n",
    );
    let out = trustgate(&["config", "check", &file]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{file}:3:1: `plugins.memroy_mib`: unknown field `memroy_mib`"
        )),
        "{err}"
    );
}

#[test]
fn demo_runs_end_to_end_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run demo");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("4 workers connected"), "{stdout}");
    assert!(stdout.contains("namespace-not-allowed"), "{stdout}");
    assert!(stdout.contains("pairing Paired"), "{stdout}");
    assert!(
        stdout.contains("trustgate_handshakes_total{result=\"ok\"} 0 → 5"),
        "{stdout}"
    );
}

#[test]
fn dev_token_mints_a_service_account_token_from_the_local_issuer() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let mint = || {
        let out = trustgate(&[
            "dev",
            "token",
            "--namespace",
            "team-a",
            "--service-account",
            "builder",
            "--audience",
            "my-gateway",
            "--dir",
            dir.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let first = mint();
    let payload = first.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "system:serviceaccount:team-a:builder");
    assert_eq!(claims["aud"], serde_json::json!(["my-gateway"]));
    assert_eq!(claims["kubernetes.io"]["namespace"], "team-a");
    // the same issuer key signs the next token
    let header = |t: &str| t.split('.').next().unwrap().to_string();
    assert_eq!(header(&first), header(&mint()));

    // Bound to a pod of the author's choosing, as pod-bound rules need.
    let out = trustgate(&[
        "dev",
        "token",
        "--namespace",
        "team-a",
        "--service-account",
        "builder",
        "--pod",
        "builder-7f9c",
        "--pod-uid",
        "0b8e5a52-pod",
        "--node",
        "node-7",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let k8s = &claims["kubernetes.io"];
    assert_eq!(k8s["pod"]["name"], "builder-7f9c", "{claims}");
    assert_eq!(k8s["pod"]["uid"], "0b8e5a52-pod", "{claims}");
    assert_eq!(k8s["node"]["name"], "node-7", "{claims}");
}
