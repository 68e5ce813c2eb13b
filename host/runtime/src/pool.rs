//! The instance pool: a loaded plugin is its compiled component, prepared once
//! (`InstancePre`), plus configured instances ready to serve. Each call takes an instance out
//! of the pool, so concurrent authentications never wait on one another; an instance that
//! failed in any way is dropped, never reused. A plugin has at most `max_instances` instances
//! alive; a call beyond that waits a bounded time for one, then fails as `Busy`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;
use wasmtime::component::Resource;

use crate::bindings::{ContractVersion, v0_1, v0_2};
use crate::bounds;
use crate::chain::{AuthProvider, Call, PluginFailure};
use crate::contract::{
    IdentityHandle, RequestHandle, decision_v0_1, decision_v0_2, identity_v0_1, request_v0_1,
};
use crate::engine::EpochTicker;
use crate::sandbox::{
    Grants, MemoryBudget, SandboxLimits, StoreParts, StoreState, Tripped, on_epoch_deadline,
};
use crate::services::{CachePolicy, HostServices};
use crate::types::Decision;

/// A component prepared against one contract version.
pub(crate) enum Pre {
    V0_1(v0_1::AuthPluginPre<StoreState>),
    V0_2(v0_2::AuthPluginPre<StoreState>),
}

impl Pre {
    fn version(&self) -> ContractVersion {
        match self {
            Self::V0_1(_) => ContractVersion::V0_1,
            Self::V0_2(_) => ContractVersion::V0_2,
        }
    }
}

enum Bindings {
    V0_1(v0_1::AuthPlugin),
    V0_2(v0_2::AuthPlugin),
}

/// One configured instance. Holding it holds one of the plugin's instance permits.
struct Slot {
    store: Store<StoreState>,
    bindings: Bindings,
    _permit: OwnedSemaphorePermit,
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
    /// Bytes of log output dropped because a call exceeded its log budget.
    pub log_dropped_bytes: AtomicU64,
    latency: [AtomicU64; 16],
}

