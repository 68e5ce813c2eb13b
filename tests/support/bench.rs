//! Benchmark scenarios, shared by the `bench` binary (full runs written to BENCHMARKS.md) and
//! the smoke tests (tiny runs in the test command that assert correctness, never speed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::json;
use trustgate_devcluster::{ApiServer, TokenRequest};
use trustgate_k8s::{CacheMode, Kubernetes, Settings};
use trustgate_runtime::{
    AuthProvider, CachePolicy, Call, Chain, Decision, Denial, DenyCode, Grants, Identity,
    Narrowing, Outcome, PluginFailure, PluginSource, PluginSpec, Request, Runtime, RuntimeSettings,
};

use crate::client::{WsClient, connect_params};

/// `[limits]` keys for storms of clients that all connect from 127.0.0.1: the per-address
/// pre-auth budget and failed-handshake bucket exist to stop one hostile address, and a
/// benchmark's honest clients would all share one. Put under a `[limits]` header.
pub const LOOPBACK_STORM_LIMITS: &str = "max_connections = 100000\nmax_unauthenticated_per_address = 2048\nfailed_handshake_burst = 100000\n";

/// The audience every scenario uses.
pub const AUDIENCE: &str = "trustgate";

/// k8s-sa-trust's configuration in every scenario.
pub fn k8s_config(mode: &str) -> serde_json::Value {
    json!({
        "mode": mode,
        "audiences": [AUDIENCE],
        "require_pod_binding": true,
        "allow": [{"namespace": "workers", "service_account": "runner", "roles": ["worker"]}],
    })
}

/// The allowlist's configuration in every scenario (admits the k8s identity).
pub fn allowlist_config() -> serde_json::Value {
    json!({"rules": [
        {"effect": "deny", "cidr": "192.0.2.0/24"},
        {"namespace": "work*", "roles": ["worker"]},
    ]})
}

/// The gateway TOML of the two-plugin chain.
pub fn chain_toml(mode: &str) -> String {
    format!(
        r#"[[auth.plugins]]
builtin = "k8s-sa-trust"
[auth.plugins.config]
mode = "{mode}"
audiences = ["{AUDIENCE}"]
require_pod_binding = true
[[auth.plugins.config.allow]]
namespace = "workers"
service_account = "runner"
roles = ["worker"]

[[auth.plugins]]
builtin = "allowlist"
[[auth.plugins.config.rules]]
effect = "deny"
cidr = "192.0.2.0/24"
[[auth.plugins.config.rules]]
namespace = "work*"
roles = ["worker"]
"#
    )
}

// ---------------------------------------------------------------------------------------
// The native baseline: the same two policies compiled into the host, behind the same trait.

/// k8s-sa-trust, natively.
pub struct NativeK8sTrust {
    kube: Arc<Kubernetes>,
    audiences: Vec<String>,
}

/// allowlist (the two rules of [`allowlist_config`]), natively.
pub struct NativeAllowlist;

fn forbidden(reason: &str) -> Decision {
    Decision::Deny(Denial {
        code: DenyCode::Forbidden,
        reason: reason.into(),
        message: String::new(),
        retry_after_ms: None,
    })
}

fn glob(p: &str, s: &str) -> bool {
    match p.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => p == s,
    }
}

#[async_trait]
impl AuthProvider for NativeK8sTrust {
    fn name(&self) -> &str {
        "k8s-sa-trust"
    }

