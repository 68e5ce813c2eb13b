//! Several replicas on NATS: the connection and the buckets they share, nothing above them.
//!
//! - `settings.rs`: `[cluster]`.
//! - `mod.rs` (here): the NATS connection and its buckets, opened in the background so a
//!   replica starts (and serves Kubernetes workers and device-token logins) without NATS, and
//!   the one watch loop (`follow_bucket`) that feeds every local copy of a bucket.
//!
//! What is kept in the buckets lives with its owner, above this module: the pairing store's
//! NATS backend (`pairing_store/nats.rs`), the cluster-wide session registry
//! (`registry/replicated.rs`) and `worker.invoke` routed between replicas (`invoke/remote.rs`);
//! `replica.rs` starts them.

mod settings;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::OnceCell;
use tracing::{info, warn};

pub use settings::{Buckets, ClusterSettings, ClusterTls, StateBackend};

/// Why the NATS connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The credentials file could not be read.
    #[error("cluster.credentials_file {path}: {source}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be created.
    #[error("cannot set up the NATS client: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// A bucket could not be opened (`auth explain`, which never creates one).
    #[error("cannot open the NATS bucket `{bucket}` (cluster.buckets): {source}")]
    Bucket {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::KeyValueError,
    },
    /// NATS did not answer, or the devices were not read to their end, within the bound.
    #[error("NATS did not answer within {waited:?} while {what} (cluster.servers: {servers:?})")]
    Unreachable {
        /// What was being done.
        what: &'static str,
        /// How long it was given.
        waited: Duration,
        /// The configured servers.
        servers: Vec<String>,
    },
}

/// The longest pause between two attempts to reach NATS again: once NATS is back, every replica
/// is writing again within about this long (docs/operations.md). The library's default backoff
/// grows to 4 s; half of it keeps a replica's writes unavailable for less time after an outage
/// while costing a server at most one connection attempt per replica every 2 s.
pub(crate) const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// The first retry at once, then doubling from 2 ms up to [`MAX_RECONNECT_DELAY`].
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(20);
    Duration::from_millis(1u64 << exp).min(MAX_RECONNECT_DELAY)
}

/// The buckets, once opened.
pub(crate) struct Stores {
    pub(crate) devices: kv::Store,
    pub(crate) pending: kv::Store,
    pub(crate) sessions: kv::Store,
}

