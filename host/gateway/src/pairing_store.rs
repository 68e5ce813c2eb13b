//! Device pairing: pending requests (in memory, they expire in minutes) and approved devices
//! (persisted). Every change to the approved set is written atomically and fsynced before it
//! is acknowledged, so a crash never loses an approval or leaves a half-written store; a store
//! that does not parse is reported, never silently replaced.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trustgate_protocol::{Role, now_ms};

use crate::fsutil::write_atomic;

/// `[pairing]`: the pairing store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairingSettings {
    /// The approved-devices file; default `pairing.json` in the state directory.
    pub store: Option<PathBuf>,
    /// How long a pending pairing request waits for an operator, in milliseconds.
    pub pending_ttl_ms: u64,
    /// Pending requests at most; beyond it new devices are answered `RATE_LIMITED`
    /// (`too-many-pairing-requests`) until some are decided or expire.
    pub max_pending: usize,
    /// Pending requests at most from one client address (IPv6: one /64).
    pub max_pending_per_address: usize,
}

impl Default for PairingSettings {
    fn default() -> Self {
        Self {
            store: None,
            pending_ttl_ms: 300_000,
            max_pending: 256,
            max_pending_per_address: 4,
        }
    }
}

impl PairingSettings {
    /// Refuses values that would disable a limit: `(key, message)` of the first offender.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("pending_ttl_ms", self.pending_ttl_ms),
            ("max_pending", self.max_pending as u64),
            (
                "max_pending_per_address",
                self.max_pending_per_address as u64,
            ),
        ] {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.max_pending_per_address > self.max_pending {
            return Err((
                "max_pending_per_address",
                format!(
                    "must not exceed max_pending ({}), got {}",
                    self.max_pending, self.max_pending_per_address
                ),
            ));
        }
        Ok(())
    }
}

const STORE_VERSION: u32 = 1;
const TOKEN_PREFIX: &str = "tgd1_";

/// An approved device.
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
    /// The client id it presented when it asked.
    pub client_id: String,
    /// When an operator approved it.
    pub approved_at_ms: u64,
    /// SHA-256 (hex) of its current device token; the token itself is never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// A pairing request waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    devices: Vec<DeviceRecord>,
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
    /// Reading or writing the store failed.
    #[error("pairing store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
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
}

#[derive(Default)]
struct State {
    devices: BTreeMap<String, DeviceRecord>,
    pending: HashMap<String, PendingRequest>,
}

/// The pairing store.
pub struct PairingStore {
    path: PathBuf,
    max_pending: usize,
    max_pending_per_address: usize,
    /// Opened to look, not to change: nothing is created or written (`auth explain`).
    read_only: bool,
    pending_ttl: Duration,
    state: Mutex<State>,
}