    async fn authenticate(&self, call: &Call) -> Result<Decision, PluginFailure> {
        let request = &call.request;
        if request.credentials.method != "k8s-sa-trust" {
            return Ok(Decision::Abstain);
        }
        let Some(token) = &request.credentials.token else {
            return Ok(forbidden("token-missing"));
        };
        let mode = match call.cache {
            CachePolicy::Use => CacheMode::Use,
            CachePolicy::Bypass => CacheMode::Bypass,
        };
        let Ok((o, _)) = self.kube.review(token, &self.audiences, mode).await else {
            return Ok(forbidden("review-unavailable"));
        };
        if !o.authenticated || !o.audiences.iter().any(|a| self.audiences.contains(a)) {
            return Ok(forbidden("token-rejected"));
        }
        let Some((ns, sa)) = o
            .username
            .strip_prefix("system:serviceaccount:")
            .and_then(|r| r.split_once(':'))
        else {
            return Ok(forbidden("not-a-service-account"));
        };
        let pod_uid = o.extra.get("authentication.kubernetes.io/pod-uid");
        let pod_name = o.extra.get("authentication.kubernetes.io/pod-name");
        if pod_uid.is_none() || pod_name.is_none() {
            return Ok(forbidden("pod-binding-required"));
        }
        if ns != "workers" || sa != "runner" || request.role != "worker" {
            return Ok(forbidden("not-allowed"));
        }
        let mut attributes = vec![
            ("namespace".to_string(), ns.to_string()),
            ("service-account".to_string(), sa.to_string()),
            ("service-account-uid".to_string(), o.uid.clone()),
        ];
        for (k, v) in [("pod-name", pod_name), ("pod-uid", pod_uid)] {
            if let Some(v) = v.and_then(|v| v.first()) {
                attributes.push((k.to_string(), v.clone()));
            }
        }
        Ok(Decision::Allow(Identity {
            subject: o.username.clone(),
            method: "k8s-sa-trust".into(),
            groups: o.groups.clone(),
            attributes,
            roles: vec!["worker".into()],
            scopes: vec![],
            expires_at_ms: o.expires_at_ms,
            skip_pairing: true,
        }))
    }
}

#[async_trait]
impl AuthProvider for NativeAllowlist {
    fn name(&self) -> &str {
        "allowlist"
    }

    async fn authenticate(&self, call: &Call) -> Result<Decision, PluginFailure> {
        let request = &call.request;
        let ip: Option<std::net::IpAddr> = request
            .peer
            .remote_addr
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip());
        if let Some(std::net::IpAddr::V4(v4)) = ip
            && v4.octets()[..3] == [192, 0, 2]
        {
            return Ok(forbidden("denied-by-rule"));
        }
        let Some(id) = &call.so_far else {
            return Ok(Decision::Abstain);
        };
        let ns = id
            .attributes
            .iter()
            .find(|(k, _)| k == "namespace")
            .map(|(_, v)| v.as_str());
        if ns.is_some_and(|ns| glob("work*", ns)) && request.role == "worker" {
            Ok(Decision::Permit(Narrowing::default()))
        } else {
            Ok(forbidden("not-allowlisted"))
        }
    }
}

// ---------------------------------------------------------------------------------------

/// A test cluster and a Kubernetes client for it.
pub struct Cluster {
    /// The API server.
    pub api: ApiServer,
    /// Its kubeconfig's directory.
    pub dir: tempfile::TempDir,
    /// A kubeconfig path.
    pub kubeconfig: std::path::PathBuf,
}

impl Cluster {
    /// Starts an API server.
    pub async fn start() -> Self {
        let api = ApiServer::start().await.expect("api server");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = api.kubeconfig(dir.path()).expect("kubeconfig");
        Self {
            api,
            dir,
            kubeconfig,
        }
    }

    /// A connected client with a long review cache.
    pub async fn kube(&self) -> Arc<Kubernetes> {
        Arc::new(
            Kubernetes::connect(Settings {
                kubeconfig: Some(self.kubeconfig.clone()),
                review_cache_ttl_ms: 3_600_000,
                ..Settings::default()
            })
            .await
            .expect("kube client"),
        )
    }

    /// A pod-bound worker token.
    pub fn token(&self) -> String {
        self.api
            .token(&TokenRequest::new("workers", "runner", AUDIENCE))
            .expect("token")
            .0
    }
}

/// A worker request carrying `token`.
pub fn worker_request(token: &str) -> Arc<Request> {
    let mut r = crate::request("k8s-sa-trust", Some(token));
    Arc::make_mut(&mut r).peer.remote_addr = "10.0.0.7:41000".into();
    r
}

/// The WASM chain [k8s-sa-trust, allowlist] on a runtime whose host services are `kube`.
pub async fn wasm_chain(kube: Arc<Kubernetes>, mode: &str) -> (Chain, Runtime) {
    let rt = Runtime::new(
        RuntimeSettings::default(),
        Arc::new(trustgate_gateway::KubeServices(kube)),
    )
    .expect("runtime");
    let specs = [
        PluginSpec {
            name: "k8s-sa-trust".into(),
            source: builtin("k8s-sa-trust"),
            config: k8s_config(mode),
            grants: Grants::default(),
        },
        PluginSpec {
            name: "allowlist".into(),
            source: builtin("allowlist"),
            config: allowlist_config(),
            grants: Grants::default(),
        },
    ];
    let (chain, _) = rt.load_chain(&specs).await.expect("chain");
    (chain, rt)
}

