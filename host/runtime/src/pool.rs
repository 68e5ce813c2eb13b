//! The instance pool: a loaded plugin is its compiled component, prepared once
//! (`InstancePre`), plus configured instances ready to serve. Each call takes an instance out
//! of the pool, so concurrent authentications never wait on one another; an instance that
//! failed in any way is dropped, never reused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use wasmtime::Store;

use super::bindings::{AuthPlugin, AuthPluginPre, Decision, Identity, Request};
use super::chain::{AuthProvider, PluginFailure};
use super::engine::EpochTicker;
use super::sandbox::{SandboxLimits, StoreState, Tripped, on_epoch_deadline};
use super::services::{CachePolicy, HostServices};

struct Slot {
    store: Store<StoreState>,
    bindings: AuthPlugin,
}

/// Upper bounds (µs) of the call-latency buckets.
const LATENCY_BOUNDS_US: [u64; 16] = [
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    u64::MAX,
];

/// Counters of one plugin's calls since load.
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls to `authenticate`.
    pub calls: AtomicU64,
    /// Calls that denied.
    pub denials: AtomicU64,
    /// Calls that ended in a failure (trap, deadline, memory, ...).
    pub failures: AtomicU64,
    /// Instances created (the first at load, then one per failure or pool miss).
    pub instances: AtomicU64,
    latency: [AtomicU64; 16],
}

impl PluginStats {
    fn observe(&self, elapsed: std::time::Duration) {
        let us = elapsed.as_micros() as u64;
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The 99th-percentile call latency in µs, as the upper bound of its bucket (`None`
    /// before the first call).
    pub fn p99_us(&self) -> Option<u64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = total.saturating_mul(99).div_ceil(100);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(LATENCY_BOUNDS_US[i]);
            }
        }
        None
    }
}

/// A plugin ready to authenticate.
pub struct WasmPlugin {
    parts: PoolParts,
    idle: std::sync::Mutex<Vec<Slot>>,
    stats: PluginStats,
}

/// What a pool is made of, handed over by the runtime that loaded the plugin.
pub(crate) struct PoolParts {
    pub name: Arc<str>,
    pub sha256: String,
    pub config_json: String,
    pub pre: AuthPluginPre<StoreState>,
    pub services: Arc<dyn HostServices>,
    pub limits: SandboxLimits,
    pub max_idle: usize,
    /// Deadlines only fire while the epoch ticks: a plugin keeps the ticker alive even if the
    /// runtime that loaded it is gone, and marks itself busy during calls so it ticks.
    pub ticker: Arc<EpochTicker>,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("name", &self.parts.name)
            .field("sha256", &self.parts.sha256)
            .finish_non_exhaustive()
    }
}

/// Why creating a configured instance failed.
#[derive(Debug)]
pub(crate) enum InstanceError {
    /// The plugin's `configure` returned an error (shown verbatim).
    Configure(String),
    /// Instantiation or the `configure` call failed in the sandbox.
    Failed(PluginFailure),
}

impl WasmPlugin {
    pub(crate) fn new(parts: PoolParts) -> Self {
        Self {
            parts,
            idle: std::sync::Mutex::new(Vec::new()),
            stats: PluginStats::default(),
        }
    }

    /// The plugin's name in the chain.
    pub fn name(&self) -> &str {
        &self.parts.name
    }

    /// SHA-256 (hex) of the component bytes.
    pub fn sha256(&self) -> &str {
        &self.parts.sha256
    }

    /// Call counters.
    pub fn stats(&self) -> &PluginStats {
        &self.stats
    }

    /// Creates, configures and parks one instance, proving the plugin accepts its
    /// configuration. Used once at load so configuration errors surface before serving.
    pub(crate) async fn warm_up(&self) -> Result<(), InstanceError> {
        let _busy = self.parts.ticker.busy();
        let slot = self.new_slot().await?;
        self.park(slot);
        Ok(())
    }

