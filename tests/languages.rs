//! Policies without Rust: the Python and JavaScript examples built from source with their
//! SDKs and driven through a real gateway; the example case tables (Python, JavaScript, CEL)
//! passing under `trustgate plugin test`; and a freshly scaffolded plugin of every language
//! building with its own build script and passing its own cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway, policies, scripted};

const CLI: &str = env!("CARGO_BIN_EXE_trustgate-cli");

fn example(name: &str) -> PathBuf {
    policies::root().join("plugins/examples").join(name)
}

fn office_hours() -> PathBuf {
    policies::python("office-hours-py", &example("office-hours-py"), "app")
}

fn namespace_cidr() -> PathBuf {
    policies::javascript("namespace-cidr-js", &example("namespace-cidr-js"), "app.js")
}

/// The test policies with mistakes on known lines (`tests/policies/`).
fn test_policies() -> PathBuf {
    policies::root().join("tests/policies")
}

fn raising_py() -> PathBuf {
    policies::python("raising-py", &test_policies().join("raising-py"), "app")
}

fn throwing_js() -> PathBuf {
    policies::javascript(
        "throwing-js",
        &test_policies().join("throwing-js"),
        "app.js",
    )
}

/// `trustgate ARGS` in `dir` with the compile cache in `cache`, the default log level:
/// (success, stdout + stderr, how long it took).
fn cli_in(dir: &Path, cache: &Path, args: &[&str]) -> (bool, String, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = Command::new(CLI)
        .current_dir(dir)
        .args(args)
        .env("TRUSTGATE_CACHE_DIR", cache)
        .env_remove("TRUSTGATE_LOG")
        .output()
        .expect("run trustgate");
    let took = started.elapsed();
    let (ok, text) = trustgate_tests::status_and_text(&out);
    (ok, text, took)
}

/// Compiled components shared by every gateway of the suite, so each policy is compiled once.
fn plugin_cache() -> String {
    format!(
        "[plugins]\ncache_dir = {:?}\n",
        policies::target_dir()
            .join("policy-builds/compiled")
            .display()
            .to_string()
    )
}

fn plugin(name: &str, path: &Path, config: &str) -> String {
    format!("[[auth.plugins]]\nname = \"{name}\"\npath = {path:?}\nconfig = {{ {config} }}\n")
}

async fn connect_worker(gw: &TestGateway, method: &str) -> Value {
    connect_worker_with(gw, method, "t").await
}

/// [`connect_worker`] presenting `token`.
async fn connect_worker_with(gw: &TestGateway, method: &str, token: &str) -> Value {
    let mut c = WsClient::open(&gw.url()).await;
    c.connect(connect_params(
        "worker",
        Some(json!({"method": method, "token": token})),
        None,
    ))
    .await
}