/// A first-party plugin's component, as the gateway's `builtin = "NAME"` loads it.
pub fn builtin(name: &str) -> PluginSource {
    PluginSource::bytes(
        format!("built-in plugin `{name}`"),
        trustgate_builtins::builtin(name).expect("a first-party plugin"),
    )
}

/// The same chain, the same plugin sources, built against an earlier contract (`0.2`, `0.1`).
pub async fn wasm_chain_legacy(
    kube: Arc<Kubernetes>,
    mode: &str,
    contract: &str,
) -> (Chain, Runtime) {
    let rt = Runtime::new(
        RuntimeSettings::default(),
        Arc::new(trustgate_gateway::KubeServices(kube)),
    )
    .expect("runtime");
    let (k8s, allowlist) = match contract {
        "0.2" => (
            crate::guests::TRUSTGATE_K8S_SA_TRUST_V0_2,
            crate::guests::TRUSTGATE_ALLOWLIST_V0_2,
        ),
        _ => (
            crate::guests::TRUSTGATE_K8S_SA_TRUST_V0_1,
            crate::guests::TRUSTGATE_ALLOWLIST_V0_1,
        ),
    };
    let specs = [
        crate::spec("k8s-sa-trust", k8s, k8s_config(mode)),
        crate::spec("allowlist", allowlist, allowlist_config()),
    ];
    let (chain, _) = rt.load_chain(&specs).await.expect("chain");
    (chain, rt)
}

/// The native chain.
pub fn native_chain(kube: Arc<Kubernetes>) -> Chain {
    Chain::new(vec![
        Arc::new(NativeK8sTrust {
            kube,
            audiences: vec![AUDIENCE.into()],
        }),
        Arc::new(NativeAllowlist),
    ])
}

/// Result of the decision-cost benchmark for one chain.
#[derive(Debug, Clone)]
pub struct DecisionReport {
    /// Median ns per decision, single-threaded.
    pub median_ns: f64,
    /// Decisions per second with all cores.
    pub per_second_all_cores: f64,
    /// Decisions made in total (all allowed).
    pub decisions: u64,
}

fn allowed(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Allowed(id) if id.subject == "system:serviceaccount:workers:runner")
}

/// Single-threaded: `batches` batches of `batch` decisions, median per-decision time.
pub async fn decision_single(
    chain: &Chain,
    request: &Arc<Request>,
    batches: usize,
    batch: usize,
) -> (f64, u64) {
    let mut per = Vec::with_capacity(batches);
    let mut n = 0;
    for _ in 0..batches {
        let started = Instant::now();
        for _ in 0..batch {
            let v = chain.evaluate(request, None, CachePolicy::Use).await;
            assert!(allowed(&v.outcome), "{:?}", v.outcome);
            n += 1;
        }
        per.push(started.elapsed().as_nanos() as f64 / batch as f64);
    }
    per.sort_by(|a, b| a.total_cmp(b));
    (per[per.len() / 2], n)
}