/// This replica's handle on NATS.
pub(crate) struct Nats {
    pub(crate) replica: String,
    pub(crate) settings: ClusterSettings,
    pub(crate) client: async_nats::Client,
    js: jetstream::Context,
    stores: OnceCell<Stores>,
    pending_ttl: Duration,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Nats {
    /// Creates the client. It connects (and reconnects) in the background: nothing here waits
    /// for a server.
    pub(crate) async fn new(
        settings: &ClusterSettings,
        pending_ttl: Duration,
    ) -> Result<Arc<Self>, ClusterError> {
        let replica = settings.replica();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("trustgate-{replica}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(Duration::from_millis(settings.request_timeout_ms))
            .ping_interval(Duration::from_secs(5));
        if let Some(path) = &settings.credentials_file {
            options = options.credentials_file(path).await.map_err(|source| {
                ClusterError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        if let Some(tls) = &settings.tls {
            options = options
                .add_root_certificates(tls.ca_file.clone())
                .require_tls(true);
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let servers: Vec<async_nats::ServerAddr> = settings
            .servers
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let client = options
            .connect(servers)
            .await
            .map_err(ClusterError::Connect)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(settings.request_timeout_ms));
        info!(replica = %replica, servers = ?settings.servers, "cluster state on NATS");
        Ok(Arc::new(Self {
            replica,
            settings: settings.clone(),
            client,
            js,
            stores: OnceCell::new(),
            pending_ttl,
        }))
    }

    /// The buckets, or `None` while they are not open yet.
    pub(crate) fn stores(&self) -> Option<&Stores> {
        self.stores.get()
    }

    /// The buckets, opened (and created if needed) first if they are not open yet: retried
    /// until NATS answers, so it returns only once they are.
    pub(crate) async fn open(&self) -> &Stores {
        self.stores.get_or_init(|| self.open_stores()).await
    }

    /// NATS did not answer `what` within the bound on one operation.
    pub(crate) fn unreachable(&self, what: &'static str) -> ClusterError {
        ClusterError::Unreachable {
            what,
            waited: self.op_timeout(),
            servers: self.settings.servers.clone(),
        }
    }

    /// The bound on one key-value operation.
    pub(crate) fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.request_timeout_ms)
    }

    /// Opens (creating if needed) the three buckets; retried until it works.
    async fn open_stores(&self) -> Stores {
        let b = &self.settings.buckets;
        let mut delay = Duration::from_millis(100);
        loop {
            let open = async {
                let bucket = |name: &str, max_age: Duration, description: &str| kv::Config {
                    bucket: name.to_string(),
                    description: description.to_string(),
                    history: 1,
                    max_age,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: self.settings.bucket_replicas,
                    ..Default::default()
                };
                let devices = self
                    .js
                    .create_or_update_key_value(bucket(
                        &b.devices,
                        Duration::ZERO,
                        "trustgate approved devices",
                    ))
                    .await?;
                let pending = self
                    .js
                    .create_or_update_key_value(bucket(
                        &b.pending,
                        self.pending_ttl,
                        "trustgate pending pairing requests",
                    ))
                    .await?;
                let sessions = self
                    .js
                    .create_or_update_key_value(bucket(
                        &b.sessions,
                        Duration::ZERO,
                        "trustgate sessions and replica heartbeats",
                    ))
                    .await?;
                Ok::<_, async_nats::jetstream::context::CreateKeyValueError>(Stores {
                    devices,
                    pending,
                    sessions,
                })
            };
            match tokio::time::timeout(self.op_timeout() * 2, open).await {
                Ok(Ok(stores)) => return stores,
                Ok(Err(e)) => warn!(error = %e, "cannot open the NATS buckets; retrying"),
                Err(_) => warn!("NATS did not answer; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Follows a bucket for as long as the gateway runs, resuming after the last revision seen
/// when the watch breaks (NATS restarted, connection lost).
pub(crate) async fn follow_bucket(
    store: kv::Store,
    what: &'static str,
    mut apply: impl FnMut(kv::Entry),
    mut caught_up: impl FnMut(),
) {
    let mut last = 0u64;
    let mut delay = Duration::from_millis(100);
    loop {
        // First the current value of every key, then changes; after a break, every change
        // since the last revision seen (deletions included).
        let watch = if last == 0 {
            store.watch_with_history(">").await
        } else {
            store.watch_all_from_revision(last + 1).await
        };
        match watch {
            Ok(mut w) => {
                delay = Duration::from_millis(100);
                if last == 0
                    && let Ok(Ok(status)) =
                        tokio::time::timeout(Duration::from_secs(2), store.status()).await
                    && status.values() == 0
                {
                    caught_up();
                }
                while let Some(entry) = w.next().await {
                    match entry {
                        Ok(entry) => {
                            last = last.max(entry.revision);
                            let done = entry.delta == 0;
                            apply(entry);
                            if done {
                                caught_up();
                            }
                        }
                        Err(e) => {
                            warn!(bucket = what, error = %e, "watch failed; resuming");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(bucket = what, error = %e, "cannot watch; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Opens the devices bucket for reading only (`auth explain`): never created, bounded by
/// `cluster.request_timeout_ms`.
pub(crate) async fn devices_bucket_read_only(nats: &Nats) -> Result<kv::Store, ClusterError> {
    let bucket = nats.settings.buckets.devices.clone();
    match tokio::time::timeout(nats.op_timeout(), nats.js.get_key_value(bucket.clone())).await {
        Ok(Ok(store)) => Ok(store),
        // A request that failed because no server is reachable is said as that, not as the
        // client library's chain of timeouts.
        Err(_) => Err(nats.unreachable("opening the devices bucket")),
        Ok(Err(_))
            if nats.client.connection_state() != async_nats::connection::State::Connected =>
        {
            Err(nats.unreachable("opening the devices bucket"))
        }
        Ok(Err(source)) => Err(ClusterError::Bucket { bucket, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_starts_at_once_and_never_pauses_longer_than_the_bound() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(2));
        assert_eq!(reconnect_delay(5), Duration::from_millis(16));
        let mut last = Duration::ZERO;
        for attempts in 0..10_000 {
            let d = reconnect_delay(attempts);
            assert!(d >= last, "the pause never shrinks while NATS stays away");
            assert!(d <= MAX_RECONNECT_DELAY);
            last = d;
        }
        assert_eq!(last, MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}