/// The current hour, UTC.
fn hour_now() -> u64 {
    trustgate_protocol::now_ms() / 3_600_000 % 24
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_policy_built_from_source_decides_through_a_real_gateway() {
    let wasm = office_hours();
    let reviewed = scripted(
        "authn",
        r#"decision = "allow", subject = "system:serviceaccount:prod-a:runner", roles = ["worker"], skip_pairing = true"#,
    );
    // A window from an hour ago to an hour ahead holds now even if the hour turns meanwhile.
    let h = hour_now();
    let open = plugin(
        "office-hours",
        &wasm,
        &format!("from_hour = {}, to_hour = {}", (h + 23) % 24, (h + 1) % 24),
    );
    let gw = gateway(&plugin_cache(), &format!("{reviewed}\n{open}")).await;
    let res = connect_worker(&gw, "test").await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(
        res["payload"]["auth"]["subject"],
        "system:serviceaccount:prod-a:runner"
    );

    // A window two to three hours ahead: the same worker is refused, with the policy's reason.
    let closed = plugin(
        "office-hours",
        &wasm,
        &format!("from_hour = {}, to_hour = {}", (h + 2) % 24, (h + 3) % 24),
    );
    let gw = gateway(&plugin_cache(), &format!("{reviewed}\n{closed}")).await;
    let res = connect_worker(&gw, "test").await;
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], "FORBIDDEN", "{res}");
    assert_eq!(
        res["error"]["details"]["reason"], "outside-office-hours",
        "{res}"
    );
    assert_eq!(res["error"]["retryable"], false, "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_policy_built_from_source_decides_through_a_real_gateway() {
    let wasm = namespace_cidr();
    // Two authenticators, picked by the client's auth method, establish workers in two
    // namespaces; the JavaScript policy lets the prod one through from loopback only.
    let prod = scripted(
        "prod",
        r#"decision = "allow", subject = "system:serviceaccount:prod-a:runner", roles = ["worker"], skip_pairing = true, attributes = { namespace = "prod-a" }, method = "prod""#,
    );
    let dev = scripted(
        "dev",
        r#"decision = "allow", subject = "system:serviceaccount:dev:runner", roles = ["worker"], skip_pairing = true, attributes = { namespace = "dev" }, method = "dev""#,
    );
    let policy = plugin(
        "namespace-cidr",
        &wasm,
        r#"namespaces = ["prod-*"], cidrs = ["127.0.0.0/8", "::1/128"]"#,
    );
    let gw = gateway(&plugin_cache(), &format!("{prod}\n{dev}\n{policy}")).await;

    let res = connect_worker(&gw, "prod").await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(
        res["payload"]["auth"]["subject"],
        "system:serviceaccount:prod-a:runner"
    );

    let res = connect_worker(&gw, "dev").await;
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(res["error"]["code"], "FORBIDDEN", "{res}");
    assert_eq!(
        res["error"]["details"]["reason"], "namespace-not-allowed",
        "{res}"
    );

    // The same policy with only a network the test's loopback peer is not in.
    let elsewhere = plugin(
        "namespace-cidr",
        &wasm,
        r#"namespaces = ["prod-*"], cidrs = ["10.0.0.0/8"]"#,
    );
    let gw = gateway(&plugin_cache(), &format!("{prod}\n{elsewhere}")).await;
    let res = connect_worker(&gw, "prod").await;
    assert_eq!(res["ok"], false, "{res}");
    assert_eq!(
        res["error"]["details"]["reason"], "network-not-allowed",
        "{res}"
    );
}

/// `trustgate plugin test` with the given arguments, in `dir`: (success, stdout + stderr).
fn plugin_test(dir: &Path, args: &[&str]) -> (bool, String) {
    let cache = policies::target_dir().join("policy-builds/compiled");
    let out = Command::new(CLI)
        .current_dir(dir)
        .args(["plugin", "test"])
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("TRUSTGATE_LOG")
        .output()
        .expect("run trustgate plugin test");
    trustgate_tests::status_and_text(&out)
}

fn passes_all(ok: bool, report: &str, expected_cases: usize) {
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!(
            "{expected_cases} of {expected_cases} cases passed"
        )),
        "{report}"
    );
    assert!(!report.contains("FAIL"), "{report}");
}

#[test]
fn the_example_policies_pass_their_own_case_tables() {
    let py = office_hours();
    let (ok, report) = plugin_test(
        &example("office-hours-py"),
        &[
            py.to_str().unwrap(),
            "--config",
            "config.toml",
            "--cases",
            "cases.toml",
        ],
    );
    passes_all(ok, &report, 4);

    let js = namespace_cidr();
    let (ok, report) = plugin_test(
        &example("namespace-cidr-js"),
        &[
            js.to_str().unwrap(),
            "--config",
            "config.toml",
            "--cases",
            "cases.toml",
        ],
    );
    passes_all(ok, &report, 5);

    let (ok, report) = plugin_test(
        &example("cel-rules"),
        &[
            "--builtin",
            "cel",
            "--config",
            "config.toml",
            "--cases",
            "cases.toml",
        ],
    );
    passes_all(ok, &report, 7);
}

