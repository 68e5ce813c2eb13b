//! The pairing store on NATS JetStream, shared by every replica: approved devices (with their
//! token hashes) in one key-value bucket, pending requests in another whose entries expire
//! with `pairing.pending_ttl_ms`.
//!
//! Every change is a compare-and-set on the entry's revision: of two replicas deciding the same
//! request at once exactly one takes it; a device change that loses a race is re-applied to the
//! winner's record (a few times, then `Conflict`). Each replica follows both buckets into a
//! local copy, so reads — and so device-token logins — never wait on NATS and keep working
//! while it is unreachable; writes then fail with `Unavailable`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;
use tracing::warn;
use trustgate_protocol::now_ms;

use super::{
    Backend, DeviceChange, DeviceRecord, DeviceToken, PairingError, PendingRequest, StoreEvent,
};
use crate::cluster::{ClusterError, Nats, Stores, devices_bucket_read_only, follow_bucket};

/// How often a device change that lost a compare-and-set is re-applied before `Conflict`.
const CAS_ATTEMPTS: usize = 5;

/// The local copy of both buckets. A removed entry stays as a tombstone (`None`) with the
/// revision it was removed at, so a put of an older revision arriving late through the watch
/// cannot bring a revoked device (or a decided request) back.
#[derive(Default)]
struct Copy {
    devices: HashMap<String, (Option<DeviceRecord>, u64)>,
    pending: HashMap<String, (Option<PendingRequest>, u64)>,
}

/// The NATS backend.
pub(crate) struct NatsBackend {
    nats: Arc<Nats>,
    copy: Mutex<Copy>,
    /// Whether the devices bucket has been read to its end once.
    synced: tokio::sync::watch::Sender<bool>,
    events: broadcast::Sender<StoreEvent>,
}

impl NatsBackend {
    /// The buckets, or `Unavailable` while NATS has not been reached yet.
    fn stores(&self) -> Result<&Stores, PairingError> {
        self.nats
            .stores()
            .ok_or_else(|| PairingError::Unavailable("NATS is not reachable yet".into()))
    }

    pub(crate) fn new(nats: Arc<Nats>, events: broadcast::Sender<StoreEvent>) -> Self {
        Self {
            nats,
            copy: Mutex::default(),
            synced: tokio::sync::watch::channel(false).0,
            events,
        }
    }

