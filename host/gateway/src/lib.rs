//! The trustgate gateway: a WebSocket listener whose peers are authenticated by a chain of
//! WebAssembly plugins, with device pairing as the fallback.
//!
//! This crate composes the layers below it — `trustgate-protocol` (wire types),
//! `trustgate-runtime` (the plugin host) and `trustgate-k8s` (the Kubernetes client) — and owns
//! everything that is the gateway's own business: the listener, the handshake and the session
//! of each connection, the session registry, the pairing store, the admin API, metrics, the
//! audit log, hot reload, and the configuration file that composes every layer's settings.
//!
//! Start one with [`start`] on a [`Config`](config::Config); ARCHITECTURE.md follows a connection
//! through the files.

mod admin;
mod admission;
pub mod audit;
mod authenticate;
pub mod cluster;
pub mod config;
mod connection;
mod error;
mod explain;
pub mod fsutil;
mod invoke;
mod kube_services;
pub mod lifecycle;
mod limits;
mod listener;
pub mod metrics;
pub mod pairing_store;
mod preauth;
pub mod registry;
mod reload;
mod replica;
mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;

pub use admin::AdminSettings;
pub use audit::{Audit, AuditOutput, AuditRecord, AuditSettings};
pub use cluster::{ClusterError, ClusterSettings, StateBackend};
pub use config::{Config, ConfigError};
pub use error::StartError;
pub use explain::{ExplainInput, ExplainOutcome, Explanation, explain};
pub use kube_services::{KubeServices, NO_KUBERNETES};
pub use limits::ProtocolLimits;
pub use listener::{ListenerSettings, TlsSettings};
pub use metrics::Metrics;
pub use pairing_store::{
    DeviceRecord, DeviceToken, DeviceView, PairingError, PairingSettings, PairingStore,
    PendingRequest, StoreEvent, TokenRefusal,
};
pub use registry::{SessionInfo, Sessions};
pub use reload::Reloader;
pub use state::{GatewayState, LoadedChain};

use trustgate_runtime::{HostServices, Runtime};

/// A running gateway. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// The WebSocket listener's bound address.
    pub ws_addr: SocketAddr,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    /// Whether the WebSocket listener uses TLS.
    pub tls: bool,
    /// Shared state (sessions, pairing, chain).
    pub state: Arc<GatewayState>,
    /// What plugins' host calls reach (kept for reloads).
    services: Arc<dyn HostServices>,
    /// The compile cache it started with (kept for reloads).
    cache_dir: Option<std::path::PathBuf>,
    /// The Kubernetes client, if configured.
    pub kubernetes: Option<Arc<trustgate_k8s::Kubernetes>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("ws_addr", &self.ws_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// A handle to reload the auth chain.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
            services: self.services.clone(),
            cache_dir: self.cache_dir.clone(),
        }
    }

    /// Stops accepting connections and waits for the listeners to end. Live sessions end
    /// when their tasks notice the listener is gone or their peers disconnect.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// A graceful stop (SIGTERM): stops accepting, closes every session — and every socket
    /// still in its handshake — with 1012 (service restart) so peers reconnect, to another
    /// replica, and waits up to `drain` for the sessions to go. Returns how many sessions were
    /// still open when the time ran out.
    pub async fn drain(mut self, drain: std::time::Duration) -> usize {
        let _ = self.stop.send(true);
        self.state.draining.send_replace(true);
        let closing = self.state.sessions.close_where(
            trustgate_protocol::CloseCode::SERVICE_RESTART,
            "service restart",
            |_| true,
        );
        info!(
            sessions = closing,
            drain_ms = drain.as_millis() as u64,
            "draining"
        );
        let left = self
            .state
            .sessions
            .drained(tokio::time::Instant::now() + drain)
            .await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if left > 0 {
            tracing::warn!(
                sessions = left,
                "drain time over; exiting with sessions open"
            );
        } else {
            info!("drained");
        }
        left
    }

    /// Waits until the listeners stop (they stop only on [`Running::shutdown`] or an error).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts a gateway from a configuration; `[kubernetes]` decides what stands behind the