/// Scaffolds `lang`, builds it with its own script and runs its own cases.
fn scaffold_builds_and_passes(lang: &str) {
    let parent = tempfile::tempdir().unwrap();
    let name = format!("team-policy-{lang}");
    let project = policies::scaffold(Path::new(CLI), &name, lang, parent.path());
    for file in ["README.md", "cases.toml", "config.toml", "wit/auth.wit"] {
        assert!(project.join(file).exists(), "{lang}: {file} missing");
    }
    let wasm = policies::build_scaffold(&project, lang);
    let (ok, report) = plugin_test(
        &project,
        &[
            wasm.to_str().unwrap(),
            "--config",
            "config.toml",
            "--cases",
            "cases.toml",
        ],
    );
    passes_all(ok, &report, 3);

    // Then into a gateway configuration, as the ten-minute steps say: it loads.
    let table = std::fs::read_to_string(project.join("config.toml")).unwrap();
    std::fs::write(
        project.join("gateway.toml"),
        format!(
            "[gateway]\nstate_dir = \"state\"\n\n[[auth.plugins]]\nname = \"{name}\"\npath = {:?}\n[auth.plugins.config]\n{table}",
            wasm.display().to_string()
        ),
    )
    .unwrap();
    let cache = parent.path().join("cache");
    let (ok, out, _) = cli_in(&project, &cache, &["config", "check", "gateway.toml"]);
    assert!(ok, "{lang}: {out}");
    if lang == "js" {
        // The toolchain is pinned by a lockfile that matches the project's package.json.
        let lock: Value = serde_json::from_str(
            &std::fs::read_to_string(project.join("package-lock.json")).unwrap(),
        )
        .unwrap();
        let package: Value =
            serde_json::from_str(&std::fs::read_to_string(project.join("package.json")).unwrap())
                .unwrap();
        assert_eq!(
            lock["packages"][""]["devDependencies"],
            package["devDependencies"]
        );
        assert_eq!(lock["name"], package["name"]);
    }

    // The README's test command is the one just run.
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!(
            "trustgate plugin test {name}.wasm --config config.toml --cases cases.toml"
        )),
        "{readme}"
    );
}

#[test]
fn a_scaffolded_rust_plugin_builds_and_passes_its_cases() {
    scaffold_builds_and_passes("rust");
}

#[test]
fn a_scaffolded_python_plugin_builds_and_passes_its_cases() {
    scaffold_builds_and_passes("python");
}

#[test]
fn a_scaffolded_javascript_plugin_builds_and_passes_its_cases() {
    scaffold_builds_and_passes("js");
}

#[test]
fn a_python_syntax_error_at_build_is_one_line_naming_file_and_line() {
    let parent = tempfile::tempdir().unwrap();
    let project = policies::scaffold(Path::new(CLI), "broken", "python", parent.path());
    let app = project.join("app.py");
    let source = std::fs::read_to_string(&app).unwrap();
    let line = source
        .lines()
        .position(|l| l.contains("def authenticate"))
        .expect("an authenticate method")
        + 1;
    // A missing colon, the commonest slip.
    let broken = source.replacen("-> tg.Decision:", "-> tg.Decision", 1);
    assert_ne!(broken, source);
    std::fs::write(&app, broken).unwrap();
    let out = Command::new(project.join("build.sh"))
        .current_dir(&project)
        .env("COMPONENTIZE_PY", policies::componentize_py())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    assert!(
        lines[0].starts_with(&format!("app.py:{line}:")) && lines[0].contains("SyntaxError"),
        "{stderr}"
    );
    assert!(!project.join("broken.wasm").exists());
}

#[test]
fn an_exception_in_a_policy_is_reported_at_its_own_file_and_line() {
    // Without TRUSTGATE_LOG: what `plugin test` prints by itself.
    for (wasm, place, message) in [
        (
            raising_py(),
            "app.py:17",
            "AttributeError: 'Request' object has no attribute 'rol'",
        ),
        (throwing_js(), "app.js:13", "no rule for role worker"),
    ] {
        let (ok, report) = plugin_test(
            &test_policies(),
            &[
                wasm.to_str().unwrap(),
                "--config",
                "good.toml",
                "--cases",
                "cases.toml",
            ],
        );
        assert!(!ok, "{report}");
        assert!(report.contains(place), "{place} not named:\n{report}");
        assert!(report.contains(message), "{message} not shown:\n{report}");
        assert!(!report.contains("wasm trap"), "{report}");
    }
}

/// `auth explain` of a worker by method `test` against `gateway.toml`.
const EXPLAIN_WORKER: [&str; 8] = [
    "auth",
    "explain",
    "--config",
    "gateway.toml",
    "--role",
    "worker",
    "--method",
    "test",
];

/// The exceptions of [`an_exception_in_a_policy_is_reported_at_its_own_file_and_line`]:
/// (policy, where it raises, what it says).
fn raising_policies() -> [(PathBuf, &'static str, &'static str); 2] {
    [
        (
            raising_py(),
            "app.py:17",
            "AttributeError: 'Request' object has no attribute 'rol'",
        ),
        (throwing_js(), "app.js:13", "no rule for role worker"),
    ]
}

/// A chain that establishes a worker, then the raising `policy`.
fn chain_into(policy: &Path) -> String {
    format!(
        "{}\n{}",
        scripted(
            "authn",
            r#"decision = "allow", token = "tok-secret-4711", subject = "system:serviceaccount:prod-a:runner", roles = ["worker"], skip_pairing = true"#
        ),
        plugin("policy", policy, "limit = 3")
    )
}

