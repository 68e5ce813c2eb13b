//! Life after `hello-ok`: ping, session.info, ticks, operator-only methods, the invoke relay,
//! reauth and expiry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use serde_json::{Value, json};
use trustgate::worker::{WorkerEvent, WorkerOptions};
use trustgate_protocol::now_ms;
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{TestGateway, gateway, scripted};

const CHAIN_WORKERS: &str = r#"decision = "allow", method = "k8s-sa-trust", subject_from_token = true, roles = ["worker"], skip_pairing = true"#;
const CHAIN_OPS: &str = r#"decision = "allow", method = "op", token = "s3cret", subject = "ops", roles = ["operator"], skip_pairing = true"#;

async fn two_role_gateway(sections: &str, worker_chain: &str) -> TestGateway {
    gateway(
        sections,
        &format!(
            "{}{}",
            scripted("workers", worker_chain),
            scripted("ops", CHAIN_OPS)
        ),
    )
    .await
}

async fn worker(gw: &TestGateway, token: &str) -> (WsClient, Value) {
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": token})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    (c, res)
}

async fn operator(gw: &TestGateway) -> WsClient {
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "operator",
            Some(json!({"method": "op", "token": "s3cret"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    c
}

#[tokio::test]
async fn ping_session_info_ticks_and_unknown_methods() {
    let gw = two_role_gateway("[limits]\ntick_interval_ms = 50\n", CHAIN_WORKERS).await;
    let (mut w, hello) = worker(&gw, "w1").await;
    let pong = w.request("p", "ping", json!({})).await;
    assert_eq!(pong["payload"], json!({"pong": true}));
    let info = w.request("i", "session.info", json!({})).await;
    assert_eq!(info["ok"], true);
    assert_eq!(info["payload"]["subject"], "token:w1");
    assert_eq!(info["payload"]["role"], "worker");
    assert_eq!(
        info["payload"]["connId"],
        hello["payload"]["server"]["connId"]
    );
    let first = w.event("tick").await;
    let second = w.event("tick").await;
    assert!(first["payload"]["ts"].as_u64().is_some());
    assert!(second["seq"].as_u64().unwrap() > first["seq"].as_u64().unwrap());
    let unknown = w.request("u", "frobnicate", json!({})).await;
    assert_eq!(unknown["error"]["code"], "INVALID_REQUEST");
    assert_eq!(unknown["error"]["details"]["field"], "method");
    let bad = w.request("b", "ping", json!({"unexpected": 1})).await;
    assert_eq!(bad["ok"], true, "ping ignores params: {bad}");
    let again = w
        .request("c2", "connect", connect_params("worker", None, None))
        .await;
    assert_eq!(again["error"]["code"], "INVALID_REQUEST");
    // still alive
    assert_eq!(w.request("p2", "ping", json!({})).await["ok"], true);
}

#[tokio::test]
async fn a_worker_calling_an_operator_method_is_forbidden_and_stays_connected() {
    let gw = two_role_gateway("", CHAIN_WORKERS).await;
    let (mut w, _) = worker(&gw, "w1").await;
    for method in [
        "workers.list",
        "pairing.list",
        "pairing.approve",
        "pairing.reject",
        "worker.invoke",
    ] {
        let res = w.request(method, method, json!({})).await;
        assert_eq!(res["error"]["code"], "FORBIDDEN", "{method}: {res}");
        assert_eq!(res["error"]["retryable"], false);
    }
    assert_eq!(
        w.request("p", "ping", json!({})).await["payload"]["pong"],
        true
    );
}

#[tokio::test]
async fn operators_invoke_commands_on_real_workers() {
    let gw = two_role_gateway("", CHAIN_WORKERS).await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "pod-a\n").unwrap();
    let mut options = WorkerOptions::new(gw.url());
    options.k8s_trust = true;
    options.token_path = token_path;
    options.instance_id = Some("pod-a".into());
    // The real worker client, with a "k8s" method to match this test chain.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (ev_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(trustgate::worker::run(options, stop, Some(ev_tx)));
    let hello = match events.recv().await.unwrap() {
        WorkerEvent::Connected(h) => h,
        other => panic!("expected a connection, got {other:?}"),
    };
    assert_eq!(hello.auth.subject, "token:pod-a");

    let mut op = operator(&gw).await;
    let list = op.request("l", "workers.list", json!({})).await;
    let workers = list["payload"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{list}");
    assert_eq!(workers[0]["instanceId"], "pod-a");
    let worker_id = workers[0]["connId"].as_str().unwrap().to_string();
    assert_eq!(worker_id, hello.server.conn_id);

    let args = json!({"text": "hello", "n": [1, 2, 3]});
    let res = op
        .request(
            "inv",
            "worker.invoke",
            json!({"workerId": worker_id, "command": "echo", "args": args}),
        )
        .await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(res["payload"]["ok"], true);
    assert_eq!(res["payload"]["result"], args);

    let res = op
        .request(
            "inv2",
            "worker.invoke",
            json!({"workerId": worker_id, "command": "sysinfo"}),
        )
        .await;
    assert_eq!(
        res["payload"]["result"]["os"],
        std::env::consts::OS,
        "{res}"
    );

    let res = op
        .request(
            "inv3",
            "worker.invoke",
            json!({"workerId": worker_id, "command": "rm-rf"}),
        )
        .await;
    assert_eq!(res["payload"]["ok"], false);
    assert_eq!(res["payload"]["error"]["code"], "UNKNOWN_COMMAND");

    let res = op
        .request(
            "inv4",
            "worker.invoke",
            json!({"workerId": "c-nobody", "command": "echo"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST");
    assert_eq!(res["error"]["details"]["field"], "params.workerId");

    stop_tx.send(true).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn invoke_relay_with_a_raw_worker() {
    let gw = two_role_gateway("", CHAIN_WORKERS).await;
    let (mut w, hello) = worker(&gw, "raw").await;
    let worker_id = hello["payload"]["server"]["connId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut op = operator(&gw).await;
    op.send_json(&json!({"type":"req","id":"inv","method":"worker.invoke","params":{"workerId": worker_id, "command":"echo","args":{"x":1}}}))
        .await;
    let ev = w.event("invoke.request").await;
    assert_eq!(ev["payload"]["command"], "echo");
    assert_eq!(ev["payload"]["args"], json!({"x": 1}));
    let invoke_id = ev["payload"]["invokeId"].as_str().unwrap();
    let ack = w
        .request(
            "r",
            "invoke.result",
            json!({"invokeId": invoke_id, "ok": true, "result": {"y": 2}}),
        )
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let res = op.response("inv").await;
    assert_eq!(res["payload"]["result"], json!({"y": 2}), "{res}");
    // an unknown invocation id is refused, naming the field
    let bad = w
        .request(
            "r2",
            "invoke.result",
            json!({"invokeId": "inv-nope", "ok": true}),
        )
        .await;
    assert_eq!(bad["error"]["details"]["field"], "params.invokeId");
}

#[tokio::test]
async fn expiry_closes_with_4401_and_reauth_extends_it() {
    let chain = r#"decision = "allow", method = "k8s-sa-trust", subject_from_token = true, roles = ["worker"], skip_pairing = true, expires_in_ms = 700"#;
    let gw = two_role_gateway("[limits]\ntick_interval_ms = 100\n", chain).await;

    // Without reauth: closed with 4401 at expiry.
    let (mut w, hello) = worker(&gw, "w1").await;
    let expires = hello["payload"]["auth"]["expiresAtMs"].as_u64().unwrap();
    let (code, reason) = w.closed().await;
    assert_eq!(code, 4401);
    assert_eq!(reason, "credentials expired");
    assert!(
        now_ms() + 50 >= expires,
        "closed {} ms early",
        expires - now_ms()
    );

    // With reauth: the session outlives its first expiry.
    let (mut w, hello) = worker(&gw, "w2").await;
    let first_expiry = hello["payload"]["auth"]["expiresAtMs"].as_u64().unwrap();
    let mut latest = first_expiry;
    let mut n = 0;
    while now_ms() < first_expiry + 300 {
        n += 1;
        let res = w
            .request(
                &format!("ra{n}"),
                "reauth",
                json!({"auth": {"method": "k8s-sa-trust", "token": "w2"}}),
            )
            .await;
        assert_eq!(res["ok"], true, "{res}");
        let e = res["payload"]["expiresAtMs"].as_u64().unwrap();
        assert!(e >= latest);
        latest = e;
        let info = w.request(&format!("i{n}"), "session.info", json!({})).await;
        assert_eq!(info["payload"]["expiresAtMs"], latest);
        // Pace the reauths on the server's ticks (every 100 ms, well inside the 700 ms life).
        w.event("tick").await;
    }
    assert!(latest > first_expiry, "reauth must extend expiresAtMs");
    assert_eq!(
        w.request("p", "ping", json!({})).await["ok"],
        true,
        "alive past the first expiry"
    );
    // A reauth as someone else is refused and does not extend the session.
    let res = w
        .request(
            "other",
            "reauth",
            json!({"auth": {"method": "k8s-sa-trust", "token": "intruder"}}),
        )
        .await;
    assert_eq!(res["error"]["code"], "FORBIDDEN", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "subject-changed");
    // Stop reauthenticating: 4401.
    assert_eq!(w.closed().await.0, 4401);
}

#[tokio::test]
async fn reauth_with_rejected_credentials_keeps_the_old_expiry() {
    let chain = r#"decision = "allow", method = "k8s-sa-trust", token = "good", subject = "w", roles = ["worker"], skip_pairing = true, expires_in_ms = 60000"#;
    let gw = two_role_gateway("", chain).await;
    let (mut w, hello) = worker(&gw, "good").await;
    let expiry = hello["payload"]["auth"]["expiresAtMs"].clone();
    let res = w
        .request(
            "ra",
            "reauth",
            json!({"auth": {"method": "k8s-sa-trust", "token": "bad"}}),
        )
        .await;
    assert_eq!(res["error"]["code"], "UNAUTHENTICATED", "{res}");
    let info = w.request("i", "session.info", json!({})).await;
    assert_eq!(info["payload"]["expiresAtMs"], expiry);
    let malformed = w
        .request(
            "m",
            "reauth",
            json!({"auth": {"method": "k8s-sa-trust", "tokn": "x"}}),
        )
        .await;
    assert_eq!(
        malformed["error"]["details"]["field"], "params.auth",
        "{malformed}"
    );
    assert!(!malformed.to_string().contains("tokn"), "{malformed}");
    assert_eq!(
        w.request("p", "ping", json!({})).await["ok"],
        true,
        "a failed reauth must not close the session"
    );
}

/// The ids of the workers an operator sees.
async fn listed(op: &mut WsClient, id: &str) -> Vec<String> {
    let list = op.request(id, "workers.list", json!({})).await;
    list["payload"]["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|w| w["connId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_hello_ok_is_already_listed_and_a_closed_one_already_gone() {
    // Sessions expire 3 s after their hello-ok, so each lane also sees the other end of
    // the life: once a worker has its close frame, no operator may still find it.
    let chain = r#"decision = "allow", method = "k8s-sa-trust", subject_from_token = true, roles = ["worker"], skip_pairing = true, expires_in_ms = 3000"#;
    let gw = std::sync::Arc::new(two_role_gateway("", chain).await);
    let mut lanes = Vec::new();
    for lane in 0..4 {
        let gw = gw.clone();
        lanes.push(tokio::spawn(async move {
            let mut op = operator(&gw).await;
            let mut open = Vec::new();
            for i in 0..50 {
                let (w, hello) = worker(&gw, &format!("l{lane}-w{i}")).await;
                let id = hello["payload"]["server"]["connId"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let seen = listed(&mut op, &format!("l{i}")).await;
                assert!(
                    seen.contains(&id),
                    "worker {id} had its hello-ok but workers.list misses it"
                );
                open.push((w, id));
            }
            for (i, (mut w, id)) in open.into_iter().enumerate() {
                assert_eq!(w.closed().await.0, 4401);
                let seen = listed(&mut op, &format!("g{i}")).await;
                assert!(
                    !seen.contains(&id),
                    "worker {id} has its close frame but is still listed"
                );
            }
        }));
    }
    for lane in lanes {
        lane.await.unwrap();
    }
}
