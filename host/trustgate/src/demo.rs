//! `trustgate demo` and `trustgate dev`: a local development cluster issuer (the test API
//! server's TokenReview/JWKS side), a gateway on the embedded default plus k8s-sa-trust, and a
//! scripted cast of workers, a denied intruder, a device and an automatic operator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::worker::{WorkerError, WorkerEvent, WorkerOptions};
use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use trustgate_devcluster::{ApiServer, TokenRequest};
use trustgate_gateway::config::{Config, DEFAULT_CONFIG};

/// The audience of the demo's tokens.
pub const AUDIENCE: &str = "trustgate";

/// Where the local issuer keeps its signing key.
pub fn issuer_key(dir: &Path) -> PathBuf {
    dir.join("issuer-key.pem")
}

/// The demo gateway configuration: the embedded default with k8s-sa-trust put first.
fn demo_config(state: &Path, kubeconfig: &Path) -> Result<Config> {
    let k8s = format!(
        r#"[[auth.plugins]]
builtin = "k8s-sa-trust"
[auth.plugins.config]
audiences = ["{AUDIENCE}"]
require_pod_binding = true
[[auth.plugins.config.allow]]
namespace = "workers"
service_account = "runner"
roles = ["worker"]
[[auth.plugins.config.allow]]
namespace = "ops"
service_account = "console"
roles = ["operator"]

"#
    );
    let Some(at) = DEFAULT_CONFIG.find("[[auth.plugins]]") else {
        bail!("the embedded default has no auth chain");
    };
    let text = format!(
        "{}{k8s}{}\n[kubernetes]\nkubeconfig = {:?}\n",
        &DEFAULT_CONFIG[..at],
        &DEFAULT_CONFIG[at..],
        kubeconfig.display().to_string()
    )
    .replace("127.0.0.1:7400", "127.0.0.1:0")
    .replace("127.0.0.1:7401", "127.0.0.1:0")
    .replace(
        "state_dir = \"trustgate-state\"",
        &format!("state_dir = {:?}", state.display().to_string()),
    )
    .replace("output = \"stdout\"", "output = \"off\"");
    Ok(Config::parse(&text, "<demo>", state)?)
}

struct Cast {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), WorkerError>>>,
}

fn spawn_worker(
    cast: &mut Cast,
    options: WorkerOptions,
    name: &str,
    events: &mpsc::UnboundedSender<(String, WorkerEvent)>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = events.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = forward.send((name.clone(), e));
        }
    });
    let stop = cast.stop.subscribe();
    cast.tasks
        .push(tokio::spawn(crate::worker::run(options, stop, Some(tx))));
}

fn metric_lines(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// A minimal operator client over the protocol.
struct Operator {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Operator {
    async fn connect(url: &str, token: &str) -> Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut op = Self { ws, next: 0 };
        let hello = op
            .call(
                "connect",
                json!({"minProtocol": 1, "maxProtocol": 1, "client": {"id": "demo-operator", "version": env!("CARGO_PKG_VERSION")},
                       "role": "operator", "auth": {"method": "k8s-sa-trust", "token": token}}),
            )
            .await?;
        if hello["ok"] != true {
            bail!("operator refused: {hello}");
        }
        Ok(op)
    }

    async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next += 1;
        let id = format!("op{}", self.next);
        self.ws
            .send(Message::text(
                json!({"type": "req", "id": id, "method": method, "params": params}).to_string(),
            ))
            .await?;
        while let Some(msg) = self.ws.next().await {
            if let Message::Text(t) = msg? {
                let v: Value = serde_json::from_str(&t)?;
                if v["type"] == "res" && v["id"] == id {
                    return Ok(v);
                }
            }
        }
        bail!("the gateway closed the operator's connection")
    }
}

