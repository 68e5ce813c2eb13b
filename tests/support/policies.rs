//! Policies written in Python and JavaScript (and freshly scaffolded projects), built from
//! source with the pinned toolchains the test command installs: componentize-py in the
//! repository's `.venv`, componentize-js and rolldown in `plugins/sdk-js/node_modules`.
//!
//! A build takes seconds (the toolchains embed a whole interpreter), so its output is kept
//! under `target/policy-builds/`, named by a hash of every input (sources, SDK, contract,
//! toolchain pins): a test run builds each policy once, and again only after a change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// componentize-py: `$COMPONENTIZE_PY`, or the one `tests/run.sh` installs in `.venv`.
pub fn componentize_py() -> PathBuf {
    let tool = std::env::var_os("COMPONENTIZE_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/componentize-py"));
    assert!(
        tool.exists(),
        "{} is missing: run tests/run.sh, which installs plugins/sdk-python/requirements.txt into .venv",
        tool.display()
    );
    tool
}

/// The JavaScript SDK's pinned toolchain (`npm ci --prefix plugins/sdk-js`).
pub fn js_node_modules() -> PathBuf {
    let dir = root().join("plugins/sdk-js/node_modules");
    assert!(
        dir.join("@bytecodealliance/componentize-js").exists(),
        "{} lacks componentize-js: run tests/run.sh, which runs `npm ci --prefix plugins/sdk-js`",
        dir.display()
    );
    dir
}

/// One build at a time in this process: the toolchains are memory- and CPU-hungry, and two
/// tests asking for the same policy should share one build.
static BUILDS: Mutex<()> = Mutex::new(());

/// Hashes every file under `paths` (skipping build outputs) with its path relative to the
/// root it was found under, in a stable order: the same sources in another temporary
/// directory hash the same.
fn digest(paths: &[PathBuf]) -> String {
    fn walk(path: &Path, out: &mut Vec<PathBuf>) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | "__pycache__" | "target") || name.ends_with(".wasm") {
            return;
        }
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .expect("readable source dir")
                .map(|e| e.expect("dir entry").path())
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out);
            }
        } else {
            out.push(path.to_path_buf());
        }
    }
    let mut h = Sha256::new();
    for p in paths {
        let mut files = Vec::new();
        walk(p, &mut files);
        for f in files {
            let relative = f.strip_prefix(p).unwrap_or(&f);
            h.update(relative.to_string_lossy().as_bytes());
            h.update([0]);
            h.update(std::fs::read(&f).expect("readable source"));
        }
    }
    hex::encode(&h.finalize()[..8])
}

/// Runs `build` into a cached output named `name-<hash of inputs>.wasm` unless it exists.
fn cached(name: &str, inputs: &[PathBuf], build: impl FnOnce(&Path)) -> PathBuf {
    let _one = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = target_dir().join("policy-builds");
    std::fs::create_dir_all(&dir).expect("policy build dir");
    let out = dir.join(format!("{name}-{}.wasm", digest(inputs)));
    if !out.exists() {
        let partial = out.with_extension("partial.wasm");
        build(&partial);
        std::fs::rename(&partial, &out).expect("publish build");
    }
    out
}

