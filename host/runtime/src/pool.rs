//! The instance pool: a loaded plugin is its compiled component, prepared once
//! (`InstancePre`), plus configured instances ready to serve. Each call takes an instance out
//! of the pool, so concurrent authentications never wait on one another; an instance that
//! failed in any way is dropped, never reused. A plugin has at most `max_instances` instances
//! alive; a call beyond that waits a bounded time for one, then fails as `Busy`.
//!
//! The path of one call is here too, version-agnostic: take an instance, begin the call in its
//! store, run the contract's `authenticate` under the call's bounds (`call.rs`), end the call,
//! check the decision, put the instance back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;

use crate::bindings::ContractVersion;
use crate::bounds;
use crate::call::{Cut, guest_call};
use crate::chain::{AuthProvider, Call, PluginFailure};
use crate::contract::{Answer, Instance, Pre};
use crate::engine::EpochTicker;
use crate::sandbox::{
    Grants, MemoryBudget, SandboxLimits, StoreParts, StoreState, Tripped, on_epoch_deadline,
};
use crate::services::HostServices;
use crate::stats::PluginStats;
use crate::types::Decision;

/// One configured instance. Holding it holds one of the plugin's instance permits.
struct Slot {
    store: Store<StoreState>,
    instance: Instance,
    _permit: OwnedSemaphorePermit,
}

/// A plugin ready to authenticate.
pub struct WasmPlugin {
    parts: PoolParts,
    /// Boxed: a slot (store and bindings) is large, and parking one must not copy it.
    // Boxed so that taking and parking a slot moves one pointer, not the
    // store and instance bindings, inside the mutex's critical section.
    #[allow(clippy::vec_box)]
    idle: std::sync::Mutex<Vec<Box<Slot>>>,
    /// One permit per live instance.
    instances: Arc<Semaphore>,
    /// Calls waiting for an instance; parking one notifies only if there are any.
    waiting: AtomicUsize,
    /// Signalled when an instance is parked while calls wait.
    returned: Notify,
    /// The auth methods the plugin decides on (contract 0.3's `wants.methods`; empty: all),
    /// as its first instance declared: a request with another method never takes an
    /// instance.
    methods: std::sync::OnceLock<Vec<String>>,
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
    /// runtime that loaded it is gone, and counts itself in during calls so it ticks.
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

/// Counts a call waiting for an instance while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WasmPlugin {
    pub(crate) fn new(parts: PoolParts) -> Self {
        Self {
            instances: Arc::new(Semaphore::new(parts.max_instances)),
            parts,
            idle: std::sync::Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            returned: Notify::new(),
            methods: std::sync::OnceLock::new(),
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
        let permit = self
            .instances
            .clone()
            .try_acquire_owned()
            .map_err(|_| InstanceError::Failed(PluginFailure::Busy))?;
        let slot = self.new_slot(permit).await?;
        let _ = self.methods.set(slot.instance.methods().to_vec());
        self.park(slot);
        Ok(())
    }

    /// Whether the plugin decides on requests with auth method `method`.
    fn decides_on(&self, method: &str) -> bool {
        self.methods
            .get()
            .is_none_or(|m| m.is_empty() || m.iter().any(|x| x == method))
    }

    async fn new_slot(&self, permit: OwnedSemaphorePermit) -> Result<Box<Slot>, InstanceError> {
        let _busy = self.parts.ticker.busy();
        let p = &self.parts;
        p.stats.instances.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            p.pre.engine(),
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
        let mut instance = {
            let ticks = store.data_mut().begin_call(None);
            store.set_epoch_deadline(ticks);
            let (started, clock) = (store.data().started(), store.data().clock());
            match guest_call(
                p.pre.instantiate(&mut store),
                started,
                p.limits.bounds(),
                clock,
            )
            .await
            {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    return Err(InstanceError::Failed(classify(&store, "instantiate", e)));
                }
                Err(cut) => return Err(InstanceError::Failed(cut_off(&mut store, cut))),
            }
        };
        let ticks = store.data_mut().begin_call(None);
        store.set_epoch_deadline(ticks);
        let (started, clock) = (store.data().started(), store.data().clock());
        let configured = guest_call(
            instance.configure(&mut store, &p.config_json),
            started,
            p.limits.bounds(),
            clock,
        )
        .await;
        store.data_mut().end_call();
        match configured {
            Ok(Ok(Ok(()))) => Ok(Box::new(Slot {
                store,
                instance,
                _permit: permit,
            })),
            Ok(Ok(Err(message))) => {
                let message = bounds::clip(&message, bounds::MAX_CONFIGURE_ERROR);
                Err(InstanceError::Configure(
                    bounds::escape_text(message).into_owned(),
                ))
            }
            Ok(Err(e)) => Err(InstanceError::Failed(classify(&store, "configure", e))),
            Err(cut) => Err(InstanceError::Failed(cut_off(&mut store, cut))),
        }
    }

