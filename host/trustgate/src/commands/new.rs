//! `trustgate plugin new NAME --lang rust|python|js`: a plugin project that builds as is — a
//! sample policy, its configuration, a case table for `trustgate plugin test`, a build script,
//! and its own copies of the contract (`wit/`) and of the SDK, so it needs nothing from this
//! repository.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The language of a new plugin.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    Rust,
    Python,
    Js,
}

const WIT: &str = include_str!("../../../../wit/auth.wit");
const WIT_0_2: &str = include_str!("../../../../wit/0.2.0/auth.wit");
const WIT_0_1: &str = include_str!("../../../../wit/0.1.0/auth.wit");
const CASES: &str = include_str!("../../templates/cases.toml");
const CONFIG: &str = include_str!("../../templates/config.toml");
const README: &str = include_str!("../../templates/README.md");

const RUST_CARGO: &str = include_str!("../../templates/rust/Cargo.toml");
const RUST_LIB: &str = include_str!("../../templates/rust/src/lib.rs");
const RUST_BUILD: &str = include_str!("../../templates/rust/build.sh");
/// The Rust SDK's sources, vendored next to the plugin so it builds without a registry.
const SDK_SOURCES: [(&str, &str); 5] = [
    ("lib.rs", include_str!("../../../../plugins/sdk/src/lib.rs")),
    (
        "facts.rs",
        include_str!("../../../../plugins/sdk/src/facts.rs"),
    ),
    (
        "contract_v0_3.rs",
        include_str!("../../../../plugins/sdk/src/contract_v0_3.rs"),
    ),
    (
        "contract_v0_2.rs",
        include_str!("../../../../plugins/sdk/src/contract_v0_2.rs"),
    ),
    (
        "contract_v0_1.rs",
        include_str!("../../../../plugins/sdk/src/contract_v0_1.rs"),
    ),
];
const SDK_CARGO: &str = r#"[package]
name = "trustgate-plugin-sdk"
version = "0.3.0"
edition = "2024"
publish = false
description = "Write trustgate authentication plugins in Rust (vendored by `trustgate plugin new`)"

[dependencies]
wit-bindgen = "0.61"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
serde_path_to_error = "0.1"
wildmatch = "2"
ipnet = "2"

[features]
contract-0-2 = []
contract-0-1 = []
"#;

const PY_APP: &str = include_str!("../../templates/python/app.py");
const PY_BUILD: &str = include_str!("../../templates/python/build.sh");
const PY_SDK: &str = include_str!("../../../../plugins/sdk-python/trustgate_plugin/__init__.py");
const PY_REQUIREMENTS: &str = include_str!("../../../../plugins/sdk-python/requirements.txt");

const JS_APP: &str = include_str!("../../templates/js/app.js");
const JS_PACKAGE: &str = include_str!("../../templates/js/package.json");
const JS_SDK: &str = include_str!("../../../../plugins/sdk-js/index.js");
const JS_UTIL: &str = include_str!("../../../../plugins/sdk-js/util.js");
const JS_BUILD: &str = include_str!("../../../../plugins/sdk-js/build.mjs");
const JS_SDK_PACKAGE: &str = include_str!("../../../../plugins/sdk-js/package.json");
/// The SDK's lockfile: the scaffold's devDependencies are the SDK's, so its lock pins the same
/// toolchain, with the root package renamed to the project.
const JS_SDK_LOCK: &str = include_str!("../../../../plugins/sdk-js/package-lock.json");

fn write(dir: &Path, file: &str, text: &str) -> Result<()> {
    let path = dir.join(file);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(unix)]
fn executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn executable(_path: &Path) -> Result<()> {
    Ok(())
}

/// Creates the project `name` in `parent` (or the current directory).
pub(crate) fn run(name: &str, lang: Lang, parent: Option<PathBuf>) -> Result<PathBuf> {
    if name.is_empty()
        || name.len() > 64
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        bail!(
            "`{name}` is not a plugin name: use lowercase letters, digits and `-`, starting with a letter"
        );
    }
    let dir = parent.unwrap_or_else(|| PathBuf::from(".")).join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let (lang_name, build) = match lang {
        Lang::Rust => ("Rust", "./build.sh"),
        Lang::Python => (
            "Python",
            "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && COMPONENTIZE_PY=.venv/bin/componentize-py ./build.sh",
        ),
        Lang::Js => ("JavaScript", "npm ci && npm run build"),
    };
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{lang}}", lang_name)
            .replace("{{build}}", build)
    };
    write(&dir, "wit/auth.wit", WIT)?;
    write(&dir, "wit/0.2.0/auth.wit", WIT_0_2)?;
    write(&dir, "wit/0.1.0/auth.wit", WIT_0_1)?;
    write(&dir, "cases.toml", &fill(CASES))?;
    write(&dir, "config.toml", CONFIG)?;
    write(&dir, "README.md", &fill(README))?;
    match lang {
        Lang::Rust => {
            write(&dir, "Cargo.toml", &fill(RUST_CARGO))?;
            write(&dir, "src/lib.rs", &fill(RUST_LIB))?;
            write(&dir, "build.sh", &fill(RUST_BUILD))?;
            executable(&dir.join("build.sh"))?;
            write(&dir, "vendor/trustgate-plugin-sdk/Cargo.toml", SDK_CARGO)?;
            for (file, text) in SDK_SOURCES {
                write(
                    &dir,
                    &format!("vendor/trustgate-plugin-sdk/src/{file}"),
                    text,
                )?;
            }
            write(&dir, ".gitignore", "/target\n*.wasm\n")?;
        }
        Lang::Python => {
            write(&dir, "app.py", &fill(PY_APP))?;
            write(&dir, "build.sh", &fill(PY_BUILD))?;
            executable(&dir.join("build.sh"))?;
            write(&dir, "requirements.txt", PY_REQUIREMENTS)?;
            write(&dir, "trustgate_plugin/__init__.py", PY_SDK)?;
            write(&dir, ".gitignore", "__pycache__/\n*.wasm\n")?;
        }
        Lang::Js => {
            write(&dir, "app.js", &fill(JS_APP))?;
            let package = fill(JS_PACKAGE);
            write(&dir, "package.json", &package)?;
            write(&dir, "package-lock.json", &js_lock(&package)?)?;
            write(&dir, "trustgate-plugin/index.js", JS_SDK)?;
            write(&dir, "trustgate-plugin/util.js", JS_UTIL)?;
            write(&dir, "trustgate-plugin/build.mjs", JS_BUILD)?;
            write(&dir, "trustgate-plugin/package.json", JS_SDK_PACKAGE)?;
            write(&dir, ".gitignore", "node_modules/\n*.wasm\n")?;
        }
    }
    Ok(dir)
}

/// `package-lock.json` for a scaffolded JavaScript project: the SDK's pinned toolchain under the
/// project's own root package (`npm ci` checks the root against `package.json`).
fn js_lock(package: &str) -> Result<String> {
    let package: serde_json::Value =
        serde_json::from_str(package).context("the JavaScript template's package.json")?;
    let mut lock: serde_json::Value =
        serde_json::from_str(JS_SDK_LOCK).context("the JavaScript SDK's package-lock.json")?;
    lock["name"] = package["name"].clone();
    lock["version"] = package["version"].clone();
    lock["packages"][""] = serde_json::json!({
        "name": package["name"],
        "version": package["version"],
        "devDependencies": package["devDependencies"],
    });
    Ok(serde_json::to_string_pretty(&lock)? + "\n")
}
