//! The state every connection shares: limits, the pairing store, the session registry and its
//! slots, the pre-auth budget, the loaded chain, metrics, the audit log and the cluster. It
//! composes the parts below it; connections, the admin API and the replica's cluster tasks
//! reach them through it.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tracing::info;
use trustgate_runtime::{Chain, WasmPlugin};

use crate::admission::SessionSlots;
use crate::audit::Audit;
use crate::cluster::Nats;
use crate::limits::ProtocolLimits;
use crate::metrics::{Live, LiveSource, Metrics};
use crate::pairing_store::PairingStore;
use crate::preauth::PreAuth;
use crate::registry::{Replicated, Sessions, sessions_view};

/// The loaded auth chain and its plugins.
#[derive(Debug, Clone)]
pub struct LoadedChain {
    /// The chain.
    pub chain: Arc<Chain>,
    /// Its plugins, in order.
    pub plugins: Vec<Arc<WasmPlugin>>,
}

/// State shared by every connection.
pub struct GatewayState {
    pub(crate) limits: ProtocolLimits,
    pub(crate) pairing: PairingStore,
    pub(crate) sessions: Arc<Sessions>,
    /// On NATS, the other replicas' sessions.
    pub(crate) replicated: Option<Arc<Replicated>>,
    /// `limits.max_connections`, as slots taken before the chain runs.
    pub(crate) slots: Arc<SessionSlots>,
    pub(crate) connections: AtomicUsize,
    /// What unauthenticated peers may spend (sockets, failed handshakes).
    pub(crate) preauth: Arc<PreAuth>,
    pub(crate) chain: RwLock<LoadedChain>,
    pub(crate) admin_token: String,
    pub(crate) metrics: Metrics,
    pub(crate) audit: Audit,
    /// The NATS cluster this replica belongs to (`[cluster] backend = "nats"`).
    pub(crate) cluster: Option<Arc<Nats>>,
    /// Set when the gateway drains (SIGTERM): handshakes in progress close with 1012 too.
    pub(crate) draining: watch::Sender<bool>,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
    /// Waits until this replica's copy of the shared pairing state is loaded (at once without
    /// a cluster).
    pub async fn cluster_synced(&self) {
        self.pairing.wait_synced().await;
    }

    /// The chain new handshakes use.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .chain
            .clone()
    }

    /// The loaded plugins.
    pub fn plugins(&self) -> Vec<Arc<WasmPlugin>> {
        self.chain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .plugins
            .clone()
    }

    /// Replaces the chain new handshakes use. Handshakes already running finish on the chain
    /// they started with; live sessions are untouched.
    pub fn swap_chain(&self, loaded: LoadedChain) {
        *self.chain.write().unwrap_or_else(|p| p.into_inner()) = loaded;
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Live sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The pairing store.
    pub fn pairing(&self) -> &PairingStore {
        &self.pairing
    }

    /// Sessions as operators list them: this replica's and, on NATS, every live replica's.
    pub(crate) fn sessions_view(&self, workers_only: bool) -> Vec<serde_json::Value> {
        sessions_view(&self.sessions, self.replicated.as_deref(), workers_only)
    }

    /// What `/metrics` reads of this state at each scrape (nothing once it is gone).
    pub(crate) fn live_values(self: &Arc<Self>) -> LiveSource {
        let state = Arc::downgrade(self);
        Box::new(move || {
            let state = state.upgrade()?;
            Some(Live {
                sessions: state
                    .sessions
                    .list()
                    .into_iter()
                    .map(|s| (s.role.as_str(), state.metrics.method_label(&s.method)))
                    .collect(),
                plugins: state.plugins(),
                unauthenticated: state.preauth.open(),
                pending: state.pairing.pending().len(),
            })
        })
    }
}

/// Logs the loaded chain: each plugin, its contract, and whether it can read credentials.
pub(crate) fn log_chain(plugins: &[Arc<WasmPlugin>]) {
    for p in plugins {
        info!(
            plugin = p.name(),
            contract = %p.contract(),
            reads_credentials = p.reads_credentials(),
            sha256 = p.sha256(),
            "auth plugin loaded"
        );
    }
}
