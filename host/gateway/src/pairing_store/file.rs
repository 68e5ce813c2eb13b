//! The `file` backend: one replica. Approved devices live in a JSON file; every change is
//! written atomically and fsynced before it is acknowledged, so a crash never loses an
//! approval or leaves a half-written store, and a file that does not parse is reported, never
//! silently replaced. Pending requests live in memory (they expire in minutes).
//!
//! Version 1 files (one token per device, no approver) are read and rewritten as version 2 at
//! the next change: each device keeps its token, as the token of instance `""` with a fresh
//! lifetime.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use trustgate_protocol::{Role, now_ms};

use super::{
    Backend, DeviceChange, DeviceRecord, DeviceToken, PairingError, PairingSettings,
    PendingRequest, StoreEvent,
};
use crate::fsutil::write_atomic;

const STORE_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    devices: Vec<DeviceRecord>,
}

/// A version 1 device record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceRecordV1 {
    id: String,
    public_key: String,
    roles: Vec<Role>,
    #[serde(default)]
    scopes: Vec<String>,
    client_id: String,
    approved_at_ms: u64,
    #[serde(default)]
    token_sha256: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFileV1 {
    #[allow(dead_code)] // read to tell the versions apart
    version: u32,
    devices: Vec<DeviceRecordV1>,
}

#[derive(Default)]
struct State {
    devices: BTreeMap<String, DeviceRecord>,
    pending: HashMap<String, PendingRequest>,
}

/// Approved devices in a file, pending requests in memory.
pub(crate) struct FileBackend {
    path: PathBuf,
    /// Opened to look, not to change: nothing is created or written.
    read_only: bool,
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
}

fn corrupt(path: &Path, detail: impl Into<String>) -> PairingError {
    PairingError::Corrupt {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn read_devices(
    path: &Path,
    bytes: &[u8],
    settings: &PairingSettings,
) -> Result<BTreeMap<String, DeviceRecord>, PairingError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let version = serde_json::from_slice::<Version>(bytes)
        .map_err(|e| corrupt(path, e.to_string()))?
        .version;
    let devices = match version {
        STORE_VERSION => {
            serde_json::from_slice::<StoreFile>(bytes)
                .map_err(|e| corrupt(path, e.to_string()))?
                .devices
        }
        1 => {
            let now = now_ms();
            serde_json::from_slice::<StoreFileV1>(bytes)
                .map_err(|e| corrupt(path, e.to_string()))?
                .devices
                .into_iter()
                .map(|d| DeviceRecord {
                    tokens: d
                        .token_sha256
                        .map(|sha256| DeviceToken {
                            instance: String::new(),
                            sha256,
                            issued_at_ms: now,
                            expires_at_ms: now + settings.token_ttl_ms,
                        })
                        .into_iter()
                        .collect(),
                    id: d.id,
                    public_key: d.public_key,
                    roles: d.roles,
                    scopes: d.scopes,
                    client_id: d.client_id,
                    approved_at_ms: d.approved_at_ms,
                    approved_by: "(before approvals were attributed)".into(),
                })
                .collect()
        }
        other => {
            return Err(corrupt(
                path,
                format!("version {other} (this gateway reads versions 1 and {STORE_VERSION})"),
            ));
        }
    };
    Ok(devices.into_iter().map(|d| (d.id.clone(), d)).collect())
}

impl FileBackend {
    pub(crate) fn open(
        path: &Path,
        settings: &PairingSettings,
        read_only: bool,
        events: broadcast::Sender<StoreEvent>,
    ) -> Result<Self, PairingError> {
        let mut state = State::default();
        match std::fs::read(path) {
            Ok(bytes) => state.devices = read_devices(path, &bytes, settings)?,
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
            read_only,
            state: Mutex::new(state),
            events,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation persists before it is applied, so a poisoned lock still guards
        // consistent data.
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
}

#[async_trait]
impl Backend for FileBackend {
    fn devices(&self) -> Vec<DeviceRecord> {
        self.lock().devices.values().cloned().collect()
    }

    fn device(&self, id: &str) -> Option<DeviceRecord> {
        self.lock().devices.get(id).cloned()
    }

    fn find_token(&self, sha256: &str) -> Option<(DeviceRecord, DeviceToken)> {
        self.lock()
            .devices
            .values()
            .find_map(|d| super::token_of(d, sha256).map(|t| (d.clone(), t)))
    }

    fn pending(&self) -> Vec<PendingRequest> {
        let now = now_ms();
        let mut state = self.lock();
        state.pending.retain(|_, p| p.expires_at_ms > now);
        state.pending.values().cloned().collect()
    }

    async fn put_pending(&self, request: &PendingRequest) -> Result<(), PairingError> {
        self.lock()
            .pending
            .insert(request.request_id.clone(), request.clone());
        Ok(())
    }

    async fn take_pending(&self, request_id: &str) -> Result<PendingRequest, PairingError> {
        let now = now_ms();
        let mut state = self.lock();
        state.pending.retain(|_, p| p.expires_at_ms > now);
        state
            .pending
            .remove(request_id)
            .ok_or_else(|| PairingError::UnknownRequest(request_id.into()))
    }

    async fn update_device(
        &self,
        id: &str,
        change: DeviceChange<'_>,
    ) -> Result<Option<DeviceRecord>, PairingError> {
        let mut state = self.lock();
        let updated = change(state.devices.get(id))?;
        let mut devices = state.devices.clone();
        match &updated {
            Some(record) => {
                devices.insert(id.to_string(), record.clone());
            }
            None => {
                devices.remove(id);
            }
        }
        self.persist(&devices)?;
        let removed = updated.is_none() && state.devices.contains_key(id);
        state.devices = devices;
        drop(state);
        if removed {
            let _ = self.events.send(StoreEvent::DeviceRemoved(id.to_string()));
        }
        Ok(updated)
    }
}
