//! The cluster-wide session registry, in the sessions bucket:
//!
//! - `r.<replica>`: the replica's heartbeat, put every `heartbeat_ms`;
//! - `s.<replica>.<connId>`: one of its sessions, put when it registers (and when its expiry
//!   changes), deleted when it leaves.
//!
//! Every replica follows the bucket into a local copy and lists another replica's sessions only
//! while that replica's heartbeat is fresher than `session_ttl_ms` (measured on the local
//! clock, when the heartbeat arrived), so a crashed replica's sessions disappear within that
//! time; its keys are cleaned up by whichever replica notices it stale for three times as long.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use trustgate_protocol::{Role, now_ms};

use super::{SessionInfo, Sessions};
use crate::cluster::{ClusterSettings, Nats, follow_bucket};

/// A session as the cluster lists it: where it lives, and what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterSession {
    /// The replica that holds the connection.
    pub(crate) replica: String,
    #[serde(flatten)]
    pub(crate) info: SessionInfo,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Heartbeat {
    replica: String,
    at_ms: u64,
}

#[derive(Default)]
struct View {
    /// Other replicas' sessions by key.
    sessions: HashMap<String, ClusterSession>,
    /// When each replica's heartbeat last arrived here.
    heartbeats: HashMap<String, Instant>,
}

/// The local copy of the cluster-wide registry: the other replicas' sessions.
pub(crate) struct Replicated {
    replica: String,
    ttl: Duration,
    view: Mutex<View>,
}

fn session_key(replica: &str, conn_id: &str) -> String {
    format!("s.{replica}.{conn_id}")
}

