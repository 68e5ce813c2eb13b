//! Golden tests of configurations and plugin references: each `tests/ui/NAME.toml` is loaded
//! (configuration, then the whole chain) and the outcome must equal `tests/ui/NAME.err`
//! exactly, with the temporary directory written as `$DIR`: the error of a bad one,
//! `(loaded without error)` for a good one (`ok-*.toml`).
//!
//! Run with `BLESS=1` to rewrite the `.err` files after an intended change of wording; review
//! the diff before committing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::path::{Path, PathBuf};

use trustgate_gateway::config::Config;
use trustgate_tests::{guests, limits, runtime};

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// Files the ui configurations refer to.
fn write_fixtures(dir: &Path) {
    std::fs::write(dir.join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    // Deterministic non-wasm bytes, so their sha256 in the expected output is stable.
    let random: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("random.bin"), random).unwrap();
    for (name, path) in [
        ("wrong-version.wasm", guests::GUEST_WRONG_VERSION),
        ("no-export.wasm", guests::GUEST_NO_EXPORT),
        ("unknown-import.wasm", guests::GUEST_UNKNOWN_IMPORT),
        ("scripted.wasm", guests::GUEST_SCRIPTED),
        ("scripted-v0-1.wasm", guests::GUEST_SCRIPTED_V0_1),
    ] {
        std::fs::copy(path, dir.join(name)).unwrap();
    }
}

async fn load(path: &Path) -> Result<(), String> {
    let config = Config::from_file(path).map_err(|e| e.to_string())?;
    let rt = runtime(limits(1_000));
    config
        .load_chain(&rt)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn bad_configs_fail_with_the_expected_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixtures(tmp.path());
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(ui_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 20, "ui cases went missing");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap();
        let copy = tmp.path().join(name);
        std::fs::copy(case, &copy).unwrap();
        let actual = match load(&copy).await {
            Ok(()) => "(loaded without error)".to_string(),
            Err(e) => e.replace(&tmp.path().display().to_string(), "$DIR"),
        };
        let expected_path = case.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{actual}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != actual {
            failures.push(format!(
                "{}:\n  expected: {}\n  actual:   {actual}",
                case.display(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
