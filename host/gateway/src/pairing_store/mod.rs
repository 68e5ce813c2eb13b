//! Device pairing: pending requests, approved devices and their tokens — the store, its
//! lifecycle rules, and the backends that keep it.
//!
//! - `mod.rs` (here): the records, the rules every backend shares (caps on pending requests,
//!   one token per client instance with a lifetime, rotation, revocation) and [`PairingStore`],
//!   the gateway's one handle on it.
//! - `file.rs`: one replica; approved devices in a JSON file written atomically and fsynced,
//!   pending requests in memory.
//! - `nats.rs`: several replicas; both in NATS JetStream key-value buckets, every change a
//!   compare-and-set, each replica reading from a watch-fed local copy.
//!
//! Reads (`device`, `devices`, `pending`, `device_for_token`) come from the backend's local
//! state and never wait on I/O, so logins with a device token keep working while a remote
//! backend is unreachable; writes (pairing requests, approvals, tokens, revocations) go through
//! the backend and fail with [`PairingError::Unavailable`] when it cannot take them.

mod file;
mod nats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use trustgate_protocol::{Role, now_ms};

pub(crate) use file::FileBackend;
pub(crate) use nats::{NatsBackend, follow_devices, follow_pending, load_devices_read_only};

/// `[pairing]`: the pairing store and the lifecycle of device tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairingSettings {
    /// The approved-devices file (`file` backend); default `pairing.json` in the state
    /// directory.
    pub store: Option<PathBuf>,
    /// How long a pending pairing request waits for an operator, in milliseconds.
    pub pending_ttl_ms: u64,
    /// Pending requests at most; beyond it new devices are answered `RATE_LIMITED`
    /// (`too-many-pairing-requests`) until some are decided or expire.
    pub max_pending: usize,
    /// Pending requests at most from one client address (IPv6: one /64); at most
    /// `max_pending`. Unset, it is 4 or `max_pending`, whichever is smaller.
    pub max_pending_per_address: Option<usize>,
    /// How long a device token is valid, in milliseconds; a `reauth` in its second half
    /// rotates it.
    pub token_ttl_ms: u64,
    /// Valid tokens one device may hold at once, one per client instance (`client.instanceId`);
    /// a new instance beyond it replaces the least recently issued token.
    pub max_tokens_per_device: usize,
}

impl Default for PairingSettings {
    fn default() -> Self {
        Self {
            store: None,
            pending_ttl_ms: 300_000,
            max_pending: 256,
            max_pending_per_address: None,
            token_ttl_ms: 30 * 24 * 3_600_000,
            max_tokens_per_device: 8,
        }
    }
}

impl PairingSettings {
    /// Pending requests one address may have: `max_pending_per_address`, or if unset 4 or
    /// `max_pending`, whichever is smaller.
    pub fn pending_per_address(&self) -> usize {
        self.max_pending_per_address
            .unwrap_or(4.min(self.max_pending))
    }

    /// Refuses values that would disable a limit: `(key, message)` of the first offender.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("pending_ttl_ms", self.pending_ttl_ms),
            ("max_pending", self.max_pending as u64),
            ("max_pending_per_address", self.pending_per_address() as u64),
            ("token_ttl_ms", self.token_ttl_ms),
            ("max_tokens_per_device", self.max_tokens_per_device as u64),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if let Some(per) = self.max_pending_per_address
            && per > self.max_pending
        {
            return Err((
                "max_pending_per_address",
                format!(
                    "must not exceed max_pending ({}), got {per}",
                    self.max_pending
                ),
            ));
        }
        if self.max_tokens_per_device > 64 {
            return Err((
                "max_tokens_per_device",
                format!("must be at most 64, got {}", self.max_tokens_per_device),
            ));
        }
        Ok(())
    }
}

const TOKEN_PREFIX: &str = "tgd1_";

// === Records ===

/// An approved device, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceRecord {
    /// The device id (hex SHA-256 of its public key).
    pub id: String,
    /// Its public key, base64url.
    pub public_key: String,
    /// The roles it was approved for (each approval adds one).
    pub roles: Vec<Role>,
    /// The scopes it was approved for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The client id it presented when it asked (its label).
    pub client_id: String,
    /// When an operator last approved it.
    pub approved_at_ms: u64,
    /// Who approved it (`admin-token`, or `operator:<subject>` for an operator session).
    #[serde(default)]
    pub approved_by: String,
    /// Its valid tokens, one per client instance; only hashes are stored.
    #[serde(default)]
    pub tokens: Vec<DeviceToken>,
}