/// All cores: `tasks` concurrent tasks each making `each` decisions; decisions per second.
pub async fn decision_parallel(
    chain: Arc<Chain>,
    request: Arc<Request>,
    tasks: usize,
    each: usize,
) -> (f64, u64) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (chain, request) = (chain.clone(), request.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..each {
                let v = chain.evaluate(&request, None, CachePolicy::Use).await;
                assert!(allowed(&v.outcome), "{:?}", v.outcome);
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
    let n = (tasks * each) as u64;
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

/// Handshake benchmark result.
#[derive(Debug, Clone)]
pub struct HandshakeReport {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Per second.
    pub per_second: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every handshake's latency, sorted.
    pub latencies: Vec<Duration>,
}

impl HandshakeReport {
    fn from_run(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort();
        let n = latencies.len();
        Self {
            handshakes: n as u64,
            per_second: n as f64 / elapsed.as_secs_f64(),
            p50: latencies[n / 2],
            p99: latencies[(n * 99 / 100).min(n - 1)],
            elapsed,
            latencies,
        }
    }

    /// Several runs as one: handshakes over their summed wall time, quantiles of all.
    pub fn merge(runs: &[HandshakeReport]) -> Self {
        let latencies = runs
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect();
        Self::from_run(latencies, runs.iter().map(|r| r.elapsed).sum())
    }
}

/// `clients` concurrent clients doing connect → hello-ok → close until `total` handshakes.
pub async fn handshakes(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: &str,
    clients: usize,
    total: usize,
) -> HandshakeReport {
    let auth = json!({"method": "k8s-sa-trust", "token": token});
    handshakes_with(url, tls, &auth, clients, total).await
}

/// Like [`handshakes`], presenting `auth` (e.g. a device token).
pub async fn handshakes_with(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    auth: &serde_json::Value,
    clients: usize,
    total: usize,
) -> HandshakeReport {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (url, tls, auth, next) = (url.to_string(), tls.clone(), auth.clone(), next.clone());
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let t = Instant::now();
                let mut c = WsClient::open_with(&url, tls.clone()).await;
                let res = c
                    .connect(connect_params("worker", Some(auth.clone()), None))
                    .await;
                assert_eq!(res["ok"], true, "{res}");
                latencies.push(t.elapsed());
                c.close().await;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("client"));
    }
    HandshakeReport::from_run(all, started.elapsed())
}

/// Join-storm result.
#[derive(Debug, Clone)]
pub struct StormReport {
    /// Workers connected.
    pub connected: usize,
    /// Time until all were connected.
    pub elapsed: Duration,
    /// TokenReview calls the API server received.
    pub reviews: u64,
    /// Key-set fetches.
    pub jwks_fetches: u64,
}

/// `workers` connect at once with `tokens` distinct tokens; returns once all are connected
/// (their connections stay open until the returned clients are dropped).
pub async fn join_storm(url: &str, tokens: &[String], workers: usize) -> (Duration, Vec<WsClient>) {
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..workers {
        let (url, token) = (url.to_string(), tokens[i % tokens.len()].clone());
        handles.push(tokio::spawn(async move {
            // As a real worker does: a retryable refusal (a plugin at its instance cap on a
            // loaded machine) is retried after `retryAfterMs`.
            loop {
                let mut c = WsClient::open(&url).await;
                let res = c
                    .connect(connect_params(
                        "worker",
                        Some(json!({"method": "k8s-sa-trust", "token": token})),
                        None,
                    ))
                    .await;
                if res["ok"] == true {
                    return c;
                }
                assert_eq!(res["error"]["retryable"], true, "{res}");
                let after = res["error"]["retryAfterMs"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(after)).await;
            }
        }));
    }
    let mut clients = Vec::new();
    for h in handles {
        clients.push(h.await.expect("worker"));
    }
    (started.elapsed(), clients)
}

/// Plugin load result for one plugin.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Built-in name.
    pub plugin: String,
    /// Component size.
    pub size: usize,
    /// Cold compile (cache miss) time.
    pub cold: Duration,
    /// Cached load time (best of `runs`).
    pub cached: Duration,
}

/// Cold compile and cached load of a built-in plugin (median of `runs` cached loads).
pub fn plugin_load(name: &str, runs: usize) -> LoadReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = trustgate_builtins::builtin(name).expect("builtin");
    let options = RuntimeSettings {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeSettings::default()
    };
    let services: Arc<dyn trustgate_runtime::HostServices> =
        Arc::new(trustgate_runtime::NoServices::default());
    let rt = Runtime::new(options.clone(), services.clone()).expect("runtime");
    let t = Instant::now();
    let c = rt.compile(name, bytes).expect("compile");
    let cold = t.elapsed();
    assert_eq!(c.cache(), trustgate_runtime::CacheOutcome::Miss);
    let mut cached = Vec::new();
    for _ in 0..runs {
        let rt = Runtime::new(options.clone(), services.clone()).expect("runtime");
        let t = Instant::now();
        let c = rt.compile(name, bytes).expect("load");
        cached.push(t.elapsed());
        assert_eq!(c.cache(), trustgate_runtime::CacheOutcome::Hit);
    }
    cached.sort();
    LoadReport {
        plugin: name.into(),
        size: bytes.len(),
        cold,
        cached: cached[cached.len() / 2],
    }
}

