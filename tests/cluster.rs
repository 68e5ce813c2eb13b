//! Several replicas on a real `nats-server` (JetStream), each a `trustgate serve` process of
//! its own: pairing shared through the key-value buckets with compare-and-set, the cluster-wide
//! session registry, `worker.invoke` routed to the replica holding the worker, revocations
//! reaching every replica, a NATS outage, and a replica killed with SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use trustgate_protocol::DeviceKey;
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::nats::NatsServer;
use trustgate_tests::scripted;

const CLI: &str = env!("CARGO_BIN_EXE_trustgate-cli");
const HEARTBEAT_MS: u64 = 200;
const SESSION_TTL_MS: u64 = 1_000;

/// The `[cluster]` section of replica `id`.
fn cluster_section(nats: &NatsServer, id: &str) -> String {
    format!(
        "[cluster]\nbackend = \"nats\"\nservers = [{:?}]\nreplica_id = {id:?}\nheartbeat_ms = {HEARTBEAT_MS}\nsession_ttl_ms = {SESSION_TTL_MS}\nrequest_timeout_ms = 1000\n",
        nats.url()
    )
}

/// Operators by password, Kubernetes-style workers by token; devices pair.
fn chain() -> String {
    scripted(
        "operators",
        r#"decision = "allow", method = "operator-password", token = "s3cret", subject = "ops", roles = ["operator"], skip_pairing = true"#,
    ) + &scripted(
        "workers",
        r#"decision = "allow", method = "k8s-sa-trust", token = "good", subject = "system:serviceaccount:w:runner", roles = ["worker"], skip_pairing = true"#,
    )
}

/// A `trustgate serve` process on the shared NATS.
struct Replica {
    child: tokio::process::Child,
    ws: String,
    admin: String,
    token: String,
    config: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl Replica {
    /// Starts replica `id` (with `extra` TOML tables) and returns once its copy of the shared
    /// state is loaded.
    async fn start(nats: &NatsServer, id: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[gateway]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\noutput = \"off\"\n{}{extra}\n{}",
                dir.path().join("state").display().to_string(),
                cluster_section(nats, id),
                chain()
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
        let line = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("serve prints its addresses");
            if line.contains(" serving ") {
                break line;
            }
        };
        // Keep reading so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let word = |prefix: &str| {
            line.split_whitespace()
                .find(|w| w.starts_with(prefix))
                .unwrap()
                .trim_end_matches(')')
                .to_string()
        };
        let replica = Self {
            ws: word("ws://"),
            admin: word("http://"),
            token: std::fs::read_to_string(dir.path().join("state/admin-token"))
                .unwrap()
                .trim()
                .to_string(),
            child,
            config,
            dir,
        };
        eventually("the replica to load the shared state", || async {
            let ready: Value = reqwest::get(format!("{}/readyz", replica.admin))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (ready["cluster"]["synced"] == true && ready["cluster"]["replica"] == id).then_some(())
        })
        .await;
        replica
    }

    fn url(&self) -> String {
        self.ws.clone()
    }

    /// SIGKILL: no goodbye to NATS.
    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Waits (at most 10 s, looking every 20 ms) until `check` gives a value.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `trustgate auth explain --role worker --device-key F` with `gw`'s configuration, for a