/// One device token, by its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceToken {
    /// The client instance it was issued to (`client.instanceId`, `""` without one).
    pub instance: String,
    /// SHA-256 (hex) of the token; the token itself is never stored.
    pub sha256: String,
    /// When it was issued.
    pub issued_at_ms: u64,
    /// When it stops working.
    pub expires_at_ms: u64,
}

/// What operators see of an approved device (no token hashes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// The device id.
    pub id: String,
    /// Its label: the client id it presented.
    pub client_id: String,
    /// The roles it is approved for.
    pub roles: Vec<Role>,
    /// The scopes it is approved for.
    pub scopes: Vec<String>,
    /// When it was approved.
    pub approved_at_ms: u64,
    /// Who approved it.
    pub approved_by: String,
    /// When this replica last saw it log in (or it is connected now), if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
    /// Its live sessions.
    pub live_sessions: usize,
    /// Its valid tokens: instance, issue and expiry times.
    pub tokens: Vec<TokenView>,
}

/// A device token as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// The client instance.
    pub instance: String,
    /// When it was issued.
    pub issued_at_ms: u64,
    /// When it expires.
    pub expires_at_ms: u64,
}

/// A pairing request waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRequest {
    /// The request id operators approve or reject.
    pub request_id: String,
    /// The device.
    pub device_id: String,
    /// Its public key.
    pub public_key: String,
    /// The role it asks for.
    pub role: Role,
    /// The scopes it asks for.
    pub scopes: Vec<String>,
    /// The client id it presented.
    pub client_id: String,
    /// Where it connected from.
    pub remote_addr: String,
    /// When it first asked.
    pub created_at_ms: u64,
    /// When the request lapses.
    pub expires_at_ms: u64,
}

/// Something every replica must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A device was revoked (or otherwise removed): its sessions must close.
    DeviceRemoved(String),
}

/// Why a device token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// Unknown, revoked or superseded.
    Unknown,
    /// It was valid and has expired.
    Expired,
    /// Not found, but the store has not finished loading (NATS not reached yet): retry.
    Unavailable,
}

/// Why a pairing operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PairingError {
    /// The store file exists but is not a valid store.
    #[error(
        "pairing store {path} is corrupt: {detail}; it was left untouched (repair it or move it away to start with no approved devices)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing the store file failed.
    #[error("pairing store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The backend cannot take writes now (e.g. NATS is unreachable); retry later.
    #[error("the pairing store is unavailable: {0}")]
    Unavailable(String),
    /// Another change to the same entry won; the loser's change was not applied.
    #[error("{0} was changed concurrently; nothing was applied (look again and retry)")]
    Conflict(String),
    /// Too many pending requests (in total, or from this address); retry when one lapses.
    #[error("too many pending pairing requests{}", if *.per_address { " from this address" } else { "" })]
    TooManyPending {
        /// Whether the per-address cap (rather than the total) was hit.
        per_address: bool,
        /// When the oldest counted request lapses, in ms from now.
        retry_after_ms: u64,
    },
    /// No pending request has this id (never existed, already decided, or expired).
    #[error("no pending pairing request `{0}` (it may have expired or been decided already)")]
    UnknownRequest(String),
    /// No approved device has this id.
    #[error("no approved device `{0}`")]
    UnknownDevice(String),
}

// === Backends ===

/// A change to one device record: given the current record (if any), the new one (`None`
/// removes it), or an error that aborts the change.
pub(crate) type DeviceChange<'a> =
    &'a (dyn Fn(Option<&DeviceRecord>) -> Result<Option<DeviceRecord>, PairingError> + Send + Sync);

/// Where the store lives. Reads are local and synchronous; writes are atomic per entry.
#[async_trait]
pub(crate) trait Backend: Send + Sync + 'static {
    /// Approved devices, from local state.
    fn devices(&self) -> Vec<DeviceRecord>;
    /// One approved device, from local state.
    fn device(&self, id: &str) -> Option<DeviceRecord>;
    /// Pending requests (unexpired), from local state.
    fn pending(&self) -> Vec<PendingRequest>;
    /// Files a new pending request.
    async fn put_pending(&self, request: &PendingRequest) -> Result<(), PairingError>;
    /// Takes a pending request out, exactly once: of two replicas deciding the same request
    /// at once, one gets it and the other [`PairingError::UnknownRequest`] or
    /// [`PairingError::Conflict`].
    async fn take_pending(&self, request_id: &str) -> Result<PendingRequest, PairingError>;
    /// The device holding a token with this hash, and that token, from local state (only the
    /// match is copied: this runs on every token login).
    fn find_token(&self, sha256: &str) -> Option<(DeviceRecord, DeviceToken)>;
    /// Whether the local copy has been loaded once (a file store always has).
    fn synced(&self) -> bool {
        true
    }
    /// Applies `change` to a device record atomically (compare-and-set where remote).
    async fn update_device(
        &self,
        id: &str,
        change: DeviceChange<'_>,
    ) -> Result<Option<DeviceRecord>, PairingError>;
}

