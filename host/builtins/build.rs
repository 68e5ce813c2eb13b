//! Builds the first-party plugins (`plugins/*`) for wasm32-wasip2 and embeds them in the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a build script reports errors by panicking

#[path = "build_support/wasm_guests.rs"]
mod wasm_guests;

use std::fmt::Write;
use std::path::PathBuf;

/// (built-in name, cargo package)
const BUILTINS: &[(&str, &str)] = &[
    ("allowlist", "trustgate-allowlist"),
    ("k8s-sa-trust", "trustgate-k8s-sa-trust"),
    ("cel", "trustgate-cel"),
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // host/builtins -> the workspace root
    let root = manifest_dir.ancestors().nth(2).unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=build_support/wasm_guests.rs");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for (_, package) in BUILTINS {
        let dir = package.trim_start_matches("trustgate-");
        println!(
            "cargo:rerun-if-changed={}",
            root.join("plugins").join(dir).join("Cargo.toml").display()
        );
    }
    let packages: Vec<&str> = BUILTINS.iter().map(|(_, p)| *p).collect();
    let built = wasm_guests::build(&root, &packages);
    let mut src = String::from(
        "/// First-party plugins embedded at build time: (name, component bytes).\npub const BUILTINS: &[(&str, &[u8])] = &[\n",
    );
    for ((name, _), (_, wasm)) in BUILTINS.iter().zip(&built) {
        let dest = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(wasm, &dest).unwrap();
        writeln!(
            src,
            "    ({name:?}, include_bytes!({:?})),",
            dest.display().to_string()
        )
        .unwrap();
    }
    src.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), src).unwrap();
}
