//! The registry of live sessions: who is connected, and a channel to each connection task for
//! relaying invocations and for closing it (expiry, revocation).

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

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
    /// Close the connection.
    Close(CloseCode, String),
}

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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

struct Entry {
    info: SessionInfo,
    commands: mpsc::Sender<SessionCommand>,
}

/// All live sessions.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Entry>>,
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

    pub(crate) fn insert(&self, info: SessionInfo, commands: mpsc::Sender<SessionCommand>) {
        self.lock()
            .insert(info.conn_id.clone(), Entry { info, commands });
    }

    pub(crate) fn update_expiry(&self, conn_id: &str, expires_at_ms: Option<u64>) {
        if let Some(e) = self.lock().get_mut(conn_id) {
            e.info.expires_at_ms = expires_at_ms;
        }
    }

    pub(crate) fn remove(&self, conn_id: &str) {
        self.lock().remove(conn_id);
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

    /// Closes every session whose subject matches `pred` with `code`. Returns how many.
    pub fn close_where(
        &self,
        code: CloseCode,
        reason: &str,
        pred: impl Fn(&SessionInfo) -> bool,
    ) -> usize {
        let targets: Vec<_> = self
            .lock()
            .values()
            .filter(|e| pred(&e.info))
            .map(|e| e.commands.clone())
            .collect();
        for t in &targets {
            let _ = t.try_send(SessionCommand::Close(code, reason.to_string()));
        }
        targets.len()
    }
}
