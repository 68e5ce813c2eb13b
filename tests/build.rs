//! Builds the test guests (`tests/guests/*`) for wasm32-wasip2 and generates path constants
//! (`GUEST_SCRIPTED`, ...) for the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a build script reports errors by panicking

#[path = "../host/builtins/build_support/wasm_guests.rs"]
mod wasm_guests;

use std::fmt::Write;
use std::path::PathBuf;

/// Built again against contracts 0.1.0 and 0.2.0.
const LEGACY: &[&str] = &[
    "guest-scripted",
    "trustgate-allowlist",
    "trustgate-k8s-sa-trust",
];

const GUESTS: &[&str] = &[
    "guest-scripted",
    "guest-hostile",
    "guest-hostile-v0-2",
    "guest-wrong-version",
    "guest-no-export",
    "guest-unknown-import",
    "guest-floor",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=../host/builtins/build_support/wasm_guests.rs");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for p in ["plugins/sdk", "plugins/allowlist", "plugins/k8s-sa-trust"] {
        println!(
            "cargo:rerun-if-changed={}",
            root.join(p).join("Cargo.toml").display()
        );
    }
    for g in GUESTS {
        let dir = manifest_dir
            .join("guests")
            .join(g.trim_start_matches("guest-"));
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    let mut src = String::new();
    let mut emit = |built: Vec<(String, PathBuf)>, suffix: &str, what: &str| {
        for (package, wasm) in built {
            let dest = out_dir.join(format!("{package}{suffix}.wasm"));
            std::fs::copy(&wasm, &dest).unwrap();
            let konst = format!("{package}{suffix}")
                .to_uppercase()
                .replace(['-', '.'], "_");
            writeln!(src, "/// Path of the `{package}` {what}.").unwrap();
            writeln!(
                src,
                "pub const {konst}: &str = {:?};",
                dest.display().to_string()
            )
            .unwrap();
        }
    };
    emit(wasm_guests::build(&root, GUESTS), "", "test component");
    // The same sources against the deprecated contract 0.1.0: the scripted guest for the
    // compatibility tests, the first-party plugins for the benchmark's 0.1 row.
    emit(
        wasm_guests::build_with(
            &root,
            LEGACY,
            &["trustgate-plugin-sdk/contract-0-1"],
            "wasm-guests-0.1",
        ),
        "-v0-1",
        "component built against trustgate:auth@0.1.0",
    );
    // And against 0.2.0: the compatibility tests and the benchmark's 0.2 row.
    emit(
        wasm_guests::build_with(
            &root,
            LEGACY,
            &["trustgate-plugin-sdk/contract-0-2"],
            "wasm-guests-0.2",
        ),
        "-v0-2",
        "component built against trustgate:auth@0.2.0",
    );
    std::fs::write(out_dir.join("guests.rs"), src).unwrap();
}
