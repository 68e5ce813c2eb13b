//! Builds the test guests (`tests/guests/*`) for wasm32-wasip2 and generates path constants
//! (`GUEST_SCRIPTED`, ...) for the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a build script reports errors by panicking

#[path = "../host/builtins/build_support/wasm_guests.rs"]
mod wasm_guests;

use std::fmt::Write;
use std::path::PathBuf;

const GUESTS: &[&str] = &[
    "guest-scripted",
    "guest-hostile",
    "guest-wrong-version",
    "guest-no-export",
    "guest-unknown-import",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=../host/builtins/build_support/wasm_guests.rs");
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for g in GUESTS {
        let dir = manifest_dir
            .join("guests")
            .join(g.trim_start_matches("guest-"));
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    let built = wasm_guests::build(&root, GUESTS);
    let mut src = String::new();
    for (package, wasm) in built {
        let dest = out_dir.join(format!("{package}.wasm"));
        std::fs::copy(&wasm, &dest).unwrap();
        let konst = package.to_uppercase().replace('-', "_");
        writeln!(src, "/// Path of the `{package}` test component.").unwrap();
        writeln!(
            src,
            "pub const {konst}: &str = {:?};",
            dest.display().to_string()
        )
        .unwrap();
    }
    std::fs::write(out_dir.join("guests.rs"), src).unwrap();
}