    /// Waits until the devices bucket has been read to its end once.
    pub(crate) async fn wait_synced(&self) {
        let mut synced = self.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Copy> {
        self.copy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a device entry (from the watch, or from this replica's own write) unless the
    /// copy already holds a newer revision. A removal is announced to the gateway.
    fn apply_device(&self, key: &str, record: Option<DeviceRecord>, revision: u64) {
        let mut copy = self.lock();
        let was_live = match copy.devices.get(key) {
            // The same revision again (our own write echoed by the watch) changes nothing,
            // except that a removal at the revision it removed is applied.
            Some((_, r)) if *r > revision || (*r == revision && record.is_some()) => return,
            Some((d, _)) => d.is_some(),
            None => false,
        };
        let removed = record.is_none() && was_live;
        copy.devices.insert(key.to_string(), (record, revision));
        drop(copy);
        if removed {
            let _ = self.events.send(StoreEvent::DeviceRemoved(key.to_string()));
        }
    }

    fn apply_pending(&self, key: &str, request: Option<PendingRequest>, revision: u64) {
        let mut copy = self.lock();
        if copy.pending.get(key).is_some_and(|(_, r)| *r >= revision) {
            return;
        }
        copy.pending.insert(key.to_string(), (request, revision));
    }

    async fn bounded<T, E: std::fmt::Display>(
        &self,
        what: &str,
        op: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, PairingError> {
        tokio::time::timeout(self.nats.op_timeout(), op)
            .await
            .map_err(|_| PairingError::Unavailable(format!("NATS did not answer ({what})")))
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> PairingError {
    PairingError::Unavailable(format!("NATS {what}: {e}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

#[async_trait]
impl Backend for NatsBackend {
    fn devices(&self) -> Vec<DeviceRecord> {
        let mut v: Vec<DeviceRecord> = self
            .lock()
            .devices
            .values()
            .filter_map(|(d, _)| d.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn device(&self, id: &str) -> Option<DeviceRecord> {
        self.lock().devices.get(id).and_then(|(d, _)| d.clone())
    }

    fn find_token(&self, sha256: &str) -> Option<(DeviceRecord, DeviceToken)> {
        self.lock().devices.values().find_map(|(d, _)| {
            let d = d.as_ref()?;
            super::token_of(d, sha256).map(|t| (d.clone(), t))
        })
    }

    fn pending(&self) -> Vec<PendingRequest> {
        let now = now_ms();
        let mut copy = self.lock();
        // The bucket's max age removes lapsed requests without telling watchers; tombstones
        // of requests are dropped with them (a request id is never reused).
        copy.pending
            .retain(|_, (p, _)| p.as_ref().is_some_and(|p| p.expires_at_ms > now));
        copy.pending
            .values()
            .filter_map(|(p, _)| p.clone())
            .collect()
    }

    fn synced(&self) -> bool {
        *self.synced.borrow()
    }

    async fn put_pending(&self, request: &PendingRequest) -> Result<(), PairingError> {
        let stores = self.stores()?;
        let create = stores.pending.create(&request.request_id, encode(request));
        match self.bounded("pairing request", create).await? {
            Ok(revision) => {
                self.apply_pending(&request.request_id, Some(request.clone()), revision);
                Ok(())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(
                PairingError::Conflict(format!("pairing request {}", request.request_id)),
            ),
            Err(e) => Err(unavailable("pairing request", e)),
        }
    }

    async fn take_pending(&self, request_id: &str) -> Result<PendingRequest, PairingError> {
        let stores = self.stores()?;
        let unknown = || PairingError::UnknownRequest(request_id.to_string());
        if !kv_key_ok(request_id) {
            return Err(unknown());
        }
        let entry = self
            .bounded("pairing request", stores.pending.entry(request_id))
            .await?
            .map_err(|e| unavailable("pairing request", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(unknown());
        };
        let request: PendingRequest =
            serde_json::from_slice(&entry.value).map_err(|_| unknown())?;
        if request.expires_at_ms <= now_ms() {
            return Err(unknown());
        }
        let delete = stores
            .pending
            .delete_expect_revision(request_id, Some(entry.revision));
        match self.bounded("pairing request", delete).await? {
            Ok(()) => {
                self.apply_pending(request_id, None, entry.revision);
                Ok(request)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(
                PairingError::Conflict(format!("pairing request {request_id}")),
            ),
            Err(e) => Err(unavailable("pairing request", e)),
        }
    }

    async fn update_device(
        &self,
        id: &str,
        change: DeviceChange<'_>,
    ) -> Result<Option<DeviceRecord>, PairingError> {
        let stores = self.stores()?;
        if !kv_key_ok(id) {
            return change(None);
        }
        for _ in 0..CAS_ATTEMPTS {
            let entry = self
                .bounded("device", stores.devices.entry(id))
                .await?
                .map_err(|e| unavailable("device", e))?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    Some(
                        serde_json::from_slice::<DeviceRecord>(&e.value).map_err(|err| {
                            PairingError::Unavailable(format!("device {id} is unreadable: {err}"))
                        })?,
                    ),
                    Some(e.revision),
                ),
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let updated = change(current.as_ref())?;
            let written = match (&updated, revision) {
                (Some(record), Some(rev)) => self
                    .bounded("device", stores.devices.update(id, encode(record), rev))
                    .await?
                    .map(Some)
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                (Some(record), None) => self
                    .bounded("device", stores.devices.create(id, encode(record)))
                    .await?
                    .map(Some)
                    .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
                (None, Some(rev)) if current.is_some() => self
                    .bounded(
                        "device",
                        stores.devices.delete_expect_revision(id, Some(rev)),
                    )
                    .await?
                    .map(|()| None)
                    .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
                (None, _) => return Ok(None),
            };
            match written {
                Ok(Some(revision)) => {
                    self.apply_device(id, updated.clone(), revision);
                    return Ok(updated);
                }
                Ok(None) => {
                    // The delete marker's own revision comes with the watch; the tombstone at
                    // the deleted revision already keeps older puts out.
                    self.apply_device(id, None, revision.unwrap_or(0));
                    return Ok(None);
                }
                Err(true) => continue, // lost a race: re-read and re-apply
                Err(false) => {
                    return Err(PairingError::Unavailable(format!(
                        "NATS refused the change to device {id}"
                    )));
                }
            }
        }
        Err(PairingError::Conflict(format!("device {id}")))
    }
}

/// Whether `key` can be a key-value key (ids come from clients; a bad one is simply unknown).
fn kv_key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Feeds the local copy of approved devices; a device removed on any replica is announced
/// here (and its sessions close).
pub(crate) async fn follow_devices(backend: Arc<NatsBackend>, store: kv::Store) {
    let b = backend.clone();
    follow_bucket(
        store,
        "devices",
        move |entry| {
            let record = match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<DeviceRecord>(&entry.value) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        warn!(key = %entry.key, error = %e, "unreadable device entry ignored");
                        return;
                    }
                },
                _ => None,
            };
            backend.apply_device(&entry.key, record, entry.revision);
        },
        move || {
            b.synced.send_if_modified(|s| !std::mem::replace(s, true));
        },
    )
    .await;
}

/// Feeds the local copy of pending requests.
pub(crate) async fn follow_pending(backend: Arc<NatsBackend>, store: kv::Store) {
    follow_bucket(
        store,
        "pending",
        move |entry| {
            let request = match entry.operation {
                kv::Operation::Put => {
                    match serde_json::from_slice::<PendingRequest>(&entry.value) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            warn!(key = %entry.key, error = %e, "unreadable pairing request ignored");
                            return;
                        }
                    }
                }
                _ => None,
            };
            backend.apply_pending(&entry.key, request, entry.revision);
        },
        || {},
    )
    .await;
}

/// Loads the approved devices from NATS into `backend`'s local copy for a look that changes
/// nothing (`auth explain`): the devices bucket is opened, never created, no session or
/// heartbeat is published and nothing is served. Returns once the copy holds every device, with
/// the task that keeps following the bucket (abort it when done); each step is bounded by
/// `cluster.request_timeout_ms`.
pub(crate) async fn load_devices_read_only(
    nats: &Nats,
    backend: Arc<NatsBackend>,
) -> Result<tokio::task::JoinHandle<()>, ClusterError> {
    let store = devices_bucket_read_only(nats).await?;
    let follow = tokio::spawn(follow_devices(backend.clone(), store));
    if tokio::time::timeout(nats.op_timeout(), backend.wait_synced())
        .await
        .is_err()
    {
        follow.abort();
        return Err(nats.unreachable("reading the approved devices"));
    }
    Ok(follow)
}