/// Resident set size of a process, in KiB (Linux `/proc`).
pub fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process, in clock ticks (Linux `/proc`).
pub fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the ")" of the command name: utime is the 12th, stime the 13th
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

// === Policies in other languages ===

/// What one policy costs: its load, its memory, its calls.
#[derive(Debug)]
pub struct PolicyReport {
    /// Component size in bytes.
    pub size: usize,
    /// Compiling it with no cache.
    pub cold: Duration,
    /// Loading it from a warm on-disk cache in a fresh runtime: compile-cache hit,
    /// instantiation and `configure` (median).
    pub cached_load: Duration,
    /// Linear memory of one configured instance after a call, in bytes.
    pub memory: usize,
    /// One `authenticate` call (median of batches), in nanoseconds.
    pub per_call_ns: f64,
    /// Calls made.
    pub calls: u64,
}

/// The request every policy row decides on: a worker from the cluster network, with a
/// ServiceAccount of `prod-a` established by an earlier plugin. Every example policy lets it
/// through (a `permit`), after evaluating all its conditions.
pub fn policy_call() -> Call {
    let request = Arc::new(Request {
        peer: trustgate_runtime::Peer {
            remote_addr: "10.1.2.3:40000".into(),
            tls: true,
            client_id: "bench".into(),
            client_version: "1.0.0".into(),
            conn_id: "c-bench".into(),
            ..Default::default()
        },
        role: "worker".into(),
        ..worker_request("unused").as_ref().clone()
    });
    let identity = Identity {
        subject: "system:serviceaccount:prod-a:runner".into(),
        method: "k8s-sa-trust".into(),
        groups: vec!["system:serviceaccounts".into()],
        attributes: vec![
            ("namespace".into(), "prod-a".into()),
            ("service-account".into(), "runner".into()),
        ],
        roles: vec!["worker".into()],
        scopes: vec![],
        expires_at_ms: None,
        skip_pairing: true,
    };
    Call {
        request,
        so_far: Some(Arc::new(identity)),
        cache: CachePolicy::Use,
        witness: Default::default(),
    }
}

/// Measures a policy component with its configuration: cold compile, cached load
/// (`loads` fresh runtimes), memory per instance, and `batches` × `batch` calls.
pub async fn policy_costs(
    name: &str,
    bytes: &[u8],
    config: serde_json::Value,
    loads: usize,
    batches: usize,
    batch: usize,
) -> PolicyReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = RuntimeSettings {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeSettings::default()
    };
    let services: Arc<dyn trustgate_runtime::HostServices> =
        Arc::new(trustgate_runtime::NoServices::default());
    let t = Instant::now();
    let compiled = Runtime::new(settings.clone(), services.clone())
        .expect("runtime")
        .compile(name, bytes)
        .expect("compile");
    let cold = t.elapsed();
    assert_eq!(compiled.cache(), trustgate_runtime::CacheOutcome::Miss);
    let spec = PluginSpec {
        name: name.into(),
        source: PluginSource::bytes(name.to_string(), bytes.to_vec()),
        config,
        grants: Grants::default(),
    };
    let mut times = Vec::with_capacity(loads);
    let mut last = None;
    for _ in 0..loads.max(1) {
        let rt = Runtime::new(settings.clone(), services.clone()).expect("runtime");
        let t = Instant::now();
        let plugin = rt.load(&spec).await.expect("load");
        times.push(t.elapsed());
        last = Some(plugin);
    }
    times.sort();
    let plugin = last.expect("one load");
    let call = policy_call();
    let decision = plugin.authenticate(&call).await;
    assert!(
        matches!(decision, Ok(Decision::Permit(_))),
        "{name} must let the benchmark request through: {decision:?}"
    );
    let memory = plugin.runtime_memory_bytes();
    let mut per = Vec::with_capacity(batches);
    let mut calls = 1;
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..batch {
            let d = plugin.authenticate(&call).await;
            assert!(matches!(d, Ok(Decision::Permit(_))), "{name}: {d:?}");
            calls += 1;
        }
        per.push(t.elapsed().as_nanos() as f64 / batch as f64);
    }
    per.sort_by(|a, b| a.total_cmp(b));
    PolicyReport {
        size: bytes.len(),
        cold,
        cached_load: times[times.len() / 2],
        memory,
        per_call_ns: per[per.len() / 2],
        calls,
    }
}

