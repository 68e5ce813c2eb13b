//! The WebSocket listener: `[gateway]` settings and the accept loop that hands each TCP (or
//! TLS) stream to `connection::serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::connection;
use crate::state::GatewayState;

/// `[gateway]`: where the WebSocket listener binds and where the gateway keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerSettings {
    /// Address of the WebSocket listener.
    pub listen: SocketAddr,
    /// Directory for the pairing store and admin token; relative to the config file.
    pub state_dir: PathBuf,
    /// TLS for the WebSocket listener (plain WebSocket without it).
    pub tls: Option<TlsSettings>,
    /// On SIGTERM: how long live sessions get to go (they are closed with 1012, service
    /// restart, so workers reconnect elsewhere) before the process exits anyway, in ms.
    pub drain_timeout_ms: u64,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            state_dir: PathBuf::from("trustgate-state"),
            tls: None,
            drain_timeout_ms: 10_000,
        }
    }
}

/// `[gateway.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain; relative to the config file.
    pub cert_file: PathBuf,
    /// PEM private key; relative to the config file.
    pub key_file: PathBuf,
}

pub(crate) async fn accept_loop(
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
        // The pre-auth budget is checked before anything else costs: a socket over it is
        // closed now, before TLS or the upgrade.
        let admission = match state.preauth.admit(remote.ip()) {
            Ok(a) => a,
            Err(refused) => {
                state.metrics.record_preauth_refused(refused.as_str());
                debug!(peer = %remote, reason = refused.as_str(), "socket refused by the pre-auth budget");
                drop(stream);
                continue;
            }
        };
        // One deadline from here to hello-ok: TLS, the upgrade, connect and the decision.
        let deadline = tokio::time::Instant::now() + state.limits.handshake_timeout();
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let pre = connection::PreAuth {
            admission,
            deadline,
        };
        match &acceptor {
            None => {
                tokio::spawn(connection::serve(state, stream, remote, false, pre));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout_at(pre.deadline, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls)) => connection::serve(state, tls, remote, true, pre).await,
                        Ok(Err(e)) => debug!(peer = %remote, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(peer = %remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
