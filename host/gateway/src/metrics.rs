//! Prometheus metrics, served on the admin listener at `/metrics`. No label carries a token, a
//! key or an unbounded value: plugin names come from the operator's configuration, codes and
//! causes from closed sets, and auth methods are capped (anything past the first few distinct
//! values is reported as `other`).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use trustgate_k8s::Kubernetes;
use trustgate_runtime::{Step, StepKind, WasmPlugin};

type Labels = Vec<(String, String)>;

const MAX_METHODS: usize = 16;

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ]
    .into_iter()
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    auth_decisions: Family<Labels, Counter>,
    handshakes: Family<Labels, Counter>,
    handshake_seconds: Histogram,
    plugin_seconds: Family<Labels, Histogram>,
    plugin_failures: Family<Labels, Counter>,
    config_reloads: Family<Labels, Counter>,
    preauth_refused: Family<Labels, Counter>,
    methods: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("trustgate");
        let auth_decisions = Family::<Labels, Counter>::default();
        registry.register(
            "auth_decisions",
            "Auth plugin decisions by plugin, decision (allow, deny, abstain, failed) and code",
            auth_decisions.clone(),
        );
        let handshakes = Family::<Labels, Counter>::default();
        registry.register(
            "handshakes",
            "Completed connect handshakes by result (ok or the error code)",
            handshakes.clone(),
        );
        let handshake_seconds = Histogram::new(latency_buckets());
        registry.register(
            "handshake_duration_seconds",
            "Time from the connect request to its response",
            handshake_seconds.clone(),
        );
        let plugin_seconds =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(latency_buckets()));
        registry.register(
            "plugin_call_duration_seconds",
            "Duration of one plugin call by plugin",
            plugin_seconds.clone(),
        );
        let plugin_failures = Family::<Labels, Counter>::default();
        registry.register(
            "plugin_failures",
            "Plugin failures by plugin and cause (trap, deadline, memory, timeout, configure, invalid)",
            plugin_failures.clone(),
        );
        let config_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result (ok, error)",
            config_reloads.clone(),
        );
        let preauth_refused = Family::<Labels, Counter>::default();
        registry.register(
            "preauth_refused",
            "Sockets closed at accept by the pre-auth budget, by reason (total, per-address, tracking)",
            preauth_refused.clone(),
        );
        Self {
            preauth_refused,
            registry: Mutex::new(registry),
            auth_decisions,
            handshakes,
            handshake_seconds,
            plugin_seconds,
            plugin_failures,
            config_reloads,
            methods: Mutex::new(HashSet::new()),
        }
    }

    /// Adds the collector of live values (sessions, plugins, pairing, Kubernetes client
    /// counters), read from `live` at each scrape.
    pub(crate) fn collect_from(&self, live: LiveSource, kube: Option<Arc<Kubernetes>>) {
        let collector = StateCollector { live, kube };
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(Box::new(collector));
    }

    /// Records one chain evaluation.
    pub(crate) fn record_steps(
        &self,
        steps: &[Step],
        deny_code: Option<&str>,
        failure: Option<&str>,
    ) {
        let last = steps.len().saturating_sub(1);
        for (i, s) in steps.iter().enumerate() {
            let (decision, code) = match s.kind {
                StepKind::Allow => ("allow", ""),
                StepKind::Permit => ("permit", ""),
                StepKind::Abstain => ("abstain", ""),
                StepKind::Deny => (
                    "deny",
                    if i == last {
                        deny_code.unwrap_or("")
                    } else {
                        ""
                    },
                ),
                StepKind::Failed if failure == Some("busy") => ("failed", "UNAVAILABLE"),
                StepKind::Failed => ("failed", "PLUGIN_FAILED"),
            };
            self.auth_decisions
                .get_or_create(&labels(&[
                    ("plugin", &s.plugin),
                    ("decision", decision),
                    ("code", code),
                ]))
                .inc();
            self.plugin_seconds
                .get_or_create(&labels(&[("plugin", &s.plugin)]))
                .observe(s.elapsed.as_secs_f64());
            if let (StepKind::Failed, Some(cause)) = (s.kind, failure) {
                self.plugin_failures
                    .get_or_create(&labels(&[("plugin", &s.plugin), ("cause", cause)]))
                    .inc();
            }
        }
    }

    /// Records a finished handshake.
    pub(crate) fn record_handshake(&self, result: &str, seconds: f64) {
        self.handshakes
            .get_or_create(&labels(&[("result", result)]))
            .inc();
        self.handshake_seconds.observe(seconds);
    }

    /// Records a configuration reload.
    pub(crate) fn record_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&labels(&[("result", if ok { "ok" } else { "error" })]))
            .inc();
    }

    /// A bounded label value for an auth method.
    pub(crate) fn method_label(&self, method: &str) -> String {
        let plausible = !method.is_empty()
            && method.len() <= 32
            && method
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !plausible {
            return "other".into();
        }
        let mut seen = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(method) || seen.len() < MAX_METHODS {
            seen.insert(method.to_string());
            method.to_string()
        } else {
            "other".into()
        }
    }

    /// Counts a socket refused at accept by the pre-auth budget.
    pub(crate) fn record_preauth_refused(&self, reason: &str) {
        self.preauth_refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What `/metrics` reports of the gateway's live state, read at each scrape.
pub(crate) struct Live {
    /// Each live session's role and (capped) method label.
    pub(crate) sessions: Vec<(&'static str, String)>,
    /// The loaded plugins.
    pub(crate) plugins: Vec<Arc<WasmPlugin>>,
    /// Sockets not yet past `hello-ok`.
    pub(crate) unauthenticated: usize,
    /// Pending pairing requests.
    pub(crate) pending: usize,
}

/// Reads the live values; `None` once the gateway is gone. A function rather than the state
/// itself, so that metrics sit below the state that owns them.
pub(crate) type LiveSource = Box<dyn Fn() -> Option<Live> + Send + Sync>;

struct StateCollector {
    live: LiveSource,
    kube: Option<Arc<Kubernetes>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(live) = (self.live)() {
            let mut by: std::collections::BTreeMap<(&str, String), i64> = Default::default();
            for key in live.sessions {
                *by.entry(key).or_default() += 1;
            }
            let g = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "sessions",
                "Live sessions by role and method",
                None,
                g.metric_type(),
            )?;
            for ((role, method), n) in by {
                let l = labels(&[("role", role), ("method", &method)]);
                ConstGauge::new(n).encode(family.encode_family(&l)?)?;
            }
            let plugins = live.plugins;
            let c = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "plugin_log_dropped_bytes",
                "Plugin log output dropped because a call exceeded its log budget, by plugin",
                None,
                c.metric_type(),
            )?;
            for p in &plugins {
                let dropped = p
                    .stats()
                    .log_dropped_bytes
                    .load(std::sync::atomic::Ordering::Relaxed);
                ConstCounter::new(dropped)
                    .encode(family.encode_family(&labels(&[("plugin", p.name())]))?)?;
            }
            // Every plugin of a chain shares one runtime and so one memory budget.
            let memory = plugins.first().map_or(0, |p| p.runtime_memory_bytes());
            let g = ConstGauge::new(memory as i64);
            let m = encoder.encode_descriptor(
                "plugin_memory_bytes",
                "Memory held by all plugin instances (charged against plugins.memory_budget_mib)",
                None,
                g.metric_type(),
            )?;
            g.encode(m)?;
            let open = ConstGauge::new(live.unauthenticated as i64);
            let m = encoder.encode_descriptor(
                "unauthenticated_sockets",
                "Sockets accepted and not yet past hello-ok (the pre-auth budget in use)",
                None,
                open.metric_type(),
            )?;
            open.encode(m)?;
            let pending = ConstGauge::new(live.pending as i64);
            let m = encoder.encode_descriptor(
                "pairing_pending",
                "Pending device pairing requests",
                None,
                pending.metric_type(),
            )?;
            pending.encode(m)?;
        }
        if let Some(kube) = &self.kube {
            use std::sync::atomic::Ordering::Relaxed;
            let s = kube.stats();
            let c = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(
                "tokenreview_requests",
                "TokenReviews by result (authenticated, rejected, unavailable, forbidden, failed)",
                None,
                c.metric_type(),
            )?;
            for (result, v) in [
                ("authenticated", s.reviews_authenticated.load(Relaxed)),
                ("rejected", s.reviews_rejected.load(Relaxed)),
                ("unavailable", s.reviews_unavailable.load(Relaxed)),
                ("forbidden", s.reviews_forbidden.load(Relaxed)),
                ("failed", s.reviews_failed.load(Relaxed)),
            ] {
                ConstCounter::new(v)
                    .encode(family.encode_family(&labels(&[("result", result)]))?)?;
            }
            counter(
                &mut encoder,
                "tokenreview_api_calls",
                "HTTP requests sent for TokenReviews, retries included",
                s.api_requests.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "review_cache_hits",
                "Reviews answered from the cache",
                s.cache_hits.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "review_cache_misses",
                "Reviews that needed the API",
                s.cache_misses.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "review_coalesced_waits",
                "Reviews that waited on an identical one in flight",
                s.coalesced.load(Relaxed),
            )?;
            counter(
                &mut encoder,
                "jwks_refreshes",
                "Refreshes of the cluster's signing keys",
                s.jwks_refreshes.load(Relaxed),
            )?;
        }
        Ok(())
    }
}
