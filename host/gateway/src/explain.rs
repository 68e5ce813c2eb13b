//! `trustgate auth explain`: one authentication decision made offline, the way a handshake
//! would make it — the configured chain, the configured Kubernetes client, the pairing store —
//! reported with every plugin's step and the answer a client would get. Nothing the gateway
//! decides by is written: no pairing request is filed, no device token issued (the compile
//! cache, which decides nothing, is shared). With `cluster.backend = "nats"` the
//! approved devices are read from the cluster's bucket (bounded by `cluster.request_timeout_ms`;
//! an unreachable NATS is an error, not an empty store).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use trustgate_protocol::{AuthParams, ClientInfo, ErrorBody, Pairing, Role};
use trustgate_runtime::{CachePolicy, HostServices, Runtime, Step};

use crate::audit::{Audit, AuditOutput};
use crate::authenticate::{Attempt, Decision, authenticate};
use crate::cluster::{Nats, StateBackend};
use crate::config::Config;
use crate::error::StartError;
use crate::kube_services::{KubeServices, NO_KUBERNETES};
use crate::metrics::Metrics;
use crate::pairing_store::PairingStore;
use crate::pairing_store::{PairingError, load_devices_read_only};
use crate::registry::Sessions;
use crate::state::{GatewayState, LoadedChain};

/// What a client presents, for [`explain`].
#[derive(Debug, Clone)]
pub struct ExplainInput {
    /// The requested role.
    pub role: Role,
    /// The requested scopes.
    pub scopes: Vec<String>,
    /// The auth method (`none` without credentials).
    pub method: String,
    /// A bearer token.
    pub token: Option<String>,
    /// A device token.
    pub device_token: Option<String>,
    /// A device the client proves (id, public key); taken as verified.
    pub device: Option<(String, String)>,
    /// Where the client connects from.
    pub remote_addr: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client id.
    pub client_id: String,
}

/// The answer a client would get.
#[derive(Debug, Clone)]
pub enum ExplainOutcome {
    /// `hello-ok`.
    Connected {
        /// The subject.
        subject: String,
        /// The method that established it.
        method: String,
        /// The granted role.
        role: Role,
        /// How pairing was satisfied.
        pairing: Pairing,
        /// When the credentials expire.
        expires_at_ms: Option<u64>,
    },
    /// A refusal: the error frame and the cause the gateway log would show.
    Refused {
        /// What the client is told.
        error: Box<ErrorBody>,
        /// The real cause.
        cause: String,
    },
    /// `NOT_PAIRED`: a connect would file a pairing request for this device.
    NotPaired {
        /// What the client is told.
        message: String,
        /// The real cause.
        cause: String,
    },
}

/// One decision and how it came about.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Every plugin that ran, in order.
    pub steps: Vec<Step>,
    /// Who the peer is as far as the chain got.
    pub subject: Option<String>,
    /// The answer.
    pub outcome: ExplainOutcome,
}

/// Decides on `input` with `config`'s chain, Kubernetes client and pairing store.
pub async fn explain(config: &Config, input: &ExplainInput) -> Result<Explanation, StartError> {
    crate::tls::install_crypto_provider();
    let services: Arc<dyn HostServices> = match &config.kubernetes {
        Some(settings) => Arc::new(KubeServices(Arc::new(
            trustgate_k8s::Kubernetes::connect(settings.clone()).await?,
        ))),
        None => Arc::new(NO_KUBERNETES),
    };
    // The compile cache is shared: it holds artifacts keyed by the component's digest, which
    // change no decision, and the second explanation of an unchanged Python or JavaScript
    // policy loads in milliseconds instead of compiling for tens of seconds.
    let runtime = Runtime::new(config.plugins.clone(), services)?;
    let (chain, plugins) = config.load_chain(&runtime).await?;
    // The approved devices where the gateway keeps them: the file, or the cluster's bucket on
    // NATS (read, never written; this process does not join the cluster).
    let (pairing, follow) = match config.cluster.backend {
        StateBackend::File => (
            PairingStore::open_read_only(&config.pairing_store(), &config.pairing)?,
            None,
        ),
        StateBackend::Nats => {
            let nats = Nats::new(
                &config.cluster,
                Duration::from_millis(config.pairing.pending_ttl_ms),
            )
            .await?;
            let store = PairingStore::open_nats(nats.clone(), &config.pairing);
            let backend = store
                .nats_backend()
                .ok_or(PairingError::Unavailable("no NATS backend".into()))?;
            let follow = load_devices_read_only(&nats, backend).await?;
            (store, Some(follow))
        }
    };
    let state = GatewayState {
        limits: config.limits.clone(),
        pairing,
        sessions: Arc::new(Sessions::default()),
        replicated: None,
        slots: crate::admission::SessionSlots::new(config.limits.max_connections),
        connections: AtomicUsize::new(0),
        preauth: Arc::new(crate::preauth::PreAuth::new(&config.limits)),
        chain: RwLock::new(LoadedChain {
            chain: Arc::new(chain),
            plugins,
        }),
        admin_token: String::new(),
        metrics: Metrics::new(),
        audit: Audit::open(&AuditOutput::Off).map_err(StartError::Audit)?,
        cluster: None,
        draining: tokio::sync::watch::channel(false).0,
    };
    let client = ClientInfo {
        id: input.client_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        platform: None,
        instance_id: None,
    };
    let auth = AuthParams {
        method: input.method.clone(),
        token: input.token.clone(),
        device_token: input.device_token.clone(),
    };
    let attempt = Attempt {
        conn_id: "c-explain",
        remote: input.remote_addr,
        tls: input.tls,
        client: &client,
        role: input.role,
        scopes: &input.scopes,
        auth: Some(&auth),
        device: input.device.clone(),
    };
    let decision = authenticate(&state, &attempt, CachePolicy::Use).await;
    if let Some(follow) = follow {
        follow.abort();
    }
    Ok(match decision {
        Decision::Allowed(a) => Explanation {
            steps: a.trace.steps,
            subject: Some(a.identity.subject.clone()),
            outcome: ExplainOutcome::Connected {
                subject: a.identity.subject,
                method: a.identity.method,
                role: a.role,
                pairing: a.pairing,
                expires_at_ms: a.identity.expires_at_ms,
            },
        },
        Decision::Refused(r) => Explanation {
            steps: r.trace.steps,
            subject: r.trace.subject,
            outcome: ExplainOutcome::Refused {
                error: r.error,
                cause: r.cause,
            },
        },
        Decision::PairingRequired(p) => Explanation {
            steps: p.trace.steps,
            subject: p.trace.subject,
            outcome: ExplainOutcome::NotPaired {
                message: p.message.to_string(),
                cause: format!("{}; device {} not paired", p.cause, p.device_id),
            },
        },
    })
}