/// Runs the demo; returns an error if any expected outcome did not happen.
pub async fn run(dir: &Path) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    println!("trustgate demo\n");
    let api = ApiServer::start_with("127.0.0.1:0".parse()?, Some(&issuer_key(dir))).await?;
    let kubeconfig = api.kubeconfig(tmp.path())?;
    println!(
        "  cluster issuer   {} (TokenReview, OIDC discovery, JWKS; key in {})",
        api.url(),
        issuer_key(dir).display()
    );
    let config = demo_config(tmp.path(), &kubeconfig)?;
    let gw = trustgate_gateway::start(&config).await?;
    let url = format!("ws://{}", gw.ws_addr);
    let admin = format!("http://{}", gw.admin_addr);
    println!(
        "  gateway          {url} (admin {admin}); chain: k8s-sa-trust → allowlist (embedded default)\n"
    );
    let before = metric_lines(
        &reqwest::get(format!("{admin}/metrics"))
            .await?
            .text()
            .await?,
    );

    let (events_tx, mut events) = mpsc::unbounded_channel::<(String, WorkerEvent)>();
    let (stop, _) = watch::channel(false);
    let mut cast = Cast {
        stop,
        tasks: Vec::new(),
    };
    let fast = |mut o: WorkerOptions| {
        o.backoff_base = Duration::from_millis(50);
        o.backoff_max = Duration::from_millis(500);
        o
    };
    let mut expected = Vec::new();
    for i in 1..=3 {
        let (token, claims) = api.token(&TokenRequest::new("workers", "runner", AUDIENCE))?;
        let path = tmp.path().join(format!("worker-{i}.token"));
        std::fs::write(&path, token)?;
        let mut o = fast(WorkerOptions::new(&url));
        o.k8s_trust = true;
        o.token_path = path;
        o.instance_id = claims.kubernetes.pod.map(|p| p.name);
        let name = format!("k8s worker {i}");
        spawn_worker(&mut cast, o, &name, &events_tx);
        expected.push(name);
    }
    let (intruder, _) = api.token(&TokenRequest::new("intruders", "runner", AUDIENCE))?;
    let intruder_path = tmp.path().join("intruder.token");
    std::fs::write(&intruder_path, intruder)?;
    let mut o = fast(WorkerOptions::new(&url));
    o.k8s_trust = true;
    o.token_path = intruder_path;
    spawn_worker(&mut cast, o, "intruder (namespace intruders)", &events_tx);
    let mut o = fast(WorkerOptions::new(&url));
    o.device_key = Some(tmp.path().join("device.key"));
    o.client_id = "laptop".into();
    spawn_worker(&mut cast, o, "device worker", &events_tx);
    expected.push("device worker".into());

    let (ops_token, _) = api.token(&TokenRequest::new("ops", "console", AUDIENCE))?;
    let mut operator = Operator::connect(&url, &ops_token)
        .await
        .context("the automatic operator")?;
    println!(
        "  {:<32} connected as operator (system:serviceaccount:ops:console)",
        "automatic operator"
    );

    let mut connected = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while connected.len() < expected.len() {
        let next = tokio::time::timeout_at(deadline, events.recv()).await;
        let Ok(Some((name, event))) = next else {
            bail!(
                "timed out: connected so far {:?}",
                connected.keys().collect::<Vec<_>>()
            );
        };
        match event {
            WorkerEvent::Connected(h) => {
                println!(
                    "  {name:<32} connected: {} as {}, pairing {:?}{}",
                    h.auth.subject,
                    h.auth.role.as_str(),
                    h.auth.pairing,
                    h.auth
                        .expires_at_ms
                        .map(|e| format!(
                            ", expires in {} s",
                            e.saturating_sub(trustgate_protocol::now_ms()) / 1000
                        ))
                        .unwrap_or_default()
                );
                connected.insert(name, h.server.conn_id);
            }
            WorkerEvent::AwaitingApproval { request_id } => {
                println!(
                    "  {name:<32} NOT_PAIRED: pairing request {request_id}; the operator approves it"
                );
                let res = operator
                    .call("pairing.approve", json!({"requestId": request_id}))
                    .await?;
                if res["ok"] != true {
                    bail!("approval failed: {res}");
                }
            }
            WorkerEvent::Retrying { error, .. } => println!("  {name:<32} retrying: {error}"),
            other => println!("  {name:<32} {other:?}"),
        }
    }
    let device_conn = connected.get("device worker").cloned().unwrap_or_default();
    let echo = operator
        .call("worker.invoke", json!({"workerId": device_conn, "command": "echo", "args": {"hello": "from the operator"}}))
        .await?;
    println!(
        "  {:<32} worker.invoke echo → {}",
        "automatic operator", echo["payload"]["result"]
    );
    let workers = operator.call("workers.list", json!({})).await?;
    let n = workers["payload"]["workers"].as_array().map_or(0, Vec::len);

    // The intruder's worker gives up: its refusal is not retryable.
    let intruder_task = cast.tasks.remove(3);
    match tokio::time::timeout(Duration::from_secs(10), intruder_task).await {
        Ok(Ok(Err(e))) => println!("  {:<32} refused: {e}", "intruder (namespace intruders)"),
        other => bail!("the intruder was not refused: {other:?}"),
    }

    let after = metric_lines(
        &reqwest::get(format!("{admin}/metrics"))
            .await?
            .text()
            .await?,
    );
    println!("\nmetrics that changed:");
    for (series, value) in &after {
        let was = before.get(series).copied().unwrap_or(0.0);
        if (value - was).abs() > f64::EPSILON
            && !series.contains("_bucket")
            && !series.contains("_sum")
        {
            println!("  {series} {was} → {value}");
        }
    }
    println!(
        "\nsummary: {n} workers connected (3 via ServiceAccount tokens with pairing skipped, 1 paired device), 1 intruder refused, {} TokenReviews for 5 tokens",
        api.token_reviews()
    );
    let _ = cast.stop.send(true);
    for t in cast.tasks {
        let _ = t.await;
    }
    gw.shutdown().await;
    if n != 4 {
        bail!("expected 4 connected workers, saw {n}");
    }
    Ok(())
}

