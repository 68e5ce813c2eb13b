//! The policy tools of the command line, run as a process: `trustgate plugin test` reporting a
//! wrong expectation with a diff and a failing exit status, and `trustgate auth explain`
//! tracing the configured chain offline for an allowed and a refused request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::path::Path;
use std::process::Command;

use trustgate_tests::{guests, policies, status_and_text};

const CLI: &str = env!("CARGO_BIN_EXE_trustgate-cli");

fn cli(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(CLI)
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run the trustgate command line");
    status_and_text(&out)
}

/// `trustgate plugin test --builtin cel --config CONFIG --cases CASES` in `dir`.
fn cel_cases(dir: &Path, config: &str, cases: &str) -> (bool, String) {
    cli(
        dir,
        &[
            "plugin",
            "test",
            "--builtin",
            "cel",
            "--config",
            config,
            "--cases",
            cases,
        ],
    )
}

/// CEL's macros bind variables of their own (`exists(g, ...)`), which are neither the
/// policy's variables nor unknown ones; each call reads only the fields the rules select, and
/// every field a rule selects is there.
#[test]
fn cel_rules_with_macros_decide_through_the_builtin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"
[[rules]]
deny = 'identity.groups.exists(g, g.startsWith("banned-"))'
reason = "banned-group"

[[rules]]
allow = 'request.role == "worker" && identity.attributes.namespace.startsWith("prod-") && peer.tls'

[[rules]]
allow = 'size(identity.groups) > 0 && identity.groups.all(request, request.endsWith("-team"))'
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cases.toml"),
        r#"
[[case]]
name = "a banned group is refused first"
tls = true
identity = { subject = "a", groups = ["ok-team", "banned-x"], attributes = { namespace = "prod-a" } }
expect = { decision = "deny", code = "forbidden", reason = "banned-group" }

[[case]]
name = "a prod worker over TLS"
tls = true
identity = { subject = "w", attributes = { namespace = "prod-a" } }
expect = { decision = "allow", subject = "w" }

[[case]]
name = "the same worker without TLS matches nothing"
identity = { subject = "w", attributes = { namespace = "prod-a" } }
expect = { decision = "deny", code = "forbidden", reason = "no-rule-matched" }

[[case]]
name = "teams only, named by a macro variable that shadows request"
identity = { subject = "t", groups = ["a-team", "b-team"] }
expect = { decision = "allow", subject = "t" }

[[case]]
name = "one group that is no team"
identity = { subject = "t", groups = ["a-team", "other"] }
expect = { decision = "deny", code = "forbidden", reason = "no-rule-matched" }
"#,
    )
    .unwrap();
    let (ok, out) = cel_cases(dir.path(), "rules.toml", "cases.toml");
    assert!(ok, "{out}");
    assert!(out.contains("5 of 5 cases passed"), "{out}");
}

#[test]
fn plugin_test_reports_a_wrong_expectation_with_a_diff_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        policies::root().join("plugins/examples/cel-rules/config.toml"),
        dir.path().join("config.toml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("cases.toml"),
        r#"
[[case]]
name = "a prod worker is let through"
identity = { subject = "system:serviceaccount:prod-a:runner", attributes = { namespace = "prod-a" } }
expect = { decision = "allow" }

[[case]]
name = "a blocked network is wrongly expected to pass"
remote_addr = "192.0.2.7:40000"
identity = { subject = "system:serviceaccount:prod-a:runner", attributes = { namespace = "prod-a" } }
expect = { decision = "allow", subject = "system:serviceaccount:prod-a:runner" }

[[case]]
name = "a wrong reason is a failure too"
role = "operator"
identity = { subject = "alice", groups = ["ops"] }
expect = { decision = "deny", code = "forbidden", reason = "operator-needs-mfa" }
"#,
    )
    .unwrap();
    let (ok, out) = cel_cases(dir.path(), "config.toml", "cases.toml");
    assert!(!ok, "a failing case must fail the command:\n{out}");
    assert!(
        out.contains("ok    a prod worker is let through  ("),
        "{out}"
    );
    // Each case's call time, and the median.
    assert!(out.contains(" µs)"), "{out}");
    assert!(out.contains("median call "), "{out}");
    assert!(
        out.contains(&format!(
            "{}\n      - expected: allow subject=system:serviceaccount:prod-a:runner\n      + actual:   deny code=forbidden reason=blocked-network",
            line_of(&out, "FAIL  a blocked network is wrongly expected to pass  (")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{}\n      - expected: deny code=forbidden reason=operator-needs-mfa\n      + actual:   deny code=forbidden reason=operator-needs-tls",
            line_of(&out, "FAIL  a wrong reason is a failure too  (")
        )),
        "{out}"
    );
    assert!(out.contains("1 of 3 cases passed, 2 failed"), "{out}");

    // A case file with a typo is an error naming the file, not a silent pass.
    std::fs::write(
        dir.path().join("typo.toml"),
        "[[case]]\nname = \"x\"\nexpct = { decision = \"allow\" }\n",
    )
    .unwrap();
    let (ok, out) = cel_cases(dir.path(), "config.toml", "typo.toml");
    assert!(!ok);
    assert!(out.contains("typo.toml") && out.contains("expct"), "{out}");
}

