//! Why the gateway could not start (or reload): one error that keeps each layer's cause.

use std::net::SocketAddr;

use trustgate_runtime::RuntimeError;

use crate::cluster::ClusterError;
use crate::config::ConfigError;
use crate::pairing_store::PairingError;
use crate::tls;

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
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(#[source] std::io::Error),
    /// The admin token file could not be read or created.
    #[error("admin token file {path}: {source}")]
    AdminToken {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes client could not be set up.
    #[error(transparent)]
    Kubernetes(#[from] trustgate_k8s::SetupError),
    /// The NATS client could not be set up.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}