    async fn new_slot(&self) -> Result<Slot, InstanceError> {
        self.stats.instances.fetch_add(1, Ordering::Relaxed);
        let p = &self.parts;
        let mut store = Store::new(
            p.pre.engine(),
            StoreState::new(p.name.clone(), p.services.clone(), p.limits),
        );
        store.limiter(|s| s);
        store.epoch_deadline_callback(on_epoch_deadline);
        let ticks = store.data_mut().begin_call(CachePolicy::Use);
        store.set_epoch_deadline(ticks);
        let bindings = match p.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) => return Err(InstanceError::Failed(classify(&store, "instantiate", e))),
        };
        let ticks = store.data_mut().begin_call(CachePolicy::Use);
        store.set_epoch_deadline(ticks);
        let configured = tokio::time::timeout(
            p.limits.wall_clock_bound(),
            bindings
                .trustgate_auth_plugin()
                .call_configure(&mut store, &p.config_json),
        )
        .await;
        match configured {
            Ok(Ok(Ok(()))) => Ok(Slot { store, bindings }),
            Ok(Ok(Err(message))) => Err(InstanceError::Configure(message)),
            Ok(Err(e)) => Err(InstanceError::Failed(classify(&store, "configure", e))),
            Err(_) => Err(InstanceError::Failed(PluginFailure::Timeout)),
        }
    }

    fn take(&self) -> Option<Slot> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    fn park(&self, slot: Slot) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.parts.max_idle
        {
            idle.push(slot);
        }
    }

    async fn call(
        &self,
        request: &Request,
        so_far: Option<&Identity>,
        cache: CachePolicy,
    ) -> Result<Decision, PluginFailure> {
        let mut slot = match self.take() {
            Some(slot) => slot,
            None => self.new_slot().await.map_err(|e| match e {
                InstanceError::Configure(m) => PluginFailure::Configure(m),
                InstanceError::Failed(f) => f,
            })?,
        };
        let ticks = slot.store.data_mut().begin_call(cache);
        slot.store.set_epoch_deadline(ticks);
        let outcome = tokio::time::timeout(
            self.parts.limits.wall_clock_bound(),
            slot.bindings.trustgate_auth_plugin().call_authenticate(
                &mut slot.store,
                request,
                so_far,
            ),
        )
        .await;
        match outcome {
            Ok(Ok(decision)) => {
                self.park(slot);
                Ok(decision)
            }
            // The instance is dropped here: its state after a trap is not to be trusted.
            Ok(Err(e)) => Err(classify(&slot.store, "authenticate", e)),
            Err(_) => Err(PluginFailure::Timeout),
        }
    }
}

fn classify(store: &Store<StoreState>, during: &str, error: wasmtime::Error) -> PluginFailure {
    match store.data().tripped() {
        Tripped::Deadline => PluginFailure::Deadline,
        Tripped::Memory => PluginFailure::Memory,
        Tripped::Nothing => {
            let trap = error
                .downcast_ref::<wasmtime::Trap>()
                .map(|t| t.to_string())
                .unwrap_or_else(|| format!("{error:#}"));
            tracing::debug!(plugin = store.data().plugin(), during, error = ?error, "plugin trapped");
            PluginFailure::Trap(format!("{during}: {trap}"))
        }
    }
}

#[async_trait]
impl AuthProvider for WasmPlugin {
    fn name(&self) -> &str {
        &self.parts.name
    }

    async fn authenticate(
        &self,
        request: &Request,
        so_far: Option<&Identity>,
        cache: CachePolicy,
    ) -> Result<Decision, PluginFailure> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let result = {
            let _busy = self.parts.ticker.busy();
            self.call(request, so_far, cache).await
        };
        self.stats.observe(started.elapsed());
        if let Ok(Decision::Deny(_)) = &result {
            self.stats.denials.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(failure) = &result {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = &*self.parts.name, cause = failure.cause(), error = %failure, "plugin failed; denying (fail closed)");
        }
        result
    }
}