    fn take(&self) -> Option<Box<Slot>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Returns an instance to the pool (or drops it, releasing its permit, if the pool is
    /// full) and wakes one call waiting for an instance, if any.
    fn park(&self, slot: Box<Slot>) {
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < self.parts.max_idle {
                idle.push(slot);
            }
        }
        // A waiter counts itself in before it looks at the pool, so either it sees this
        // instance or this sees it (both sides are sequentially consistent).
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_one();
        }
    }

    /// An idle instance, or a new one if the plugin is under its instance cap; at the cap,
    /// waits up to `instance_wait` for an instance to come back or be dropped.
    async fn slot(&self) -> Result<Box<Slot>, PluginFailure> {
        match self.take() {
            Some(slot) => Ok(slot),
            // Boxed: creating an instance is a large future, and the common path (an idle
            // instance) should not carry (and copy) its state on every call.
            None => Box::pin(self.new_or_waited_slot()).await,
        }
    }

    async fn new_or_waited_slot(&self) -> Result<Box<Slot>, PluginFailure> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
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
        let ticks = slot.store.data_mut().begin_call(Some(call.clone()));
        slot.store.set_epoch_deadline(ticks);
        let state = slot.store.data();
        let (started, clock) = (state.started(), state.clock());
        let outcome = guest_call(
            slot.instance.authenticate(&mut slot.store, call),
            started,
            self.parts.limits.bounds(),
            clock,
        )
        .await;
        slot.store.data_mut().end_call();
        self.parts.stats.observe(started.elapsed());
        match outcome {
            Ok(Ok(Answer::Failed(message))) => {
                // The plugin's own, orderly failure: its instance is sound.
                self.park(slot);
                Err(PluginFailure::Raised(reported(&message, &call.request)))
            }
            Ok(Ok(Answer::Decided(decision))) => {
                let checked = bounds::decision(&decision);
                self.park(slot);
                match checked {
                    Ok(()) => Ok(decision),
                    // The instance itself is sound; its answer was not. Nothing of the
                    // answer's content goes further than this message, which names only field
                    // and size.
                    Err(why) => Err(PluginFailure::InvalidDecision(why)),
                }
            }
            // The instance is dropped here: its state after a trap is not to be trusted.
            Ok(Err(e)) => Err(classify(&slot.store, "authenticate", e)),
            Err(cut) => Err(cut_off(&mut slot.store, cut)),
        }
    }
}

/// A plugin's failure message as the log and the audit trace may carry it: the call's
/// credentials removed (a plugin with the read grant could quote them), cut and escaped.
fn reported(message: &str, request: &crate::types::Request) -> String {
    let mut m = message.to_string();
    for secret in [
        &request.credentials.token,
        &request.credentials.device_token,
    ]
    .into_iter()
    .flatten()
    .filter(|s| s.len() >= 8)
    {
        m = m.replace(secret.as_str(), "<redacted>");
    }
    bounds::escape_text(bounds::clip(&m, bounds::MAX_MESSAGE)).into_owned()
}

/// What a call cut off by its wall-clock bounds failed with.
fn cut_off(store: &mut Store<StoreState>, cut: Cut) -> PluginFailure {
    match cut {
        Cut::Waited => {
            store.data_mut().trip_deadline();
            tracing::debug!(
                plugin = store.data().plugin(),
                "plugin waited (not on a host call) past its CPU deadline"
            );
            PluginFailure::Deadline
        }
        Cut::Timeout => PluginFailure::Timeout,
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
        if !self.decides_on(&call.request.credentials.method) {
            return Ok(Decision::Abstain);
        }
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
