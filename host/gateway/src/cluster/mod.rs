//! Several replicas on NATS: the connection and buckets they share, the cluster-wide session
//! registry, and `worker.invoke` routed to the replica that holds the worker.
//!
//! - `settings.rs`: `[cluster]`.
//! - `mod.rs` (here): the NATS connection and its buckets, opened in the background so a
//!   replica starts (and serves Kubernetes workers and device-token logins) without NATS, and
//!   the one watch loop (`follow_bucket`) that feeds every local copy of a bucket.
//! - `registry.rs`: this replica's sessions published to the sessions bucket, the other
//!   replicas' read from it, and heartbeats that make a crashed replica's sessions vanish.
//! - `invoke.rs`: the request/reply subject each replica serves invocations on.
//!
//! The pairing store's NATS backend (`pairing_store/nats.rs`) uses the same connection.

mod invoke;
mod registry;
mod settings;

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::sync::OnceCell;
use tracing::{info, warn};

pub(crate) use invoke::invoke_remote;
pub(crate) use registry::{ClusterSession, Registry};
pub use settings::{Buckets, ClusterSettings, ClusterTls, StateBackend};

use crate::GatewayState;
use crate::pairing_store::{NatsBackend, PairingError};

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
    pub(crate) registry: Registry,
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
            registry: Registry::new(&replica, settings),
            replica,
            settings: settings.clone(),
            client,
            js,
            stores: OnceCell::new(),
            pending_ttl,
        }))
    }

    /// The buckets, or `Unavailable` while they are not open yet.
    pub(crate) fn stores(&self) -> Result<&Stores, PairingError> {
        self.stores
            .get()
            .ok_or_else(|| PairingError::Unavailable("NATS is not reachable yet".into()))
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

/// Loads the approved devices from NATS into `pairing`'s local copy for a look that changes
/// nothing (`auth explain`): the devices bucket is opened, never created, no session or
/// heartbeat is published and nothing is served. Returns once the copy holds every device, with
/// the task that keeps following the bucket (abort it when done); each step is bounded by
/// `cluster.request_timeout_ms`.
pub(crate) async fn load_devices_read_only(
    nats: &Nats,
    pairing: Arc<NatsBackend>,
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let bound = nats.op_timeout();
    let unreachable = |what| ClusterError::Unreachable {
        what,
        waited: bound,
        servers: nats.settings.servers.clone(),
    };
    let bucket = nats.settings.buckets.devices.clone();
    let store = match tokio::time::timeout(bound, nats.js.get_key_value(bucket.clone())).await {
        Ok(Ok(store)) => store,
        // A request that failed because no server is reachable is said as that, not as the
        // client library's chain of timeouts.
        Err(_) => return Err(unreachable("opening the devices bucket")),
        Ok(Err(_))
            if nats.client.connection_state() != async_nats::connection::State::Connected =>
        {
            return Err(unreachable("opening the devices bucket"));
        }
        Ok(Err(source)) => return Err(ClusterError::Bucket { bucket, source }),
    };
    let follow = tokio::spawn(crate::pairing_store::follow_devices(pairing.clone(), store));
    if tokio::time::timeout(bound, pairing.wait_synced())
        .await
        .is_err()
    {
        follow.abort();
        return Err(unreachable("reading the approved devices"));
    }
    Ok(follow)
}

/// Runs this replica's part of the cluster for as long as the gateway does: opens the buckets,
/// then feeds the pairing store's and the registry's local copies, publishes this replica's
/// sessions and heartbeats, and serves invocations routed here.
pub(crate) async fn run(
    nats: Arc<Nats>,
    state: Weak<GatewayState>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        () = run_until_gone(nats, state) => {}
        _ = stopped.wait_for(|s| *s) => {}
    }
}

async fn run_until_gone(nats: Arc<Nats>, state: Weak<GatewayState>) {
    let stores = nats.open_stores().await;
    let _ = nats.stores.set(stores);
    let Ok(stores) = nats.stores() else { return };
    info!(replica = %nats.replica, "NATS buckets open");
    let Some(pairing) = state.upgrade().and_then(|s| s.pairing.nats_backend()) else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::pairing_store::follow_devices(
        pairing.clone(),
        stores.devices.clone(),
    ));
    tasks.spawn(crate::pairing_store::follow_pending(
        pairing,
        stores.pending.clone(),
    ));
    tasks.spawn(registry::follow(nats.clone(), stores.sessions.clone()));
    tasks.spawn(registry::publish(
        nats.clone(),
        stores.sessions.clone(),
        state.clone(),
    ));
    tasks.spawn(invoke::serve(nats.clone(), state.clone()));
    // The tasks end when the gateway state goes (or never); keep them owned here.
    while tasks.join_next().await.is_some() {
        if state.upgrade().is_none() {
            tasks.abort_all();
            return;
        }
    }
}

/// Sessions as operators see them (`workers.list`, the admin API): this replica's and — on
/// NATS — every live replica's, each naming its `replica`, ordered by connection id.
pub(crate) fn sessions_view(state: &GatewayState, workers_only: bool) -> Vec<serde_json::Value> {
    let keep =
        |role: trustgate_protocol::Role| !workers_only || role == trustgate_protocol::Role::Worker;
    let local = state.sessions.list().into_iter().filter(|s| keep(s.role));
    let Some(nats) = &state.cluster else {
        return local
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .collect();
    };
    let mut all: Vec<ClusterSession> = local
        .map(|info| ClusterSession {
            replica: nats.replica.clone(),
            info,
        })
        .chain(
            nats.registry
                .remote_sessions()
                .into_iter()
                .filter(|s| keep(s.info.role)),
        )
        .collect();
    all.sort_by(|a, b| a.info.conn_id.cmp(&b.info.conn_id));
    all.into_iter()
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect()
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