/// `trustgate dev token`: mints a token from the local issuer.
/// The pod a `dev token` is bound to; every field has a default.
#[derive(Debug, Clone, Default)]
pub struct PodBinding {
    /// The pod's name (default: `<service-account>-<random>`).
    pub pod: Option<String>,
    /// The pod's UID (default: made up for that name).
    pub pod_uid: Option<String>,
    /// The node it runs on.
    pub node: String,
}

pub fn token(
    dir: &Path,
    namespace: &str,
    service_account: &str,
    audience: &str,
    ttl: u64,
    binding: PodBinding,
) -> Result<String> {
    let mut request = TokenRequest::new(namespace, service_account, audience);
    request.expiration_seconds = ttl;
    if let Some(pod) = binding.pod {
        request.pod = Some(pod);
    }
    request.pod_uid = binding.pod_uid;
    if !binding.node.is_empty() {
        request.node = Some(binding.node);
    }
    let (token, _) = trustgate_devcluster::mint_offline(&issuer_key(dir), &request)?;
    Ok(token)
}

/// `trustgate dev cluster`: runs the local issuer until interrupted.
pub async fn cluster(dir: &Path, listen: std::net::SocketAddr) -> Result<()> {
    let api = ApiServer::start_with(listen, Some(&issuer_key(dir))).await?;
    std::fs::create_dir_all(dir)?;
    let kubeconfig = api.kubeconfig(dir)?;
    println!(
        "local cluster issuer at {} (TokenReview, /.well-known/openid-configuration, /openid/v1/jwks)",
        api.url()
    );
    println!("kubeconfig: {}", kubeconfig.display());
    println!(
        "add to the gateway config:  [kubernetes]  kubeconfig = {:?}",
        kubeconfig.display().to_string()
    );
    println!(
        "mint tokens:  trustgate dev token --dir {} --namespace NS --service-account SA",
        dir.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