/// client proving `key`: (exit status success, stdout and stderr).
async fn explain_device(gw: &Replica, key: &DeviceKey) -> (bool, String) {
    use base64::Engine as _;
    let file = gw.dir.path().join(format!("{}.key", key.id()));
    std::fs::write(
        &file,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.seed()),
    )
    .unwrap();
    let out = tokio::process::Command::new(CLI)
        .args(["auth", "explain", "--config"])
        .arg(&gw.config)
        .args(["--role", "worker", "--device-key"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    trustgate_tests::status_and_text(&out)
}

async fn readyz(gw: &Replica) -> Value {
    reqwest::get(format!("{}/readyz", gw.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn admin(gw: &Replica, method: &str, path: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", gw.admin);
    let req = if method == "POST" {
        client.post(url)
    } else {
        client.get(url)
    };
    let res = req.bearer_auth(&gw.token).send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn operator(gw: &Replica) -> WsClient {
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "operator",
            Some(json!({"method": "operator-password", "token": "s3cret"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    c
}

async fn k8s_worker(gw: &Replica) -> (WsClient, String) {
    let mut c = WsClient::open(&gw.url()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": "good"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    let id = res["payload"]["server"]["connId"]
        .as_str()
        .unwrap()
        .to_string();
    (c, id)
}

async fn sign_in(gw: &Replica, key: &DeviceKey) -> (WsClient, Value) {
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let res = c
        .connect(connect_params("worker", None, Some((key, &nonce))))
        .await;
    (c, res)
}

async fn token_in(gw: &Replica, token: &str) -> Value {
    let mut c = WsClient::open(&gw.url()).await;
    c.connect(connect_params(
        "worker",
        Some(json!({"method": "device-token", "deviceToken": token})),
        None,
    ))
    .await
}

fn request_id(res: &Value) -> String {
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
    res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until `gw` lists `device` as approved, with at least `tokens` tokens.
async fn sees_device(gw: &Replica, device: &str, tokens: usize) {
    eventually("the device to reach the replica", || async {
        let (_, list) = admin(gw, "GET", "/api/devices").await;
        list["devices"]
            .as_array()?
            .iter()
            .any(|d| d["id"] == device && d["tokens"].as_array().is_some_and(|t| t.len() >= tokens))
            .then_some(())
    })
    .await;
}

/// Asks `workers.list` until the list satisfies `done` (at most 10 s, every 20 ms).
async fn workers_until(
    op: &mut WsClient,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        let res = op
            .request(&format!("w{n}"), "workers.list", json!({}))
            .await;
        let workers = res["payload"]["workers"].as_array().unwrap().clone();
        if done(&workers) {
            return workers;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paired_on_one_replica_the_device_logs_in_on_another() {
    let nats = NatsServer::start();
    let (a, b) = tokio::join!(
        Replica::start(&nats, "a", ""),
        Replica::start(&nats, "b", "")
    );
    let key = DeviceKey::generate();

    // Asked and approved on a.
    let (_d, res) = sign_in(&a, &key).await;
    let rid = request_id(&res);
    let (status, body) = admin(&a, "POST", &format!("/api/pairing/{rid}/approve")).await;
    assert_eq!(status, 200, "{body}");

    // Logs in on b, by signature, and then with the token b issued on a... and vice versa.
    sees_device(&b, &key.id(), 0).await;
    let (_s, res) = sign_in(&b, &key).await;
    assert_eq!(res["payload"]["auth"]["pairing"], "paired", "{res}");
    let token = res["payload"]["auth"]["deviceToken"]
        .as_str()
        .unwrap()
        .to_string();
    sees_device(&a, &key.id(), 1).await;
    let res = token_in(&a, &token).await;
    assert_eq!(res["ok"], true, "{res}");
    assert_eq!(
        res["payload"]["auth"]["subject"],
        format!("device:{}", key.id())
    );

    // The approval is NATS's, not a replica's: a replica started afterwards knows it.
    let c = Replica::start(&nats, "c", "").await;
    let (_s, res) = sign_in(&c, &key).await;
    assert_eq!(res["payload"]["auth"]["pairing"], "paired", "{res}");

    // So does `auth explain` with a replica's configuration: it reads the devices bucket.
    let (ok, out) = explain_device(&b, &key).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("outcome: hello-ok as `device:{}`", key.id())),
        "{out}"
    );
    let (ok, out) = explain_device(&b, &DeviceKey::generate()).await;
    assert!(ok, "{out}");
    assert!(out.contains("outcome: NOT_PAIRED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_on_one_replica_and_reject_on_another_at_once_has_one_outcome_everywhere() {
    let nats = NatsServer::start();
    let extra = "[pairing]\nmax_pending_per_address = 64\n";
    let (a, b) = tokio::join!(
        Replica::start(&nats, "a", extra),
        Replica::start(&nats, "b", extra)
    );
    let mut outcomes = [0usize; 2];
    for round in 0..12 {
        let key = DeviceKey::generate();
        let (_d, res) = sign_in(&a, &key).await;
        let rid = request_id(&res);
        eventually("the request to reach b", || async {
            let (_, list) = admin(&b, "GET", "/api/pairing").await;
            list["pending"]
                .as_array()?
                .iter()
                .any(|p| p["requestId"] == json!(rid))
                .then_some(())
        })
        .await;
        let approve = format!("/api/pairing/{rid}/approve");
        let reject = format!("/api/pairing/{rid}/reject");
        let ((sa, ba), (sb, bb)) =
            tokio::join!(admin(&a, "POST", &approve), admin(&b, "POST", &reject));
        let winners = [sa, sb].iter().filter(|s| **s == 200).count();
        assert_eq!(
            winners, 1,
            "round {round}: approve {sa} {ba}, reject {sb} {bb}"
        );
        let loser = if sa == 200 { (sb, &bb) } else { (sa, &ba) };
        assert!(
            loser.0 == 409 || loser.0 == 404,
            "round {round}: the loser gets a clear answer: {loser:?}"
        );
        let approved = sa == 200;
        outcomes[usize::from(approved)] += 1;
        // Every replica agrees on the one outcome, and nothing is left pending.
        for gw in [&a, &b] {
            if approved {
                sees_device(gw, &key.id(), 0).await;
            }
            let (_, list) = admin(gw, "GET", "/api/devices").await;
            let listed = list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["id"] == key.id());
            assert_eq!(listed, approved, "round {round}");
            eventually("the request to leave every list", || async {
                let (_, list) = admin(gw, "GET", "/api/pairing").await;
                (!list["pending"]
                    .as_array()?
                    .iter()
                    .any(|p| p["requestId"] == json!(rid)))
                .then_some(())
            })
            .await;
        }
        let (_d, res) = sign_in(&b, &key).await;
        assert_eq!(res["ok"], json!(approved), "round {round}: {res}");
    }
    eprintln!(
        "approvals won {}, rejections won {}",
        outcomes[1], outcomes[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_on_one_replica_lists_and_invokes_workers_on_the_others() {
    let nats = NatsServer::start();
    let extra = "[limits]\ninvoke_timeout_ms = 500\n";
    let (a, b, c) = tokio::join!(
        Replica::start(&nats, "a", extra),
        Replica::start(&nats, "b", extra),
        Replica::start(&nats, "c", extra)
    );

    // A real worker (`trustgate worker`, which answers `echo`) on a, a silent one on b.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "good").unwrap();
    let mut options = trustgate::worker::WorkerOptions::new(a.url());
    options.k8s_trust = true;
    options.token_path = token;
    let (stop, stopped) = watch::channel(false);
    let (events, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let worker = tokio::spawn(trustgate::worker::run(options, stopped, Some(events)));
    let echo_id = loop {
        if let trustgate::worker::WorkerEvent::Connected(hello) = connected.recv().await.unwrap() {
            break hello.server.conn_id;
        }
    };
    let (_silent, silent_id) = k8s_worker(&b).await;

    // The operator on c lists both, each with the replica that holds it.
    let mut op = operator(&c).await;
    let workers = workers_until(&mut op, "both workers in c's list", |w| w.len() == 2).await;
    let replica_of = |id: &str| {
        workers
            .iter()
            .find(|w| w["connId"] == id)
            .map(|w| w["replica"].clone())
    };
    assert_eq!(replica_of(&echo_id), Some(json!("a")), "{workers:?}");
    assert_eq!(replica_of(&silent_id), Some(json!("b")), "{workers:?}");

    // Invoked from c, answered on a: what a gives its own operator.
    let args = json!({"workerId": echo_id, "command": "echo", "args": {"x": 1}});
    let routed = op.request("i1", "worker.invoke", args.clone()).await;
    let local = operator(&a)
        .await
        .request("i1", "worker.invoke", args)
        .await;
    assert_eq!(routed["ok"], true, "{routed}");
    assert_eq!(routed["payload"]["ok"], true, "{routed}");
    assert_eq!(routed["payload"]["result"], json!({"x": 1}), "{routed}");
    assert_eq!(routed["payload"]["result"], local["payload"]["result"]);
    assert_eq!(routed["payload"]["workerId"], json!(echo_id));

    // A worker that never answers times out as it would locally.
    let res = op
        .request(
            "i2",
            "worker.invoke",
            json!({"workerId": silent_id, "command": "echo"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "UNAVAILABLE", "{res}");
    assert_eq!(res["error"]["details"]["reason"], "invoke-timeout", "{res}");

    // The worker leaves: it leaves c's list, and invoking it is the local error.
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    workers_until(&mut op, "the worker to leave c's list", |w| {
        !w.iter().any(|w| w["connId"] == json!(echo_id))
    })
    .await;
    let res = op
        .request(
            "i3",
            "worker.invoke",
            json!({"workerId": echo_id, "command": "echo"}),
        )
        .await;
    assert_eq!(res["error"]["code"], "INVALID_REQUEST", "{res}");
    assert_eq!(res["error"]["details"]["field"], "params.workerId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_closes_the_device_session_on_another() {
    let nats = NatsServer::start();
    let (a, c) = tokio::join!(
        Replica::start(&nats, "a", ""),
        Replica::start(&nats, "c", "")
    );
    let key = DeviceKey::generate();
    let (_d, res) = sign_in(&c, &key).await;
    let rid = request_id(&res);
    let (status, _) = admin(&c, "POST", &format!("/api/pairing/{rid}/approve")).await;
    assert_eq!(status, 200);
    let (mut session, res) = sign_in(&c, &key).await;
    assert_eq!(res["ok"], true, "{res}");
    sees_device(&a, &key.id(), 0).await;

    let (status, body) = admin(&a, "POST", &format!("/api/devices/{}/revoke", key.id())).await;
    assert_eq!(status, 200, "{body}");
    let (code, reason) = tokio::time::timeout(Duration::from_secs(1), session.closed())
        .await
        .expect("closed on the other replica within a second");
    assert_eq!((code, reason.as_str()), (4401, "device revoked"));
    let (_d, res) = sign_in(&c, &key).await;
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_logins_go_on_and_writes_are_unavailable_until_it_returns() {
    let mut nats = NatsServer::start();
    let (a, b) = tokio::join!(
        Replica::start(&nats, "a", ""),
        Replica::start(&nats, "b", "")
    );
    let key = DeviceKey::generate();
    let (_d, res) = sign_in(&a, &key).await;
    let rid = request_id(&res);
    let (status, _) = admin(&a, "POST", &format!("/api/pairing/{rid}/approve")).await;
    assert_eq!(status, 200);
    let (_s, res) = sign_in(&a, &key).await;
    let token = res["payload"]["auth"]["deviceToken"]
        .as_str()
        .unwrap()
        .to_string();
    sees_device(&b, &key.id(), 1).await;

    nats.stop();

    // Approved devices (by token and by signature) and Kubernetes workers go on.
    let res = token_in(&b, &token).await;
    assert_eq!(res["ok"], true, "{res}");
    let (_s, res) = sign_in(&b, &key).await;
    assert_eq!(res["ok"], true, "{res}");
    let (_w, _) = k8s_worker(&b).await;

    // A new device cannot file its request: UNAVAILABLE, retryable, with its reason.
    let newcomer = DeviceKey::generate();
    let (_n, res) = sign_in(&b, &newcomer).await;
    assert_eq!(res["error"]["code"], "UNAVAILABLE", "{res}");
    assert_eq!(res["error"]["retryable"], true, "{res}");
    assert_eq!(
        res["error"]["details"]["reason"], "pairing-store-unavailable",
        "{res}"
    );
    // Every `pairing-store-unavailable` says when to retry, whichever backend holds the state.
    assert!(res["error"]["retryAfterMs"].as_u64().is_some(), "{res}");

    // An explanation needs the approved devices: without NATS it fails, saying why, within
    // the configured bound (request_timeout_ms = 1000) rather than explaining from nothing.
    let started = Instant::now();
    let (ok, out) = explain_device(&b, &key).await;
    assert!(!ok, "{out}");
    assert!(out.contains("NATS did not answer within 1s"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "{out}");

    // While NATS is away each replica says so; the replicas reconnect on their own schedules
    // (a doubling pause of at most 2 s), so each is waited for by what it reports.
    for gw in [&a, &b] {
        eventually("the replica to report NATS lost", || async {
            (readyz(gw).await["cluster"]["connected"] == false).then_some(())
        })
        .await;
    }

    // NATS returns: the same request goes through, and nothing approved was lost.
    nats.resume();
    for gw in [&a, &b] {
        eventually("the replica to reach NATS again", || async {
            (readyz(gw).await["cluster"]["connected"] == true).then_some(())
        })
        .await;
    }
    let res = eventually("writes to work again", || async {
        let (_n, res) = sign_in(&b, &newcomer).await;
        (res["error"]["code"] == "NOT_PAIRED").then_some(res)
    })
    .await;
    let rid = request_id(&res);
    let (status, body) = admin(&a, "POST", &format!("/api/pairing/{rid}/approve")).await;
    assert_eq!(status, 200, "{body}");
    let fresh = Replica::start(&nats, "c", "").await;
    for k in [&key, &newcomer] {
        let (_s, res) = sign_in(&fresh, k).await;
        assert_eq!(res["payload"]["auth"]["pairing"], "paired", "{res}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_sessions_leave_the_registry_within_the_ttl() {
    let nats = NatsServer::start();
    let (a, mut b) = tokio::join!(
        Replica::start(&nats, "a", ""),
        Replica::start(&nats, "b", "")
    );
    let (_w, worker_id) = k8s_worker(&b).await;
    let mut op = operator(&a).await;
    workers_until(&mut op, "b's worker in a's list", |w| {
        w.iter()
            .any(|w| w["connId"] == json!(worker_id) && w["replica"] == "b")
    })
    .await;

    b.kill().await;
    let killed = Instant::now();
    workers_until(&mut op, "b's worker to leave a's list", |w| {
        !w.iter().any(|w| w["connId"] == json!(worker_id))
    })
    .await;
    let gone_after = killed.elapsed();
    // The bound: the TTL after the last heartbeat, which came at most a heartbeat before the
    // kill (and a little for the listing itself).
    assert!(
        gone_after <= Duration::from_millis(SESSION_TTL_MS + HEARTBEAT_MS + 1_000),
        "a killed replica's sessions must leave within session_ttl_ms; took {gone_after:?}"
    );
    assert!(
        gone_after >= Duration::from_millis(SESSION_TTL_MS - HEARTBEAT_MS - 100),
        "gone before the TTL: the sessions must have been dropped for another reason ({gone_after:?})"
    );
}