impl PluginStats {
    fn observe(&self, elapsed: Duration) {
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
    /// One permit per live instance.
    instances: Arc<Semaphore>,
    /// Signalled whenever an instance is parked.
    returned: Notify,
}

/// What a pool is made of, handed over by the runtime that loaded the plugin.
pub(crate) struct PoolParts {
    pub name: Arc<str>,
    pub sha256: String,
    pub config_json: String,
    pub pre: Pre,
    pub services: Arc<dyn HostServices>,
    pub limits: SandboxLimits,
    pub grants: Grants,
    pub max_idle: usize,
    pub max_instances: usize,
    pub instance_wait: Duration,
    pub budget: Arc<MemoryBudget>,
    pub stats: Arc<PluginStats>,
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
    /// The plugin's `configure` returned an error (escaped and cut to the contract's limit).
    Configure(String),
    /// Instantiation or the `configure` call failed in the sandbox.
    Failed(PluginFailure),
}

impl WasmPlugin {
    pub(crate) fn new(parts: PoolParts) -> Self {
        Self {
            instances: Arc::new(Semaphore::new(parts.max_instances)),
            parts,
            idle: std::sync::Mutex::new(Vec::new()),
            returned: Notify::new(),
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
        &self.parts.stats
    }

    /// The contract version the component was built against.
    pub fn contract(&self) -> ContractVersion {
        self.parts.pre.version()
    }

    /// What the operator granted the plugin. (A 0.1 component sees the credentials whatever
    /// its grants: its contract copies them into every request.)
    pub fn grants(&self) -> Grants {
        self.parts.grants
    }

    /// Bytes of memory all instances of the runtime that loaded this plugin hold together
    /// (what its `memory_budget_mib` is charged with).
    pub fn runtime_memory_bytes(&self) -> usize {
        self.parts.budget.used()
    }

    /// Whether the plugin can read raw credentials: granted, or implied by contract 0.1.
    pub fn reads_credentials(&self) -> bool {
        self.parts.grants.read_credentials || self.contract() == ContractVersion::V0_1
    }

    /// Creates, configures and parks one instance, proving the plugin accepts its
    /// configuration. Used once at load so configuration errors surface before serving.
    pub(crate) async fn warm_up(&self) -> Result<(), InstanceError> {
        let _busy = self.parts.ticker.busy();
        let permit = self
            .instances
            .clone()
            .try_acquire_owned()
            .map_err(|_| InstanceError::Failed(PluginFailure::Busy))?;
        let slot = self.new_slot(permit).await?;
        self.park(slot);
        Ok(())
    }

    async fn new_slot(&self, permit: OwnedSemaphorePermit) -> Result<Slot, InstanceError> {
        let p = &self.parts;
        p.stats.instances.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            p.pre_engine(),
            StoreState::new(StoreParts {
                plugin: p.name.clone(),
                services: p.services.clone(),
                limits: p.limits,
                grants: p.grants,
                stats: p.stats.clone(),
                budget: p.budget.clone(),
            }),
        );
        store.limiter(|s| s);
        store.epoch_deadline_callback(on_epoch_deadline);
        let ticks = store.data_mut().begin_call(CachePolicy::Use, None);
        store.set_epoch_deadline(ticks);
        let bindings = match &p.pre {
            Pre::V0_1(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V0_1),
            Pre::V0_2(pre) => pre.instantiate_async(&mut store).await.map(Bindings::V0_2),
        };
        let bindings = match bindings {
            Ok(b) => b,
            Err(e) => return Err(InstanceError::Failed(classify(&store, "instantiate", e))),
        };
        let ticks = store.data_mut().begin_call(CachePolicy::Use, None);
        store.set_epoch_deadline(ticks);
        let configured = tokio::time::timeout(p.limits.call_timeout, async {
            match &bindings {
                Bindings::V0_1(b) => {
                    b.trustgate_auth_plugin()
                        .call_configure(&mut store, &p.config_json)
                        .await
                }
                Bindings::V0_2(b) => {
                    b.trustgate_auth_plugin()
                        .call_configure(&mut store, &p.config_json)
                        .await
                }
            }
        })
        .await;
        match configured {
            Ok(Ok(Ok(()))) => Ok(Slot {
                store,
                bindings,
                _permit: permit,
            }),
            Ok(Ok(Err(message))) => {
                let message = bounds::clip(&message, bounds::MAX_CONFIGURE_ERROR);
                Err(InstanceError::Configure(
                    bounds::escape_text(message).into_owned(),
                ))
            }
            Ok(Err(e)) => Err(InstanceError::Failed(classify(&store, "configure", e))),
            Err(_) => Err(InstanceError::Failed(PluginFailure::Timeout)),
        }
    }

    fn take(&self) -> Option<Slot> {
        self.idle.lock().ok().and_then(|mut idle| idle.pop())
    }

    /// Returns an instance to the pool (or drops it, releasing its permit, if the pool is
    /// full) and wakes one call waiting for an instance.
    fn park(&self, slot: Slot) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.parts.max_idle
        {
            idle.push(slot);
        }
        self.returned.notify_one();
    }