#[test]
fn auth_explain_reports_an_exception_at_its_own_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cache = policies::target_dir().join("policy-builds/compiled");
    for (wasm, place, message) in raising_policies() {
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("[gateway]\nstate_dir = \"state\"\n{}", chain_into(&wasm)),
        )
        .unwrap();
        std::fs::write(dir.path().join("token"), "tok-secret-4711").unwrap();
        let (_, out, _) = cli_in(
            dir.path(),
            &cache,
            &[&EXPLAIN_WORKER[..], &["--token-file", "token"]].concat(),
        );
        assert!(out.contains(place), "{place} not named:\n{out}");
        assert!(!out.contains("tok-secret-4711"), "{out}");
        assert!(out.contains(message), "{message} not shown:\n{out}");
        assert!(!out.contains("wasm trap"), "{out}");
    }
}

#[tokio::test]
async fn the_gateway_logs_and_audits_an_exception_at_its_own_file_and_line() {
    let logs = trustgate_tests::LogCapture::default();
    let _guard = logs.install();
    for (wasm, place, message) in raising_policies() {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let gw = gateway(
            &format!(
                "{}[audit]\noutput = {:?}\n",
                plugin_cache(),
                audit.display().to_string()
            ),
            &chain_into(&wasm),
        )
        .await;
        let res = connect_worker_with(&gw, "sa", "tok-secret-4711").await;
        assert_eq!(res["ok"], false, "{res}");
        // The peer learns that a plugin failed, never where or why.
        assert!(!res.to_string().contains(place), "{res}");

        let text = std::fs::read_to_string(&audit).unwrap();
        let record: Value = serde_json::from_str(text.lines().next().expect("a record")).unwrap();
        let step = &record["trace"][1];
        assert_eq!(step["plugin"], "policy", "{record}");
        let step_text = step.to_string();
        assert!(
            step_text.contains(place),
            "{place} not in the trace: {record}"
        );
        assert!(
            step_text.contains(message),
            "{message} not in the trace: {record}"
        );
        assert!(!text.contains("tok-secret-4711"), "{text}");

        let log = logs.text();
        assert!(log.contains(place) && log.contains(message), "{log}");
        assert!(!log.contains("tok-secret-4711"), "{log}");
    }
}

#[test]
fn a_policy_rejecting_its_configuration_names_the_key_and_unknown_keys_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for (lang, wasm) in [("python", raising_py()), ("js", throwing_js())] {
        for (config, key, message) in [
            ("limit = 7", "auth.plugins[0].config.limit", "must be"),
            (
                "limit = 3, limt = 4",
                "auth.plugins[0].config.limt",
                "unknown key",
            ),
        ] {
            let file = dir.path().join(format!("{lang}.toml"));
            std::fs::write(
                &file,
                format!(
                    "[gateway]\nstate_dir = \"state\"\n{}",
                    plugin("policy", &wasm, config)
                ),
            )
            .unwrap();
            let (ok, out, _) = cli_in(
                dir.path(),
                &cache,
                &["config", "check", file.to_str().unwrap()],
            );
            assert!(!ok, "{lang} {config}: {out}");
            assert!(
                out.contains(key),
                "{lang} {config}: {key} not named:\n{out}"
            );
            assert!(out.contains(message), "{lang} {config}:\n{out}");
        }
    }
}

#[test]
fn a_second_config_check_and_auth_explain_reuse_the_compiled_policy() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = format!(
        "[gateway]\nstate_dir = \"state\"\n{}\n{}",
        scripted(
            "authn",
            r#"decision = "allow", subject = "system:serviceaccount:prod-a:runner", roles = ["worker"], skip_pairing = true"#
        ),
        plugin(
            "office-hours",
            &office_hours(),
            "from_hour = 0, to_hour = 23"
        )
    );
    std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let check = ["config", "check", "gateway.toml"];
    for args in [&check[..], &EXPLAIN_WORKER[..]] {
        let (ok, out, _) = cli_in(dir.path(), &cache, args);
        assert!(ok, "{args:?}: {out}");
        // The first run compiled into the shared cache; the second loads from it. (A wide
        // bound on a behaviour — reuse — not a speed goal: a compile takes tens of seconds.)
        let (ok, out, took) = cli_in(dir.path(), &cache, args);
        assert!(ok, "{args:?}: {out}");
        assert!(
            took < std::time::Duration::from_secs(1),
            "{args:?} took {took:?} the second time:\n{out}"
        );
    }
}