impl std::fmt::Debug for PairingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The budget key of a request's address (`ip:port`), as the pre-auth budget counts them.
fn address_key(remote_addr: &str) -> Option<crate::preauth::AddrKey> {
    remote_addr
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| crate::preauth::AddrKey::from(a.ip()))
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl PairingStore {
    /// Opens the store at `path` (an absent file is an empty store).
    pub fn open(path: &Path, settings: &PairingSettings) -> Result<Self, PairingError> {
        Self::open_with(path, settings, false)
    }

    /// Opens the store at `path` to look only: no directory is created, and changes (pairing
    /// requests, tokens) live in memory and are never written.
    pub fn open_read_only(path: &Path, settings: &PairingSettings) -> Result<Self, PairingError> {
        Self::open_with(path, settings, true)
    }

    fn open_with(
        path: &Path,
        settings: &PairingSettings,
        read_only: bool,
    ) -> Result<Self, PairingError> {
        let pending_ttl = Duration::from_millis(settings.pending_ttl_ms);
        let mut state = State::default();
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: StoreFile =
                    serde_json::from_slice(&bytes).map_err(|e| PairingError::Corrupt {
                        path: path.to_path_buf(),
                        detail: e.to_string(),
                    })?;
                if file.version != STORE_VERSION {
                    return Err(PairingError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!(
                            "version {} (this gateway reads version {STORE_VERSION})",
                            file.version
                        ),
                    });
                }
                state.devices = file
                    .devices
                    .into_iter()
                    .map(|d| (d.id.clone(), d))
                    .collect();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !read_only
                    && let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|source| PairingError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
            }
            Err(source) => {
                return Err(PairingError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            max_pending: settings.max_pending,
            max_pending_per_address: settings.max_pending_per_address,
            read_only,
            pending_ttl,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every mutation persists
        // before it is applied), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, devices: &BTreeMap<String, DeviceRecord>) -> Result<(), PairingError> {
        if self.read_only {
            return Ok(());
        }
        let file = StoreFile {
            version: STORE_VERSION,
            devices: devices.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| PairingError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.path, &bytes).map_err(|source| PairingError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// The approved device with this id, if any.
    pub fn device(&self, device_id: &str) -> Option<DeviceRecord> {
        self.lock().devices.get(device_id).cloned()
    }

    /// Every approved device.
    pub fn devices(&self) -> Vec<DeviceRecord> {
        self.lock().devices.values().cloned().collect()
    }

    /// Files a pairing request (or returns the open one for the same device and role), within
    /// the caps on pending requests in total and per client address.
    pub fn request(
        &self,
        device_id: &str,
        public_key: &str,
        role: Role,
        scopes: &[String],
        client_id: &str,
        remote_addr: &str,
    ) -> Result<PendingRequest, PairingError> {
        let now = now_ms();
        let mut state = self.lock();
        state.pending.retain(|_, p| p.expires_at_ms > now);
        if let Some(p) = state
            .pending
            .values()
            .find(|p| p.device_id == device_id && p.role == role && p.scopes == scopes)
        {
            return Ok(p.clone());
        }
        let address = address_key(remote_addr);
        let from_here: Vec<u64> = state
            .pending
            .values()
            .filter(|p| address.is_some() && address_key(&p.remote_addr) == address)
            .map(|p| p.expires_at_ms)
            .collect();
        let lapse = |expiries: &mut dyn Iterator<Item = u64>| {
            expiries
                .min()
                .map_or(1_000, |e| e.saturating_sub(now).max(1))
        };
        if from_here.len() >= self.max_pending_per_address {
            return Err(PairingError::TooManyPending {
                per_address: true,
                retry_after_ms: lapse(&mut from_here.into_iter()),
            });
        }
        if state.pending.len() >= self.max_pending {
            return Err(PairingError::TooManyPending {
                per_address: false,
                retry_after_ms: lapse(&mut state.pending.values().map(|p| p.expires_at_ms)),
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
            expires_at_ms: now + self.pending_ttl.as_millis() as u64,
        };
        state
            .pending
            .insert(request.request_id.clone(), request.clone());
        Ok(request)
    }

    /// Pending requests that have not expired, oldest first.
    pub fn pending(&self) -> Vec<PendingRequest> {
        let now = now_ms();
        let mut state = self.lock();
        state.pending.retain(|_, p| p.expires_at_ms > now);
        let mut list: Vec<_> = state.pending.values().cloned().collect();
        list.sort_by_key(|p| (p.created_at_ms, p.request_id.clone()));
        list
    }

    fn take_pending(state: &mut State, request_id: &str) -> Result<PendingRequest, PairingError> {
        let now = now_ms();
        state.pending.retain(|_, p| p.expires_at_ms > now);
        state
            .pending
            .remove(request_id)
            .ok_or_else(|| PairingError::UnknownRequest(request_id.into()))
    }

    /// Approves a pending request. Returns once the approval is durable.
    pub fn approve(&self, request_id: &str) -> Result<DeviceRecord, PairingError> {
        let mut state = self.lock();
        let request = Self::take_pending(&mut state, request_id)?;
        // A device approved earlier for another role keeps it (and its token).
        let mut record = state
            .devices
            .get(&request.device_id)
            .cloned()
            .unwrap_or(DeviceRecord {
                id: request.device_id.clone(),
                public_key: request.public_key.clone(),
                roles: Vec::new(),
                scopes: Vec::new(),
                client_id: request.client_id.clone(),
                approved_at_ms: 0,
                token_sha256: None,
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
        let mut devices = state.devices.clone();
        devices.insert(record.id.clone(), record.clone());
        if let Err(e) = self.persist(&devices) {
            state.pending.insert(request.request_id.clone(), request);
            return Err(e);
        }
        state.devices = devices;
        Ok(record)
    }

    /// Rejects a pending request.
    pub fn reject(&self, request_id: &str) -> Result<PendingRequest, PairingError> {
        Self::take_pending(&mut self.lock(), request_id)
    }

    /// Issues a new device token for an approved device (the previous one stops working).
    pub fn issue_token(&self, device_id: &str) -> Result<Option<String>, PairingError> {
        let mut state = self.lock();
        if !state.devices.contains_key(device_id) {
            return Ok(None);
        }
        let mut raw = [0u8; 32];
        rand::fill(&mut raw);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        let mut devices = state.devices.clone();
        if let Some(d) = devices.get_mut(device_id) {
            d.token_sha256 = Some(token_hash(&token));
        }
        self.persist(&devices)?;
        state.devices = devices;
        Ok(Some(token))
    }

    /// The device a token belongs to, if it is current.
    pub fn device_for_token(&self, token: &str) -> Option<DeviceRecord> {
        if !token.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let hash = token_hash(token);
        self.lock()
            .devices
            .values()
            .find(|d| d.token_sha256.as_deref() == Some(hash.as_str()))
            .cloned()
    }

    /// Removes an approved device; its tokens stop working.
    pub fn revoke(&self, device_id: &str) -> Result<bool, PairingError> {
        let mut state = self.lock();
        if !state.devices.contains_key(device_id) {
            return Ok(false);
        }
        let mut devices = state.devices.clone();
        devices.remove(device_id);
        self.persist(&devices)?;
        state.devices = devices;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(pending_ttl_ms: u64) -> PairingSettings {
        PairingSettings {
            pending_ttl_ms,
            ..PairingSettings::default()
        }
    }

    #[test]
    fn approvals_persist_and_tokens_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairing.json");
        let store = PairingStore::open(&path, &ttl(60_000)).unwrap();
        let req = store
            .request("dev1", "pk", Role::Worker, &[], "cli", "127.0.0.1:1")
            .unwrap();
        assert_eq!(
            store
                .request("dev1", "pk", Role::Worker, &[], "cli", "127.0.0.1:2")
                .unwrap()
                .request_id,
            req.request_id,
            "a second connect reuses the open request"
        );
        store.approve(&req.request_id).unwrap();
        assert!(matches!(
            store.approve(&req.request_id),
            Err(PairingError::UnknownRequest(_))
        ));
        let t1 = store.issue_token("dev1").unwrap().unwrap();
        assert_eq!(store.device_for_token(&t1).unwrap().id, "dev1");
        let t2 = store.issue_token("dev1").unwrap().unwrap();
        assert!(store.device_for_token(&t1).is_none());

        let reopened = PairingStore::open(&path, &ttl(60_000)).unwrap();
        assert_eq!(reopened.device("dev1").unwrap().roles, vec![Role::Worker]);
        assert_eq!(reopened.device_for_token(&t2).unwrap().id, "dev1");
        assert!(
            !std::fs::read_to_string(&path).unwrap().contains(&t2),
            "token stored in clear"
        );
    }

    #[test]
    fn a_corrupt_store_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pairing.json");
        std::fs::write(&path, b"{\"version\":1,\"devices\":[{\"id\":").unwrap();
        let err = PairingStore::open(&path, &ttl(60_000)).unwrap_err();
        assert!(err.to_string().contains("is corrupt"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"{\"version\":1,\"devices\":[{\"id\":"
        );
    }

    #[test]
    fn pending_requests_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = PairingStore::open(&dir.path().join("p.json"), &ttl(0)).unwrap();
        let req = store
            .request("dev1", "pk", Role::Worker, &[], "cli", "x")
            .unwrap();
        assert!(store.pending().is_empty());
        assert!(matches!(
            store.approve(&req.request_id),
            Err(PairingError::UnknownRequest(_))
        ));
    }
}
