//! This replica's part of a NATS cluster, for as long as the gateway runs: opens the buckets,
//! then feeds the pairing store's and the registry's local copies, publishes this replica's
//! sessions and heartbeats, and serves invocations routed here. It only composes: each task
//! lives with what it keeps (`pairing_store/nats.rs`, `registry/replicated.rs`,
//! `invoke/remote.rs`).

use std::sync::{Arc, Weak};

use tracing::info;

use crate::cluster::Nats;
use crate::state::GatewayState;

/// Runs until `stopped` turns true or the gateway state goes.
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
    let stores = nats.open().await;
    info!(replica = %nats.replica, "NATS buckets open");
    let Some(gateway) = state.upgrade() else {
        return;
    };
    let (Some(pairing), Some(replicated)) =
        (gateway.pairing.nats_backend(), gateway.replicated.clone())
    else {
        return;
    };
    let sessions = Arc::downgrade(&gateway.sessions);
    drop(gateway);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::pairing_store::follow_devices(
        pairing.clone(),
        stores.devices.clone(),
    ));
    tasks.spawn(crate::pairing_store::follow_pending(
        pairing,
        stores.pending.clone(),
    ));
    tasks.spawn(crate::registry::follow(
        replicated.clone(),
        stores.sessions.clone(),
    ));
    tasks.spawn(crate::registry::publish(
        replicated,
        nats.clone(),
        stores.sessions.clone(),
        sessions,
    ));
    tasks.spawn(crate::invoke::serve(nats.clone(), state.clone()));
    // The tasks end when the gateway state goes (or never); keep them owned here.
    while tasks.join_next().await.is_some() {
        if state.upgrade().is_none() {
            tasks.abort_all();
            return;
        }
    }
}