/// Each language's floor: an empty policy (it only answers `permit`) in CEL, Python and
/// JavaScript, measured like the examples: (language, component, configuration).
pub fn floor_policies() -> Vec<(&'static str, Vec<u8>, serde_json::Value)> {
    let floors = crate::policies::root().join("tests/floors");
    let python = crate::policies::python("floor-python", &floors.join("python-empty"), "app");
    let js = crate::policies::javascript("floor-js", &floors.join("js-empty"), "app.js");
    vec![
        (
            "CEL",
            trustgate_builtins::builtin("cel").expect("cel").to_vec(),
            json!({"rules": [{"allow": "true"}]}),
        ),
        (
            "Python",
            std::fs::read(python).expect("python floor"),
            json!({}),
        ),
        (
            "JavaScript",
            std::fs::read(js).expect("js floor"),
            json!({}),
        ),
    ]
}

/// The example policies (`plugins/examples/`) with configurations that let [`policy_call`]
/// through, and the allowlist built-in as the Rust reference: (row name, component,
/// configuration). Builds the Python and JavaScript components if needed.
pub fn example_policies() -> Vec<(&'static str, Vec<u8>, serde_json::Value)> {
    let root = crate::policies::root();
    let examples = root.join("plugins/examples");
    let cel_config: toml::Table = toml::from_str(
        &std::fs::read_to_string(examples.join("cel-rules/config.toml")).expect("cel config"),
    )
    .expect("cel config TOML");
    let cel_config = serde_json::to_value(cel_config).expect("cel config as JSON");
    let python =
        crate::policies::python("office-hours-py", &examples.join("office-hours-py"), "app");
    let js = crate::policies::javascript(
        "namespace-cidr-js",
        &examples.join("namespace-cidr-js"),
        "app.js",
    );
    vec![
        (
            "Rust: allowlist built-in (2 rules)",
            trustgate_builtins::builtin("allowlist")
                .expect("allowlist")
                .to_vec(),
            json!({"rules": [
                {"effect": "deny", "cidr": "192.0.2.0/24"},
                {"namespace": "prod-*", "roles": ["worker"]},
            ]}),
        ),
        (
            "CEL: cel built-in, 5 rules (plugins/examples/cel-rules)",
            trustgate_builtins::builtin("cel").expect("cel").to_vec(),
            cel_config,
        ),
        (
            "Python: office-hours-py",
            std::fs::read(python).expect("python component"),
            json!({"from_hour": 0, "to_hour": 23}),
        ),
        (
            "JavaScript: namespace-cidr-js",
            std::fs::read(js).expect("js component"),
            json!({"namespaces": ["prod-*"], "cidrs": ["10.0.0.0/8"]}),
        ),
    ]
}

// === The cost a running gateway pays ===

/// Per-plugin time of one chain as the audit trace records it (medians, µs): in a hot loop in
/// process, over real handshakes back to back, and over real handshakes one every `gap`.
#[derive(Debug, Clone)]
pub struct TraceReport {
    /// The chain's plugins, in order.
    pub plugins: Vec<String>,
    /// The chain evaluated in a loop, in process (the steps' times).
    pub hot: Vec<f64>,
    /// Handshakes back to back over loopback (the audit trace).
    pub back_to_back: Vec<f64>,
    /// One handshake every `gap` (the audit trace).
    pub sporadic: Vec<f64>,
}

/// The TOML of a chain [k8s-sa-trust, `policy`] admitting `prod-a/runner` workers by
/// TokenReview, `policy` being a built-in's `[[auth.plugins]]` entry.
pub fn trace_chain(policy: &str) -> String {
    format!(
        r#"[[auth.plugins]]
builtin = "k8s-sa-trust"
[auth.plugins.config]
mode = "tokenreview"
audiences = ["{AUDIENCE}"]
require_pod_binding = true
[[auth.plugins.config.allow]]
namespace = "prod-*"
service_account = "runner"
roles = ["worker"]

{policy}"#
    )
}

