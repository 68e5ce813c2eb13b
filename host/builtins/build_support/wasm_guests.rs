// Builds WebAssembly guest crates of this workspace for `wasm32-wasip2` from a build script
// (the pattern of wasmtime's test-programs artifacts crate). Shared by `host/build.rs`
// (first-party plugins embedded in the binary) and `tests/build.rs` (test guests).
//
// Guests are built with a nested `cargo build` into their own target directory next to the
// workspace's, so they never contend for the outer build's lock, and every source file
// listed in the guests' dep-info becomes a `rerun-if-changed`, so editing a guest rebuilds it.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const TARGET: &str = "wasm32-wasip2";

/// Makes sure the rustup toolchain building us has the guest target, so a plain `cargo build`
/// works on a fresh machine. Without rustup (a distro toolchain) the build below reports it.
fn ensure_target() {
    let Ok(out) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return;
    };
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return;
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (needed to build the plugins)"
    );
    let _ = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
}

/// Builds `packages` in release mode and returns `(package, path to .wasm)` pairs.
pub fn build(workspace_root: &Path, packages: &[&str]) -> Vec<(String, PathBuf)> {
    build_with(workspace_root, packages, &[], "wasm-guests")
}

/// Builds `packages` with extra cargo `features` into their own target directory `dir_name`
/// (a build with other features must not share artifacts with the default one).
#[allow(dead_code)] // used by tests/build.rs only
pub fn build_with(
    workspace_root: &Path,
    packages: &[&str],
    features: &[&str],
    dir_name: &str,
) -> Vec<(String, PathBuf)> {
    ensure_target();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root.join("target"))
        .join(dir_name);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--target-dir")
        .arg(&target_dir);
    // Guests ship without debug info: smaller components, faster compiles. Symbol names stay,
    // so a trap still names the guest function.
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    for p in packages {
        cmd.arg("-p").arg(p);
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // The outer build's flags and wrappers (clippy, coverage, host-only RUSTFLAGS) must not
    // leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build guests: {e}"));
    if !status.success() {
        panic!(
            "building guests {packages:?} for {TARGET} failed (is the target installed? `rustup target add {TARGET}`)"
        );
    }
    let out_dir = target_dir.join(TARGET).join("release");
    packages
        .iter()
        .map(|p| {
            let stem = p.replace('-', "_");
            let wasm = out_dir.join(format!("{stem}.wasm"));
            let dep_info = out_dir.join(format!("{stem}.d"));
            rerun_if_deps_change(&dep_info);
            assert!(
                wasm.exists(),
                "guest {p} built but {} is missing",
                wasm.display()
            );
            (p.to_string(), wasm)
        })
        .collect()
}

fn rerun_if_deps_change(dep_info: &Path) {
    let Ok(text) = std::fs::read_to_string(dep_info) else {
        return;
    };
    let Some((_, deps)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
        return;
    };
    // Make-style dep-info: paths separated by spaces, spaces inside paths escaped.
    let mut current = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => {
                current.push(' ');
                chars.next();
            }
            ' ' => {
                if !current.is_empty() {
                    println!("cargo:rerun-if-changed={current}");
                    current.clear();
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        println!("cargo:rerun-if-changed={current}");
    }
}
