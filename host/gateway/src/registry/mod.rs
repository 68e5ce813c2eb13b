//! The registry of live sessions: who is connected, and a channel to each connection task for
//! relaying invocations and for closing it (expiry, revocation).
//!
//! - `mod.rs` (here): this replica's sessions.
//! - `replicated.rs`: on NATS, the cluster-wide registry — this replica's sessions published to
//!   the sessions bucket, the other replicas' read from it, heartbeats that make a crashed
//!   replica's sessions vanish — and the view operators list.

mod replicated;

pub(crate) use replicated::{Replicated, follow, publish, sessions_view};

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use trustgate_protocol::{CloseCode, ErrorBody, Role};

/// What other tasks can ask of a connection.
#[derive(Debug)]
pub(crate) enum SessionCommand {
    /// Relay an invocation to this worker and answer on `reply`.
    Invoke {
        invoke_id: String,
        command: String,
        args: Value,
        reply: oneshot::Sender<Result<InvokeOutcome, ErrorBody>>,
    },
}

/// A request to close a session: the close code and reason. Delivered through a `watch`
/// channel of its own, so a close is never lost behind queued invocations.
pub(crate) type CloseOrder = Option<(CloseCode, String)>;

/// A worker's answer to an invocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvokeOutcome {
    /// Whether the command succeeded.
    pub ok: bool,
    /// Its result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Its error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// What is known about a live session (as shown by `workers.list` and the admin API).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    /// The connection id (for workers: the `workerId`).
    pub conn_id: String,
    /// The authenticated subject.
    pub subject: String,
    /// The granted role.
    pub role: Role,
    /// The auth method.
    pub method: String,
    /// The client id.
    pub client_id: String,
    /// The client's instance id, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Where it connected from.
    pub remote_addr: String,
    /// When it connected.
    pub connected_at_ms: u64,
    /// When its credentials expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Identity attributes (e.g. namespace, pod name).
    pub attributes: std::collections::BTreeMap<String, String>,
    /// The paired device the peer is, if it logged in as one (revoking it closes this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

struct Entry {
    info: SessionInfo,
    commands: mpsc::Sender<SessionCommand>,
    close: watch::Sender<CloseOrder>,
}

/// All live sessions.
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
    /// Signalled whenever a session leaves (for draining).
    left: Notify,
    /// Bumped on every change (for publishing the registry to the cluster).
    version: watch::Sender<u64>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            left: Notify::new(),
            version: watch::channel(0).0,
        }
    }
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("len", &self.len())
            .finish()
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; the receiver delivers close orders to its task.
    pub(crate) fn insert(
        &self,
        info: SessionInfo,
        commands: mpsc::Sender<SessionCommand>,
    ) -> watch::Receiver<CloseOrder> {
        let (close, orders) = watch::channel(None);
        self.lock().insert(
            info.conn_id.clone(),
            Entry {
                info,
                commands,
                close,
            },
        );
        self.changed();
        orders
    }

    pub(crate) fn update_expiry(&self, conn_id: &str, expires_at_ms: Option<u64>) {
        if let Some(e) = self.lock().get_mut(conn_id) {
            e.info.expires_at_ms = expires_at_ms;
        }
        self.changed();
    }

    pub(crate) fn remove(&self, conn_id: &str) {
        self.lock().remove(conn_id);
        self.left.notify_waiters();
        self.changed();
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Changes as they happen: the receiver wakes after every registration, expiry change and
    /// removal (coalesced).
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until no session is left or `deadline` passes; returns how many are left.
    pub async fn drained(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            // Register interest before looking, so a removal in between is not missed.
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            let n = self.len();
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, left).await.is_err() {
                return self.len();
            }
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live session, by connection id.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<_> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| a.conn_id.cmp(&b.conn_id));
        v
    }

    /// Live worker sessions.
    pub fn workers(&self) -> Vec<SessionInfo> {
        self.list()
            .into_iter()
            .filter(|s| s.role == Role::Worker)
            .collect()
    }

    pub(crate) fn worker_channel(&self, worker_id: &str) -> Option<mpsc::Sender<SessionCommand>> {
        self.lock()
            .get(worker_id)
            .filter(|e| e.info.role == Role::Worker)
            .map(|e| e.commands.clone())
    }

    /// Closes every session matching `pred` with `code`, at once. Returns how many.
    pub fn close_where(
        &self,
        code: CloseCode,
        reason: &str,
        pred: impl Fn(&SessionInfo) -> bool,
    ) -> usize {
        let sessions = self.lock();
        let mut n = 0;
        for e in sessions.values().filter(|e| pred(&e.info)) {
            e.close.send_replace(Some((code, reason.to_string())));
            n += 1;
        }
        n
    }
}