/// The budget key of a request's address (`ip:port`), as the pre-auth budget counts them.
fn address_key(remote_addr: &str) -> Option<crate::preauth::AddrKey> {
    remote_addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| crate::preauth::AddrKey::from(a.ip()))
}

/// The token of `record` with this hash, if any.
fn token_of(record: &DeviceRecord, sha256: &str) -> Option<DeviceToken> {
    record.tokens.iter().find(|t| t.sha256 == sha256).cloned()
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

// === impl PairingStore ===

/// The pairing store the gateway uses, whatever its backend.
#[derive(Clone)]
pub struct PairingStore {
    backend: Arc<dyn Backend>,
    /// The same backend when it is NATS (the cluster feeds its local copy).
    nats: Option<Arc<NatsBackend>>,
    settings: PairingSettings,
    /// When this replica last saw each device log in (memory only: not worth a write each).
    last_seen: Arc<Mutex<HashMap<String, u64>>>,
    events: broadcast::Sender<StoreEvent>,
}

impl std::fmt::Debug for PairingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl PairingStore {
    /// Opens the file store at `path` (an absent file is an empty store).
    pub fn open(path: &Path, settings: &PairingSettings) -> Result<Self, PairingError> {
        let (events, _) = broadcast::channel(1024);
        let backend = FileBackend::open(path, settings, false, events.clone())?;
        Ok(Self::with_backend(Arc::new(backend), settings, events))
    }

    /// Opens the file store at `path` to look only: no directory is created, and changes
    /// (pairing requests, tokens) live in memory and are never written (`auth explain`).
    pub fn open_read_only(path: &Path, settings: &PairingSettings) -> Result<Self, PairingError> {
        let (events, _) = broadcast::channel(16);
        let backend = FileBackend::open(path, settings, true, events.clone())?;
        Ok(Self::with_backend(Arc::new(backend), settings, events))
    }

    /// The store on NATS, shared with the other replicas.
    pub(crate) fn open_nats(nats: Arc<crate::cluster::Nats>, settings: &PairingSettings) -> Self {
        let (events, _) = broadcast::channel(1024);
        let backend = Arc::new(NatsBackend::new(nats, events.clone()));
        let mut store = Self::with_backend(backend.clone(), settings, events);
        store.nats = Some(backend);
        store
    }

    /// Whether the local copy of the store has been loaded (always, for a file store).
    pub fn synced(&self) -> bool {
        self.backend.synced()
    }

    /// Waits until the local copy of the store is loaded (at once for a file store).
    pub async fn wait_synced(&self) {
        if let Some(nats) = &self.nats {
            nats.wait_synced().await;
        }
    }

    /// The NATS backend, if that is where the store lives.
    pub(crate) fn nats_backend(&self) -> Option<Arc<NatsBackend>> {
        self.nats.clone()
    }

    pub(crate) fn with_backend(
        backend: Arc<dyn Backend>,
        settings: &PairingSettings,
        events: broadcast::Sender<StoreEvent>,
    ) -> Self {
        Self {
            nats: None,
            backend,
            settings: settings.clone(),
            last_seen: Arc::default(),
            events,
        }
    }

    /// Events every replica acts on (revocations), from this replica or — with a shared
    /// backend — from any.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// The approved device with this id, if any.
    pub fn device(&self, device_id: &str) -> Option<DeviceRecord> {
        self.backend.device(device_id)
    }

    /// Every approved device.
    pub fn devices(&self) -> Vec<DeviceRecord> {
        self.backend.devices()
    }

    /// Pending requests that have not expired, oldest first.
    pub fn pending(&self) -> Vec<PendingRequest> {
        let mut list = self.backend.pending();
        list.sort_by(|a, b| {
            (a.created_at_ms, &a.request_id).cmp(&(b.created_at_ms, &b.request_id))
        });
        list
    }

    /// Approved devices as operators see them, with what the live sessions say.
    pub fn device_views(&self, sessions: &crate::registry::Sessions) -> Vec<DeviceView> {
        let live = sessions.list();
        self.devices()
            .into_iter()
            .map(|d| self.view(d, &live))
            .collect()
    }

    /// One approved device as operators see it (no token hashes).
    pub fn device_view(
        &self,
        device_id: &str,
        sessions: &crate::registry::Sessions,
    ) -> Option<DeviceView> {
        let record = self.device(device_id)?;
        Some(self.view(record, &sessions.list()))
    }

    fn view(&self, d: DeviceRecord, live: &[crate::registry::SessionInfo]) -> DeviceView {
        let now = now_ms();
        let live_sessions = live
            .iter()
            .filter(|s| s.device_id.as_deref() == Some(d.id.as_str()))
            .count();
        let last_seen_ms = if live_sessions > 0 {
            Some(now)
        } else {
            self.last_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&d.id)
                .copied()
        };
        DeviceView {
            client_id: d.client_id,
            roles: d.roles,
            scopes: d.scopes,
            approved_at_ms: d.approved_at_ms,
            approved_by: d.approved_by,
            last_seen_ms,
            live_sessions,
            tokens: d
                .tokens
                .iter()
                .filter(|t| t.expires_at_ms > now)
                .map(|t| TokenView {
                    instance: t.instance.clone(),
                    issued_at_ms: t.issued_at_ms,
                    expires_at_ms: t.expires_at_ms,
                })
                .collect(),
            id: d.id,
        }
    }

    /// Records that a device logged in now (for "last seen").
    pub(crate) fn seen(&self, device_id: &str) {
        let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the approved devices: forget entries of devices no longer approved.
        if seen.len() > 4 * self.devices().len() + 64 {
            let approved: std::collections::HashSet<String> =
                self.devices().into_iter().map(|d| d.id).collect();
            seen.retain(|id, _| approved.contains(id));
        }
        seen.insert(device_id.to_string(), now_ms());
    }

    /// Files a pairing request (or returns the open one for the same device and role), within
    /// the caps on pending requests in total and per client address.
    pub async fn request(
        &self,
        device_id: &str,
        public_key: &str,
        role: Role,
        scopes: &[String],
        client_id: &str,
        remote_addr: &str,
    ) -> Result<PendingRequest, PairingError> {
        let now = now_ms();
        let pending = self.backend.pending();
        if let Some(p) = pending
            .iter()
            .find(|p| p.device_id == device_id && p.role == role && p.scopes == scopes)
        {
            return Ok(p.clone());
        }
        let address = address_key(remote_addr);
        let from_here: Vec<u64> = pending
            .iter()
            .filter(|p| address.is_some() && address_key(&p.remote_addr) == address)
            .map(|p| p.expires_at_ms)
            .collect();
        let lapse = |expiries: &mut dyn Iterator<Item = u64>| {
            expiries
                .min()
                .map_or(1_000, |e| e.saturating_sub(now).max(1))
        };
        if from_here.len() >= self.settings.pending_per_address() {
            return Err(PairingError::TooManyPending {
                per_address: true,
                retry_after_ms: lapse(&mut from_here.into_iter()),
            });
        }
        if pending.len() >= self.settings.max_pending {
            return Err(PairingError::TooManyPending {
                per_address: false,
                retry_after_ms: lapse(&mut pending.iter().map(|p| p.expires_at_ms)),
            });
        }
        let mut id = [0u8; 9];
        rand::fill(&mut id);
        let request = PendingRequest {
            request_id: format!("pr-{}", hex::encode(id)),
            device_id: device_id.into(),
            public_key: public_key.into(),
            role,
            scopes: scopes.to_vec(),
            client_id: client_id.into(),
            remote_addr: remote_addr.into(),
            created_at_ms: now,
            expires_at_ms: now + self.settings.pending_ttl_ms,
        };
        self.backend.put_pending(&request).await?;
        Ok(request)
    }

    /// Approves a pending request on behalf of `actor`. Returns once the approval is durable.
    /// A device approved earlier for another role keeps it, and its tokens.
    pub async fn approve(
        &self,
        request_id: &str,
        actor: &str,
    ) -> Result<DeviceRecord, PairingError> {
        let request = self.backend.take_pending(request_id).await?;
        let approve = |current: Option<&DeviceRecord>| {
            let mut record = current.cloned().unwrap_or(DeviceRecord {
                id: request.device_id.clone(),
                public_key: request.public_key.clone(),
                roles: Vec::new(),
                scopes: Vec::new(),
                client_id: request.client_id.clone(),
                approved_at_ms: 0,
                approved_by: String::new(),
                tokens: Vec::new(),
            });
            if !record.roles.contains(&request.role) {
                record.roles.push(request.role);
            }
            for s in &request.scopes {
                if !record.scopes.contains(s) {
                    record.scopes.push(s.clone());
                }
            }
            record.approved_at_ms = now_ms();
            record.approved_by = actor.to_string();
            Ok(Some(record))
        };
        match self
            .backend
            .update_device(&request.device_id, &approve)
            .await
        {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(PairingError::UnknownDevice(request.device_id)),
            Err(e) => {
                // The request was taken but the approval not written: put it back so the
                // operator can try again.
                let _ = self.backend.put_pending(&request).await;
                Err(e)
            }
        }
    }

    /// Rejects a pending request.
    pub async fn reject(&self, request_id: &str) -> Result<PendingRequest, PairingError> {
        self.backend.take_pending(request_id).await
    }

    /// Revokes an approved device: the record and every token go, and every replica closes
    /// the device's sessions. Returns the removed record.
    pub async fn revoke(&self, device_id: &str) -> Result<DeviceRecord, PairingError> {
        let removed: Mutex<Option<DeviceRecord>> = Mutex::new(None);
        let remove = |current: Option<&DeviceRecord>| match current {
            Some(record) => {
                *removed.lock().unwrap_or_else(|p| p.into_inner()) = Some(record.clone());
                Ok(None)
            }
            None => Err(PairingError::UnknownDevice(device_id.to_string())),
        };
        self.backend.update_device(device_id, &remove).await?;
        let record = removed
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| PairingError::UnknownDevice(device_id.to_string()))?;
        // The backend announces the removal (`StoreEvent::DeviceRemoved`) to every replica,
        // this one included, and each closes the device's sessions.
        Ok(record)
    }

    /// Issues a device token to `instance` of an approved device. It replaces that instance's
    /// previous token only; other instances' tokens stay valid. Beyond
    /// `max_tokens_per_device` the least recently issued token goes. `Ok(None)` if the device
    /// is not approved.
    pub async fn issue_token(
        &self,
        device_id: &str,
        instance: &str,
    ) -> Result<Option<(String, u64)>, PairingError> {
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let now = now_ms();
        let expires_at_ms = now + self.settings.token_ttl_ms;
        let hash = token_hash(&token);
        let max = self.settings.max_tokens_per_device;
        let issue = |current: Option<&DeviceRecord>| {
            let Some(record) = current else {
                return Err(PairingError::UnknownDevice(device_id.to_string()));
            };
            let mut record = record.clone();
            record
                .tokens
                .retain(|t| t.instance != instance && t.expires_at_ms > now);
            while record.tokens.len() >= max {
                let oldest = record
                    .tokens
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| t.issued_at_ms)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                record.tokens.remove(oldest);
            }
            record.tokens.push(DeviceToken {
                instance: instance.to_string(),
                sha256: hash.clone(),
                issued_at_ms: now,
                expires_at_ms,
            });
            Ok(Some(record))
        };
        match self.backend.update_device(device_id, &issue).await {
            Ok(_) => Ok(Some((token, expires_at_ms))),
            Err(PairingError::UnknownDevice(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The device a token belongs to and the token's record, if it is valid now.
    pub fn device_for_token(
        &self,
        token: &str,
    ) -> Result<(DeviceRecord, DeviceToken), TokenRefusal> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Err(TokenRefusal::Unknown);
        }
        if let Some((d, t)) = self.backend.find_token(&token_hash(token)) {
            if t.expires_at_ms <= now_ms() {
                return Err(TokenRefusal::Expired);
            }
            return Ok((d, t));
        }
        if self.backend.synced() {
            Err(TokenRefusal::Unknown)
        } else {
            Err(TokenRefusal::Unavailable)
        }
    }

    /// Whether a token with this expiry is due for rotation (in the second half of its life).
    pub(crate) fn due_for_rotation(&self, token: &DeviceToken) -> bool {
        let half = self.settings.token_ttl_ms / 2;
        token.expires_at_ms.saturating_sub(now_ms()) < half
    }
}

#[cfg(test)]
mod tests;