fn run(cmd: &mut Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Builds a Python policy: `module` (e.g. `app`) in `project`, with the SDK of this
/// repository (`plugins/sdk-python`) unless the project vendors its own copy.
pub fn python(name: &str, project: &Path, module: &str) -> PathBuf {
    let tool = componentize_py();
    let sdk = root().join("plugins/sdk-python");
    let wit = wit_dir(project);
    let inputs = vec![
        project.to_path_buf(),
        sdk.clone(),
        wit.clone(),
        sdk.join("requirements.txt"),
    ];
    cached(name, &inputs, |out| {
        let mut cmd = Command::new(&tool);
        cmd.arg("-d")
            .arg(&wit)
            .args(["-w", "auth-plugin", "componentize", "-p"])
            .arg(project);
        if !project.join("trustgate_plugin").exists() {
            cmd.arg("-p").arg(&sdk);
        }
        cmd.arg(module).arg("-o").arg(out);
        run(
            &mut cmd,
            &format!("componentize-py of {}", project.display()),
        );
    })
}

/// Builds a JavaScript policy with the SDK's build script (`plugins/sdk-js/build.mjs`, or the
/// project's vendored copy).
pub fn javascript(name: &str, project: &Path, entry: &str) -> PathBuf {
    let modules = js_node_modules();
    let vendored = project.join("trustgate-plugin/build.mjs");
    let script = if vendored.exists() {
        // A scaffolded project: its own SDK copy, the shared pinned toolchain.
        let link = project.join("node_modules");
        if !link.exists() {
            std::os::unix::fs::symlink(&modules, &link).expect("link node_modules");
        }
        vendored
    } else {
        root().join("plugins/sdk-js/build.mjs")
    };
    let inputs = vec![
        project.to_path_buf(),
        root().join("plugins/sdk-js/index.js"),
        root().join("plugins/sdk-js/build.mjs"),
        root().join("plugins/sdk-js/package-lock.json"),
        wit_dir(project),
    ];
    cached(name, &inputs, |out| {
        run(
            Command::new("node")
                .arg(&script)
                .arg(project.join(entry))
                .arg(out)
                .current_dir(project),
            &format!("the JavaScript build of {}", project.display()),
        );
    })
}

/// The contract a project builds against: its own `wit/` or the repository's.
fn wit_dir(project: &Path) -> PathBuf {
    let own = project.join("wit");
    if own.join("auth.wit").exists() {
        own
    } else {
        root().join("wit")
    }
}

/// `trustgate plugin new NAME --lang LANG --dir PARENT` with the command line `cli` (a test's
/// `env!("CARGO_BIN_EXE_trustgate-cli")`); returns the project directory.
pub fn scaffold(cli: &Path, name: &str, lang: &str, parent: &Path) -> PathBuf {
    run(
        Command::new(cli)
            .args(["plugin", "new", name, "--lang", lang, "--dir"])
            .arg(parent),
        &format!("trustgate plugin new {name} --lang {lang}"),
    );
    parent.join(name)
}

/// Builds a project made by `trustgate plugin new` with its own build script, as its README
/// says (with the pinned toolchains of this repository); returns the component.
pub fn build_scaffold(project: &Path, lang: &str) -> PathBuf {
    let name = project
        .file_name()
        .and_then(|n| n.to_str())
        .expect("project name")
        .to_string();
    let built = project.join(format!("{name}.wasm"));
    let output = cached(
        &format!("scaffold-{lang}-{name}"),
        &[project.to_path_buf()],
        |out| {
            let mut cmd = match lang {
                "rust" => {
                    let mut c = Command::new(project.join("build.sh"));
                    // Its own target directory: the outer cargo holds the workspace's. Offline:
                    // the SDK's dependencies are the workspace's, already in the local registry.
                    c.env("CARGO_TARGET_DIR", target_dir().join("scaffold-guests"))
                        .env("CARGO_NET_OFFLINE", "true")
                        .env_remove("RUSTFLAGS")
                        .env_remove("CARGO_ENCODED_RUSTFLAGS");
                    c
                }
                "python" => {
                    let mut c = Command::new(project.join("build.sh"));
                    c.env("COMPONENTIZE_PY", componentize_py());
                    c
                }
                "js" => {
                    let link = project.join("node_modules");
                    if !link.exists() {
                        std::os::unix::fs::symlink(js_node_modules(), &link)
                            .expect("link node_modules");
                    }
                    let mut c = Command::new("npm");
                    c.args(["run", "--silent", "build"]);
                    c
                }
                other => panic!("no such language: {other}"),
            };
            run(
                cmd.current_dir(project),
                &format!("the build of the scaffolded {lang} plugin"),
            );
            std::fs::copy(&built, out).expect("copy the built component");
        },
    );
    if !built.exists() {
        std::fs::copy(&output, &built).expect("place the cached component");
    }
    output
}