/// plugins' TokenReview and JWT host calls.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    match &config.kubernetes {
        Some(settings) => {
            let kube = Arc::new(trustgate_k8s::Kubernetes::connect(settings.clone()).await?);
            start_inner(config, Arc::new(KubeServices(kube.clone())), Some(kube)).await
        }
        None => start_inner(config, Arc::new(NO_KUBERNETES), None).await,
    }
}

/// Starts a gateway with `services` behind the plugins' host calls.
pub async fn start_with(
    config: &Config,
    services: Arc<dyn HostServices>,
) -> Result<Running, StartError> {
    start_inner(config, services, None).await
}

async fn start_inner(
    config: &Config,
    services: Arc<dyn HostServices>,
    kubernetes: Option<Arc<trustgate_k8s::Kubernetes>>,
) -> Result<Running, StartError> {
    tls::install_crypto_provider();
    let runtime = Runtime::new(config.plugins.clone(), services.clone())?;
    let (chain, plugins) = config.load_chain(&runtime).await?;
    state::log_chain(&plugins);
    let cluster = match config.cluster.backend {
        StateBackend::Nats => Some(
            cluster::Nats::new(
                &config.cluster,
                std::time::Duration::from_millis(config.pairing.pending_ttl_ms),
            )
            .await?,
        ),
        StateBackend::File => None,
    };
    let pairing = match &cluster {
        Some(nats) => PairingStore::open_nats(nats.clone(), &config.pairing),
        None => PairingStore::open(&config.pairing_store(), &config.pairing)?,
    };
    let token_file = config.admin_token_file();
    let admin_token = admin::load_token(&token_file).map_err(|source| StartError::AdminToken {
        path: token_file.clone(),
        source,
    })?;
    let acceptor = match &config.gateway.tls {
        Some(t) => Some(tls::acceptor(&t.cert_file, &t.key_file)?),
        None => None,
    };
    let state = Arc::new(GatewayState {
        limits: config.limits.clone(),
        pairing,
        sessions: Arc::new(Sessions::default()),
        replicated: cluster
            .as_ref()
            .map(|nats| Arc::new(registry::Replicated::new(&nats.replica, &config.cluster))),
        slots: admission::SessionSlots::new(config.limits.max_connections),
        connections: AtomicUsize::new(0),
        preauth: Arc::new(preauth::PreAuth::new(&config.limits)),
        chain: RwLock::new(LoadedChain {
            chain: Arc::new(chain),
            plugins,
        }),
        admin_token,
        metrics: Metrics::new(),
        audit: Audit::open(&config.audit.output).map_err(StartError::Audit)?,
        cluster: cluster.clone(),
        draining: watch::channel(false).0,
    });
    state
        .metrics
        .collect_from(state.live_values(), kubernetes.clone());
    let bind = |addr: SocketAddr| async move {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok::<_, StartError>((listener, local))
    };
    let (ws, ws_addr) = bind(config.gateway.listen).await?;
    let (admin, admin_addr) = bind(config.admin.listen).await?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let tls = acceptor.is_some();
    tasks.spawn(listener::accept_loop(
        ws,
        acceptor,
        state.clone(),
        stopped.clone(),
    ));
    if let Some(nats) = cluster {
        tasks.spawn(replica::run(nats, Arc::downgrade(&state), stopped.clone()));
    }
    tasks.spawn(admin::serve(admin, state.clone(), stopped));
    // Not in `tasks`: it ends by itself when the state goes.
    tokio::spawn(lifecycle::follow_store(Arc::downgrade(&state)));
    info!(%ws_addr, %admin_addr, tls, plugins = state.plugins().len(), "gateway listening");
    Ok(Running {
        ws_addr,
        admin_addr,
        tls,
        state,
        services,
        cache_dir: config.plugins.cache_dir.clone(),
        kubernetes,
        stop,
        tasks,
    })
}