impl Replicated {
    /// An empty copy for `replica`, whose peers' sessions count while their heartbeat is
    /// fresher than `cluster.session_ttl_ms`.
    pub(crate) fn new(replica: &str, settings: &ClusterSettings) -> Self {
        Self {
            replica: replica.to_string(),
            ttl: settings.session_ttl(),
            view: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Other replicas' live sessions (those whose replica's heartbeat is fresh).
    pub(crate) fn remote_sessions(&self) -> Vec<ClusterSession> {
        let view = self.lock();
        view.sessions
            .values()
            .filter(|s| s.replica != self.replica)
            .filter(|s| {
                view.heartbeats
                    .get(&s.replica)
                    .is_some_and(|at| at.elapsed() < self.ttl)
            })
            .cloned()
            .collect()
    }

    /// The replica that holds worker `conn_id`, if another live replica does.
    pub(crate) fn replica_of_worker(&self, conn_id: &str) -> Option<String> {
        self.remote_sessions()
            .into_iter()
            .find(|s| s.info.conn_id == conn_id && s.info.role == Role::Worker)
            .map(|s| s.replica)
    }

    fn apply(&self, entry: &kv::Entry) {
        let mut view = self.lock();
        let put = entry.operation == kv::Operation::Put;
        if let Some(replica) = entry.key.strip_prefix("r.") {
            if put {
                view.heartbeats.insert(replica.to_string(), Instant::now());
            } else {
                view.heartbeats.remove(replica);
            }
        } else if entry.key.starts_with("s.") {
            if !put {
                view.sessions.remove(&entry.key);
            } else {
                match serde_json::from_slice::<ClusterSession>(&entry.value) {
                    Ok(s) => {
                        view.sessions.insert(entry.key.clone(), s);
                    }
                    Err(e) => {
                        warn!(key = %entry.key, error = %e, "unreadable session entry ignored")
                    }
                }
            }
        }
    }

    /// Keys of replicas whose heartbeat has been stale for three TTLs: theirs to clean up.
    fn abandoned_keys(&self) -> Vec<String> {
        let view = self.lock();
        let dead: Vec<&String> = view
            .heartbeats
            .iter()
            .filter(|(r, at)| **r != self.replica && at.elapsed() > self.ttl * 3)
            .map(|(r, _)| r)
            .collect();
        view.sessions
            .iter()
            .filter(|(_, s)| dead.contains(&&s.replica))
            .map(|(k, _)| k.clone())
            .chain(dead.iter().map(|r| format!("r.{r}")))
            .collect()
    }
}

/// Follows the sessions bucket into the local copy, for as long as the gateway runs.
pub(crate) async fn follow(registry: Arc<Replicated>, store: kv::Store) {
    follow_bucket(
        store,
        "sessions",
        move |entry| registry.apply(&entry),
        || {},
    )
    .await;
}

/// Publishes this replica's sessions and heartbeat. Woken by every change to the local
/// registry (and by the heartbeat timer), it writes the difference between what is live here
/// and what it last wrote; a failed write is retried at the next wake-up, so nothing is lost
/// while NATS is away and bursts are coalesced.
pub(crate) async fn publish(
    registry: Arc<Replicated>,
    nats: Arc<Nats>,
    store: kv::Store,
    sessions: Weak<Sessions>,
) {
    let heartbeat = Duration::from_millis(nats.settings.heartbeat_ms);
    let own_prefix = format!("s.{}.", nats.replica);
    // Sessions a previous process of this replica left behind are not ours any more.
    let mut written: HashMap<String, SessionInfo> = HashMap::new();
    if let Ok(Ok(mut keys)) = tokio::time::timeout(nats.op_timeout(), store.keys()).await {
        while let Some(Ok(k)) = keys.next().await {
            if k.starts_with(&own_prefix) {
                let _ = store.delete(&k).await;
            }
        }
    }
    let Some(mut changes) = sessions.upgrade().map(|s| s.watch()) else {
        return;
    };
    let mut next_beat = tokio::time::Instant::now();
    loop {
        let Some(local) = sessions.upgrade() else {
            return;
        };
        changes.borrow_and_update();
        if tokio::time::Instant::now() >= next_beat {
            let beat = Heartbeat {
                replica: nats.replica.clone(),
                at_ms: now_ms(),
            };
            let bytes = Bytes::from(serde_json::to_vec(&beat).unwrap_or_default());
            match tokio::time::timeout(
                nats.op_timeout(),
                store.put(format!("r.{}", nats.replica), bytes),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => debug!(error = %e, "heartbeat not written"),
                Err(_) => debug!("heartbeat timed out"),
            }
            for key in registry.abandoned_keys() {
                let _ = tokio::time::timeout(nats.op_timeout(), store.delete(&key)).await;
            }
            next_beat = tokio::time::Instant::now() + heartbeat;
        }
        let live: HashMap<String, SessionInfo> = local
            .list()
            .into_iter()
            .map(|s| (s.conn_id.clone(), s))
            .collect();
        drop(local);
        for (conn, info) in &live {
            if written.get(conn) == Some(info) {
                continue;
            }
            let value = ClusterSession {
                replica: nats.replica.clone(),
                info: info.clone(),
            };
            let bytes = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            let put = store.put(session_key(&nats.replica, conn), bytes);
            if let Ok(Ok(_)) = tokio::time::timeout(nats.op_timeout(), put).await {
                written.insert(conn.clone(), info.clone());
            } else {
                break; // NATS is away: try again at the next wake-up
            }
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|c| !live.contains_key(*c))
            .cloned()
            .collect();
        for conn in gone {
            let delete = store.delete(session_key(&nats.replica, &conn));
            if let Ok(Ok(())) = tokio::time::timeout(nats.op_timeout(), delete).await {
                written.remove(&conn);
            } else {
                break;
            }
        }
        let dirty =
            written.len() != live.len() || live.iter().any(|(c, i)| written.get(c) != Some(i));
        let wait = if dirty {
            Duration::from_millis(200).min(heartbeat)
        } else {
            next_beat.saturating_duration_since(tokio::time::Instant::now())
        };
        if let Ok(Err(_)) = tokio::time::timeout(wait, changes.changed()).await {
            return; // the registry is gone: the gateway stopped
        }
    }
}

/// Sessions as operators see them (`workers.list`, the admin API): this replica's and — on
/// NATS — every live replica's, each naming its `replica`, ordered by connection id.
pub(crate) fn sessions_view(
    local: &Sessions,
    replicated: Option<&Replicated>,
    workers_only: bool,
) -> Vec<serde_json::Value> {
    let keep = |role: Role| !workers_only || role == Role::Worker;
    let here = local.list().into_iter().filter(|s| keep(s.role));
    let Some(replicated) = replicated else {
        return here
            .map(|s| serde_json::to_value(s).unwrap_or_default())
            .collect();
    };
    let mut all: Vec<ClusterSession> = here
        .map(|info| ClusterSession {
            replica: replicated.replica.clone(),
            info,
        })
        .chain(
            replicated
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