    /// An idle instance, or a new one if the plugin is under its instance cap; at the cap,
    /// waits up to `instance_wait` for an instance to come back or be dropped.
    async fn slot(&self) -> Result<Slot, PluginFailure> {
        if let Some(slot) = self.take() {
            return Ok(slot);
        }
        let deadline = tokio::time::Instant::now() + self.parts.instance_wait;
        loop {
            // Register for "an instance was parked" before looking, so none is missed.
            let parked = self.returned.notified();
            tokio::pin!(parked);
            parked.as_mut().enable();
            if let Some(slot) = self.take() {
                return Ok(slot);
            }
            let permit = match self.instances.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    _ = &mut parked => continue,
                    p = self.instances.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return Err(PluginFailure::Busy),
                    },
                    _ = tokio::time::sleep_until(deadline) => return Err(PluginFailure::Busy),
                },
            };
            return self.new_slot(permit).await.map_err(|e| match e {
                InstanceError::Configure(m) => PluginFailure::Configure(m),
                InstanceError::Failed(f) => f,
            });
        }
    }

    async fn call(&self, call: &Call) -> Result<Decision, PluginFailure> {
        let mut slot = self.slot().await?;
        let ticks = slot
            .store
            .data_mut()
            .begin_call(call.cache, Some(call.witness.clone()));
        slot.store.set_epoch_deadline(ticks);
        // The call's wall-clock bound, counted from the start `begin_call` recorded.
        let limit = tokio::time::Instant::from_std(slot.store.data().call_deadline());
        let outcome = match &slot.bindings {
            Bindings::V0_1(b) => {
                let request = request_v0_1(&call.request);
                let so_far = call.so_far.as_deref().map(identity_v0_1);
                let run = b.trustgate_auth_plugin().call_authenticate(
                    &mut slot.store,
                    &request,
                    so_far.as_ref(),
                );
                tokio::time::timeout_at(limit, run)
                    .await
                    .map(|r| r.map(decision_v0_1))
            }
            Bindings::V0_2(b) => {
                let lent = lend(&mut slot.store, call);
                match lent {
                    Err(e) => Ok(Err(e)),
                    Ok((request, so_far)) => {
                        let run = b.trustgate_auth_plugin().call_authenticate(
                            &mut slot.store,
                            Resource::new_borrow(request.rep()),
                            so_far.as_ref().map(|s| Resource::new_borrow(s.rep())),
                        );
                        let out = tokio::time::timeout_at(limit, run).await;
                        let state = slot.store.data_mut();
                        let _ = state.table.delete(request);
                        if let Some(s) = so_far {
                            let _ = state.table.delete(s);
                        }
                        out.map(|r| r.map(decision_v0_2))
                    }
                }
            }
        };
        let state = slot.store.data_mut();
        state.release_handles();
        self.parts.stats.observe(state.call_elapsed());
        match outcome {
            Ok(Ok(decision)) => match bounds::decision(&decision) {
                Ok(()) => {
                    self.park(slot);
                    Ok(decision)
                }
                // The instance itself is sound; its answer was not. Nothing of the answer's
                // content goes further than this message, which names only field and size.
                Err(why) => {
                    self.park(slot);
                    Err(PluginFailure::InvalidDecision(why))
                }
            },
            // The instance is dropped here: its state after a trap is not to be trusted.
            Ok(Err(e)) => Err(classify(&slot.store, "authenticate", e)),
            Err(_) => Err(PluginFailure::Timeout),
        }
    }
}

/// Lends the request (and the identity so far) to the guest for one call.
fn lend(
    store: &mut Store<StoreState>,
    call: &Call,
) -> wasmtime::Result<(Resource<RequestHandle>, Option<Resource<IdentityHandle>>)> {
    let table = &mut store.data_mut().table;
    let request = table.push(RequestHandle(call.request.clone()))?;
    let so_far = match &call.so_far {
        Some(id) => Some(table.push(IdentityHandle(id.clone()))?),
        None => None,
    };
    Ok((request, so_far))
}

impl PoolParts {
    fn pre_engine(&self) -> &wasmtime::Engine {
        match &self.pre {
            Pre::V0_1(p) => p.engine(),
            Pre::V0_2(p) => p.engine(),
        }
    }
}

fn classify(store: &Store<StoreState>, during: &str, error: wasmtime::Error) -> PluginFailure {
    match store.data().tripped() {
        Tripped::Deadline => PluginFailure::Deadline,
        Tripped::Memory => PluginFailure::Memory,
        Tripped::Budget => PluginFailure::Busy,
        Tripped::Nothing => {
            let trap = error
                .downcast_ref::<wasmtime::Trap>()
                .map(|t| t.to_string())
                .unwrap_or_else(|| format!("{error:#}"));
            tracing::debug!(plugin = store.data().plugin(), during, error = ?error, "plugin trapped");
            let trap = bounds::escape_text(bounds::clip(&trap, bounds::MAX_MESSAGE)).into_owned();
            PluginFailure::Trap(format!("{during}: {trap}"))
        }
    }
}

#[async_trait]
impl AuthProvider for WasmPlugin {
    fn name(&self) -> &str {
        &self.parts.name
    }

    async fn authenticate(&self, call: &Call) -> Result<Decision, PluginFailure> {
        let stats = &self.parts.stats;
        stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = {
            let _busy = self.parts.ticker.busy();
            self.call(call).await
        };
        if let Ok(Decision::Deny(_)) = &result {
            stats.denials.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(failure) = &result {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = &*self.parts.name, cause = failure.cause(), error = %failure, "plugin failed; denying (fail closed)");
        }
        result
    }
}
