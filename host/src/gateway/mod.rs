//! The gateway: composes the configuration, the plugin runtime, the pairing store and the
//! session registry behind a WebSocket listener and an admin HTTP listener.

mod admin;
mod audit;
mod auth;
mod conn;
mod kube_services;
pub mod metrics;
pub mod pairing;
mod reload;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use audit::{Audit, AuditOutput, AuditRecord};
pub use kube_services::KubeServices;
pub use metrics::Metrics;
pub use pairing::{DeviceRecord, PairingError, PairingStore, PendingRequest};
pub use reload::Reloader;
pub use sessions::{SessionInfo, Sessions};

use crate::config::{Config, ConfigError};
use crate::plugin::{Chain, HostServices, NoKubernetes, Runtime, RuntimeError, WasmPlugin};

/// Protocol limits in force.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message, bytes.
    pub max_payload: usize,
    /// Time allowed for `connect`.
    pub handshake_timeout: Duration,
    /// Connection limit.
    pub max_connections: usize,
    /// Tick interval.
    pub tick_interval: Duration,
    /// Invoke timeout.
    pub invoke_timeout: Duration,
    /// Interval of credential re-validation of live sessions.
    pub revalidate_interval: Duration,
}

impl Limits {
    fn from_config(config: &Config) -> Self {
        let l = &config.limits;
        Self {
            max_payload: l.max_payload,
            handshake_timeout: Duration::from_millis(l.handshake_timeout_ms),
            max_connections: l.max_connections,
            tick_interval: Duration::from_millis(l.tick_interval_ms),
            invoke_timeout: Duration::from_millis(l.invoke_timeout_ms),
            revalidate_interval: Duration::from_millis(l.revalidate_interval_ms),
        }
    }
}

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
    pub(crate) limits: Limits,
    pub(crate) pairing: PairingStore,
    pub(crate) sessions: Sessions,
    pub(crate) connections: AtomicUsize,
    chain: RwLock<LoadedChain>,
    admin_token: String,
    pub(crate) metrics: Metrics,
    pub(crate) audit: Audit,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
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
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration (or a plugin it references) is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The plugin runtime could not be created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The pairing store could not be opened.
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(std::io::Error),
    /// The admin token file could not be read or created.
    #[error("admin token file {path}: {source}")]
    AdminToken {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The Kubernetes client could not be set up.
    #[error(transparent)]
    Kubernetes(#[from] crate::k8s::SetupError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

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
    /// The Kubernetes client, if configured.
    pub kubernetes: Option<Arc<crate::k8s::Kubernetes>>,
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
        }
    }

    /// Stops accepting connections and waits for the listeners to end. Live sessions end
    /// when their tasks notice the listener is gone or their peers disconnect.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// Waits until the listeners stop (they stop only on [`Running::shutdown`] or an error).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

fn load_admin_token(path: &std::path::Path) -> Result<String, StartError> {
    let err = |source| StartError::AdminToken {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(err(std::io::Error::other("the file is empty"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let mut raw = [0u8; 24];
            rand::fill(&mut raw);
            let token = hex::encode(raw);
            crate::fsutil::write_atomic(path, token.as_bytes()).map_err(err)?;
            info!(path = %path.display(), "created a new admin API token");
            Ok(token)
        }
        Err(e) => Err(err(e)),
    }
}

/// Starts a gateway from a configuration; `[kubernetes]` decides what stands behind the
/// plugins' TokenReview and JWT host calls.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    match config.kubernetes_settings() {
        Some(settings) => {
            let kube = Arc::new(crate::k8s::Kubernetes::connect(settings).await?);
            start_inner(config, Arc::new(KubeServices(kube.clone())), Some(kube)).await
        }
        None => start_inner(config, Arc::new(NoKubernetes), None).await,
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
    kubernetes: Option<Arc<crate::k8s::Kubernetes>>,
) -> Result<Running, StartError> {
    crate::tls::install_crypto_provider();
    let runtime = Runtime::new(config.runtime_options(), services.clone())?;
    let (chain, plugins) = config.load_chain(&runtime).await?;
    let pairing = PairingStore::open(
        &config.pairing_store(),
        Duration::from_millis(config.pairing.pending_ttl_ms),
    )?;
    let admin_token = load_admin_token(&config.admin_token_file())?;
    let acceptor = match config.tls_files() {
        Some((cert, key)) => Some(crate::tls::acceptor(&cert, &key).map_err(StartError::Tls)?),
        None => None,
    };
    let state = Arc::new(GatewayState {
        limits: Limits::from_config(config),
        pairing,
        sessions: Sessions::default(),
        connections: AtomicUsize::new(0),
        chain: RwLock::new(LoadedChain {
            chain: Arc::new(chain),
            plugins,
        }),
        admin_token,
        metrics: Metrics::new(),
        audit: Audit::open(&config.audit_output()).map_err(StartError::Audit)?,
    });
    state
        .metrics
        .collect_from(Arc::downgrade(&state), kubernetes.clone());
    let ws = TcpListener::bind(config.gateway.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.gateway.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin.listen,
            source,
        })?;
    let ws_addr = ws.local_addr().map_err(|source| StartError::Bind {
        addr: config.gateway.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: config.admin.listen,
        source,
    })?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let tls = acceptor.is_some();
    tasks.spawn(accept_loop(ws, acceptor, state.clone(), stopped.clone()));
    tasks.spawn(admin::serve(admin, state.clone(), stopped));
    info!(%ws_addr, %admin_addr, tls, plugins = state.plugins().len(), "gateway listening");
    Ok(Running {
        ws_addr,
        admin_addr,
        tls,
        state,
        services,
        kubernetes,
        stop,
        tasks,
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<GatewayState>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        match &acceptor {
            None => {
                tokio::spawn(conn::serve(state, stream, remote, false));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        state.limits.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await;
                    match handshake {
                        Ok(Ok(tls)) => conn::serve(state, tls, remote, true).await,
                        Ok(Err(e)) => debug!(peer = %remote, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(peer = %remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