/// A gateway configuration: a plugin that accepts one token as a dev or a prod
/// ServiceAccount (by auth method), then a CEL policy refusing dev.
fn explain_config(dir: &Path) -> std::path::PathBuf {
    let authn = |method: &str, namespace: &str| {
        format!(
            "[[auth.plugins]]\nname = \"authn-{namespace}\"\npath = {:?}\ncredentials = \"read\"\nconfig = {{ decision = \"allow\", method = \"{method}\", token = \"tok-explain-1\", subject = \"system:serviceaccount:{namespace}:runner\", roles = [\"worker\"], skip_pairing = true, attributes = {{ namespace = \"{namespace}\" }} }}\n",
            guests::GUEST_SCRIPTED
        )
    };
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\n{}\n{}\n[[auth.plugins]]\nname = \"policy\"\nbuiltin = \"cel\"\n[[auth.plugins.config.rules]]\ndeny = 'identity.attributes.namespace == \"dev\"'\nreason = \"dev-is-not-production\"\n[[auth.plugins.config.rules]]\nallow = 'true'\n",
        authn("prod", "prod"),
        authn("dev", "dev"),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.join("token"), "tok-explain-1\n").unwrap();
    path
}

#[test]
fn auth_explain_traces_an_allowed_and_a_refused_request() {
    let dir = tempfile::tempdir().unwrap();
    explain_config(dir.path());
    let explain = |method: &str| {
        cli(
            dir.path(),
            &[
                "auth",
                "explain",
                "--config",
                "gateway.toml",
                "--role",
                "worker",
                "--token-file",
                "token",
                "--method",
                method,
                "--remote-addr",
                "10.1.2.3",
            ],
        )
    };

    let (ok, out) = explain("prod");
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"chain:"), "{out}");
    // authn-prod allows, authn-dev abstains (not its method), the policy permits.
    let step = |n: usize, plugin: &str, verdict: &str| {
        lines.iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() >= 3
                && words[0] == format!("{n}.")
                && words[1] == plugin
                && words[2] == verdict
        })
    };
    assert!(step(1, "authn-prod", "allow"), "{out}");
    assert!(step(2, "authn-dev", "abstain"), "{out}");
    assert!(step(3, "policy", "permit"), "{out}");
    assert!(
        out.contains("subject: system:serviceaccount:prod:runner"),
        "{out}"
    );
    assert!(
        out.contains("outcome: hello-ok as `system:serviceaccount:prod:runner`"),
        "{out}"
    );

    let (ok, out) = explain("dev");
    assert!(ok, "explaining a refusal is a successful run:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    let step = |n: usize, plugin: &str, verdict: &str| {
        lines.iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() >= 3
                && words[0] == format!("{n}.")
                && words[1] == plugin
                && words[2] == verdict
        })
    };
    assert!(step(1, "authn-prod", "abstain"), "{out}");
    assert!(step(2, "authn-dev", "allow"), "{out}");
    assert!(step(3, "policy", "deny"), "{out}");
    assert!(out.contains("forbidden/dev-is-not-production"), "{out}");
    assert!(
        out.contains("subject: system:serviceaccount:dev:runner"),
        "{out}"
    );
    assert!(
        out.contains("outcome: FORBIDDEN (retryable: false), reason `dev-is-not-production`"),
        "{out}"
    );
    assert!(
        !out.contains("tok-explain-1"),
        "the token must not be printed:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_and_handshakes_with_1012_and_exits_within_the_drain_time() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\ndrain_timeout_ms = 5000\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\noutput = \"off\"\n{}",
            trustgate_tests::scripted(
                "authn",
                r#"decision = "allow", subject = "w", roles = ["worker"], skip_pairing = true"#
            )
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(CLI)
        .args(["serve", "--config"])
        .arg(&config)
        .env("TRUSTGATE_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    let url = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("serve prints its address");
        stderr.push_str(&line);
        stderr.push('\n');
        if let Some(rest) = line.split("serving ws://").nth(1) {
            break format!("ws://{}", rest.split_whitespace().next().unwrap());
        }
    };
    // Five sessions, and five sockets that got their challenge but never sent `connect`.
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut worker = trustgate_tests::client::WsClient::open(&url).await;
        let res = worker
            .connect(trustgate_tests::client::connect_params(
                "worker",
                Some(serde_json::json!({"method": "token"})),
                None,
            ))
            .await;
        assert_eq!(res["ok"], true, "{res}");
        sockets.push(("session", worker));
    }
    for _ in 0..5 {
        sockets.push((
            "handshake",
            trustgate_tests::client::WsClient::open(&url).await,
        ));
    }

    let pid = child.id().unwrap().to_string();
    let started = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Every one gets a close frame (`closed` fails on a stream that ends without one).
    for (what, socket) in &mut sockets {
        let (code, reason) = socket.closed().await;
        assert_eq!(code, 1012, "{what}: {reason}");
        assert_eq!(reason, "service restart", "{what}");
    }
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a drained gateway exits without waiting out the drain time"
    );
    while let Ok(Some(line)) = lines.next_line().await {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    assert!(stderr.contains("drained"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal escape codes when stderr is not a terminal:\n{stderr:?}"
    );
    // Nobody is listening any more.
    assert!(
        tokio::net::TcpStream::connect(url.trim_start_matches("ws://"))
            .await
            .is_err()
    );
}

/// The whole line of `out` that starts with `prefix` (a case's report line, whose call time
/// varies).
fn line_of<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{out}"))
}
