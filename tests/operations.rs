//! Operations: exact metric deltas after scripted scenarios, the audit log, and hot reload
//! (a bad pin is refused while the old chain keeps allowing and live sessions stay).

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use serde_json::{Value, json};
use trustgate_devcluster::{ApiServer, TokenRequest};
use trustgate_protocol::DeviceKey;
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway, guests, scripted};

async fn scrape(gw: &TestGateway) -> String {
    reqwest::get(format!("{}/metrics", gw.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of `name{labels...}` in a scrape (0 if absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

async fn connect(gw: &TestGateway, auth: Value) -> Value {
    let mut c = WsClient::open(&gw.url()).await;
    c.connect(connect_params("worker", Some(auth), None)).await
}

#[tokio::test]
async fn metrics_count_decisions_handshakes_failures_sessions_and_pairing() {
    let chain = format!(
        "{}{}",
        scripted(
            "authn",
            r#"decision = "allow", method = "good", subject = "w", roles = ["worker"], skip_pairing = true"#
        ),
        scripted(
            "strict",
            r#"decision = "deny", method = "bad", reason = "nope""#
        ),
    );
    let gw = gateway("", &chain).await;
    let before = scrape(&gw).await;

    let mut live = Vec::new();
    for _ in 0..3 {
        let mut c = WsClient::open(&gw.url()).await;
        let res = c
            .connect(connect_params(
                "worker",
                Some(json!({"method": "good"})),
                None,
            ))
            .await;
        assert_eq!(res["ok"], true, "{res}");
        live.push(c);
    }
    for _ in 0..2 {
        let res = connect(&gw, json!({"method": "bad", "token": "s3cr3t-token-value"})).await;
        assert_eq!(res["error"]["code"], "FORBIDDEN");
    }
    let mut c = WsClient::open(&gw.url()).await;
    let mut p = connect_params("worker", Some(json!({"method": "good"})), None);
    p["maxProtocol"] = json!(0);
    p["minProtocol"] = json!(0);
    assert_eq!(c.connect(p).await["error"]["code"], "PROTOCOL_MISMATCH");
    let key = DeviceKey::generate();
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let res = c
        .connect(connect_params("worker", None, Some((&key, &nonce))))
        .await;
    assert_eq!(res["error"]["code"], "NOT_PAIRED");

    let after = scrape(&gw).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    assert_eq!(
        delta("trustgate_handshakes_total", &[("result", "ok")]),
        3.0,
        "{after}"
    );
    assert_eq!(
        delta("trustgate_handshakes_total", &[("result", "FORBIDDEN")]),
        2.0
    );
    assert_eq!(
        delta(
            "trustgate_handshakes_total",
            &[("result", "PROTOCOL_MISMATCH")]
        ),
        1.0
    );
    assert_eq!(
        delta("trustgate_handshakes_total", &[("result", "NOT_PAIRED")]),
        1.0
    );
    assert_eq!(
        delta("trustgate_handshake_duration_seconds_count", &[]),
        7.0
    );
    assert_eq!(
        delta(
            "trustgate_auth_decisions_total",
            &[("plugin", "authn"), ("decision", "allow")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "trustgate_auth_decisions_total",
            &[
                ("plugin", "strict"),
                ("decision", "deny"),
                ("code", "FORBIDDEN")
            ]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "trustgate_auth_decisions_total",
            &[("plugin", "authn"), ("decision", "abstain")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "trustgate_plugin_call_duration_seconds_count",
            &[("plugin", "authn")]
        ),
        6.0
    );
    assert_eq!(
        metric(
            &after,
            "trustgate_sessions",
            &[("role", "worker"), ("method", "good")]
        ),
        3.0
    );
    assert_eq!(metric(&after, "trustgate_pairing_pending", &[]), 1.0);
    assert!(!after.contains("s3cr3t"), "a token leaked into the metrics");
    drop(live);
}

#[tokio::test]
async fn plugin_failures_are_counted_by_cause() {
    let chain = format!(
        "[[auth.plugins]]\nname = \"hostile\"\npath = {:?}\nconfig = {{ mode = \"loop\" }}\n",
        guests::GUEST_HOSTILE
    );
    let gw = gateway("[plugins]\ndeadline_ms = 20\n", &chain).await;
    for _ in 0..2 {
        assert_eq!(
            connect(&gw, json!({"method": "x"})).await["error"]["code"],
            "PLUGIN_FAILED"
        );
    }
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            "trustgate_plugin_failures_total",
            &[("plugin", "hostile"), ("cause", "deadline")]
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "trustgate_handshakes_total",
            &[("result", "PLUGIN_FAILED")]
        ),
        2.0
    );
}

#[tokio::test]
async fn tokenreview_cache_and_jwks_metrics_follow_the_client() {
    let api = ApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path()).unwrap();
    let chain = r#"[[auth.plugins]]
builtin = "k8s-sa-trust"
[auth.plugins.config]
audiences = ["trustgate"]
[[auth.plugins.config.allow]]
namespace = "workers"
service_account = "runner"
"#;
    let gw = gateway(
        &format!(
            "[kubernetes]\nkubeconfig = {:?}\n",
            kubeconfig.display().to_string()
        ),
        chain,
    )
    .await;
    let (good, _) = api
        .token(&TokenRequest::new("workers", "runner", "trustgate"))
        .unwrap();
    let (wrong, _) = api
        .token(&TokenRequest::new("workers", "runner", "elsewhere"))
        .unwrap();
    for token in [&good, &good, &good, &wrong] {
        connect(&gw, json!({"method": "k8s-sa-trust", "token": token})).await;
    }
    let m = scrape(&gw).await;
    assert_eq!(
        metric(
            &m,
            "trustgate_tokenreview_requests_total",
            &[("result", "authenticated")]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "trustgate_tokenreview_requests_total",
            &[("result", "rejected")]
        ),
        1.0
    );
    assert_eq!(metric(&m, "trustgate_review_cache_hits_total", &[]), 2.0);
    assert_eq!(metric(&m, "trustgate_review_cache_misses_total", &[]), 2.0);
    assert_eq!(
        metric(&m, "trustgate_tokenreview_api_calls_total", &[]),
        2.0
    );
    assert_eq!(metric(&m, "trustgate_jwks_refreshes_total", &[]), 0.0);
    assert!(
        !m.contains(&good) && !m.contains(&good[good.len() - 20..]),
        "a token leaked into the metrics"
    );
}

#[tokio::test]
async fn the_audit_log_has_one_line_per_decision_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let gw = gateway(
        &format!("[audit]\noutput = {:?}\n", log.display().to_string()),
        &scripted("authn", r#"decision = "allow", method = "good", token = "tok-allow-123", subject = "w", roles = ["worker"], skip_pairing = true"#),
    )
    .await;
    let ok = connect(&gw, json!({"method": "good", "token": "tok-allow-123"})).await;
    assert_eq!(ok["ok"], true);
    let denied = connect(&gw, json!({"method": "good", "token": "tok-wrong-456"})).await;
    assert_eq!(denied["ok"], false);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["event"], "connect");
    assert_eq!(lines[0]["decision"], "allow");
    assert_eq!(lines[0]["subject"], "w");
    assert_eq!(lines[0]["plugin"], "authn");
    assert_eq!(lines[0]["connId"], ok["payload"]["server"]["connId"]);
    assert!(lines[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(lines[0]["durationMs"].as_f64().is_some() && lines[0]["ts"].as_u64().is_some());
    assert_eq!(lines[1]["decision"], "deny");
    assert_eq!(lines[1]["code"], "UNAUTHENTICATED");
    assert_eq!(lines[1]["reason"], "token-rejected");
    assert!(lines[1].get("subject").is_none());
    assert!(!text.contains("tok-allow-123") && !text.contains("tok-wrong-456"));
}

#[tokio::test]
async fn an_audited_refusal_names_the_subject_and_carries_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    // The first plugin establishes a ServiceAccount, the CEL policy after it refuses dev.
    let chain = format!(
        "{}
[[auth.plugins]]
builtin = \"cel\"
[[auth.plugins.config.rules]]
deny = 'identity.attributes.namespace == \"dev\"'
reason = \"dev-is-not-production\"
[[auth.plugins.config.rules]]
allow = 'true'
",
        scripted(
            "authn",
            r#"decision = "allow", token = "tok-dev-789", subject = "system:serviceaccount:dev:runner", roles = ["worker"], skip_pairing = true, attributes = { namespace = "dev" }"#
        )
    );
    let gw = gateway(
        &format!("[audit]\noutput = {:?}\n", log.display().to_string()),
        &chain,
    )
    .await;
    let res = connect(&gw, json!({"method": "sa", "token": "tok-dev-789"})).await;
    assert_eq!(res["error"]["code"], "FORBIDDEN", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "dev-is-not-production");
    // Refused before any plugin established anyone: no subject, a one-step trace.
    let res = connect(&gw, json!({"method": "sa", "token": "tok-wrong"})).await;
    assert_eq!(res["error"]["code"], "UNAUTHENTICATED", "{res}");

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let refusal = &lines[0];
    assert_eq!(refusal["decision"], "deny");
    assert_eq!(
        refusal["subject"], "system:serviceaccount:dev:runner",
        "{refusal}"
    );
    let trace = refusal["trace"].as_array().expect("a trace");
    assert_eq!(trace.len(), 2, "{refusal}");
    assert_eq!(trace[0]["plugin"], "authn");
    assert_eq!(trace[0]["verdict"], "allow");
    assert_eq!(trace[1]["plugin"], "cel");
    assert_eq!(trace[1]["verdict"], "deny");
    assert_eq!(trace[1]["code"], "FORBIDDEN");
    assert_eq!(trace[1]["reason"], "dev-is-not-production");
    assert!(
        trace.iter().all(|s| s["us"].as_f64().is_some()),
        "{refusal}"
    );

    let early = &lines[1];
    assert!(early.get("subject").is_none(), "{early}");
    assert_eq!(early["trace"].as_array().map(Vec::len), Some(1), "{early}");
    assert_eq!(early["trace"][0]["verdict"], "deny");
    assert_eq!(early["trace"][0]["reason"], "token-rejected");
    assert!(!text.contains("tok-dev-789") && !text.contains("tok-wrong"));
}

#[tokio::test]
async fn a_reload_with_a_bad_pin_is_refused_and_nothing_drops() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();
    let sha = trustgate_runtime::sha256_hex(&bytes);
    let plugin = |sha: &str, decision: &str| {
        format!(
            "[[auth.plugins]]\nname = \"authn\"\npath = {:?}\nsha256 = \"{sha}\"\nconfig = {{ decision = \"{decision}\", method = \"good\", subject = \"w\", roles = [\"worker\"], skip_pairing = true }}\n",
            guests::GUEST_SCRIPTED
        )
    };
    let gw = gateway("", &plugin(&sha, "allow")).await;
    let mut live = WsClient::open(&gw.url()).await;
    assert_eq!(
        live.connect(connect_params(
            "worker",
            Some(json!({"method": "good"})),
            None
        ))
        .await["ok"],
        true
    );

    let reloader = gw.running.reloader();
    let path = dir.path().join("new.toml");
    let write = |body: String| {
        std::fs::write(
            &path,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{body}"
            ),
        )
        .unwrap();
    };
    write(plugin(&"0".repeat(64), "deny"));
    let err = reloader.reload_file(&path).await.unwrap_err().to_string();
    assert!(err.contains("sha256 mismatch"), "{err}");
    // the old chain keeps allowing, the live session keeps working
    assert_eq!(connect(&gw, json!({"method": "good"})).await["ok"], true);
    assert_eq!(live.request("p", "ping", json!({})).await["ok"], true);

    // a valid reload takes effect for new handshakes only
    write(plugin(&sha, "deny"));
    assert_eq!(reloader.reload_file(&path).await.unwrap(), 1);
    assert_eq!(
        connect(&gw, json!({"method": "good"})).await["error"]["code"],
        "FORBIDDEN"
    );
    assert_eq!(
        live.request("p2", "ping", json!({})).await["ok"],
        true,
        "live sessions are not dropped"
    );

    let m = scrape(&gw).await;
    assert_eq!(
        metric(&m, "trustgate_config_reloads_total", &[("result", "error")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "trustgate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
}