/// A worker token of `prod-a/runner`, which [`trace_chain`] admits.
pub fn prod_token(cluster: &Cluster) -> String {
    cluster
        .api
        .token(&TokenRequest::new("prod-a", "runner", AUDIENCE))
        .expect("token")
        .0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per-plugin medians of the traces in the audit lines `lines` (each a connect allowed).
fn trace_medians(lines: &[String], plugins: usize) -> Vec<f64> {
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); plugins];
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line).expect("audit line");
        assert_eq!(record["decision"], "allow", "{record}");
        let trace = record["trace"].as_array().expect("trace");
        assert_eq!(trace.len(), plugins, "{record}");
        for (i, step) in trace.iter().enumerate() {
            per[i].push(step["us"].as_f64().expect("us"));
        }
    }
    per.into_iter().map(median).collect()
}

/// One handshake (connect → hello-ok → close) presenting `token`.
async fn one_handshake(url: &str, token: &str) {
    let mut c = WsClient::open(url).await;
    let auth = json!({"method": "k8s-sa-trust", "token": token});
    let res = c.connect(connect_params("worker", Some(auth), None)).await;
    assert_eq!(res["ok"], true, "{res}");
    c.close().await;
}

/// Measures [`TraceReport`] for `chain` (see [`trace_chain`]) on a gateway reviewing through
/// `cluster`: `hot` in-process evaluations, `back_to_back` handshakes, then `sporadic`
/// handshakes `gap` apart.
pub async fn trace_costs(
    cluster: &Cluster,
    chain: &str,
    hot: usize,
    back_to_back: usize,
    sporadic: usize,
    gap: Duration,
) -> TraceReport {
    trace_costs_of(cluster, chain, false, hot, back_to_back, sporadic, gap).await
}

/// [`trace_costs`] of the native chain ([`native_chain`], admitting `workers/runner`), swapped
/// into the same kind of running gateway: the floor of each pattern on this machine.
pub async fn native_trace_costs(
    cluster: &Cluster,
    hot: usize,
    back_to_back: usize,
    sporadic: usize,
    gap: Duration,
) -> TraceReport {
    let chain = trace_chain("");
    trace_costs_of(cluster, &chain, true, hot, back_to_back, sporadic, gap).await
}

async fn trace_costs_of(
    cluster: &Cluster,
    chain: &str,
    native: bool,
    hot: usize,
    back_to_back: usize,
    sporadic: usize,
    gap: Duration,
) -> TraceReport {
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let sections = format!(
        "[kubernetes]\nkubeconfig = {:?}\nreview_cache_ttl_ms = 3600000\n[audit]\noutput = {:?}\n[limits]\n{LOOPBACK_STORM_LIMITS}",
        cluster.kubeconfig.display().to_string(),
        audit.display().to_string(),
    );
    let gw = crate::gateway(&sections, chain).await;
    let token = if native {
        let kube = gw.running.kubernetes.clone().expect("kubernetes");
        gw.running.state.swap_chain(trustgate_gateway::LoadedChain {
            chain: Arc::new(native_chain(kube)),
            plugins: Vec::new(),
        });
        cluster.token()
    } else {
        prod_token(cluster)
    };
    let url = gw.url();
    // Warm the review cache and the instance pools.
    for _ in 0..50 {
        one_handshake(&url, &token).await;
    }
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&audit)
            .expect("audit log")
            .lines()
            .map(str::to_string)
            .collect()
    };

    let loaded = gw.running.state.chain();
    let plugins: Vec<String> = loaded
        .providers()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let mut request = worker_request(&token);
    Arc::make_mut(&mut request).peer.remote_addr = "127.0.0.1:40000".into();
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); plugins.len()];
    for _ in 0..hot {
        let v = loaded.evaluate(&request, None, CachePolicy::Use).await;
        assert!(matches!(v.outcome, Outcome::Allowed(_)), "{:?}", v.outcome);
        for (i, s) in v.steps.iter().enumerate() {
            per[i].push(s.elapsed.as_nanos() as f64 / 1000.0);
        }
    }
    let hot = per.into_iter().map(median).collect();

    let before = lines().len();
    for _ in 0..back_to_back {
        one_handshake(&url, &token).await;
    }
    let after = lines();
    let back_to_back = trace_medians(&after[before..], plugins.len());

    let before = after.len();
    for _ in 0..sporadic {
        // The pattern under test: a gateway that sees a handshake now and then.
        tokio::time::sleep(gap).await;
        one_handshake(&url, &token).await;
    }
    let sporadic = trace_medians(&lines()[before..], plugins.len());
    gw.running.shutdown().await;
    TraceReport {
        plugins,
        hot,
        back_to_back,
        sporadic,
    }
}
