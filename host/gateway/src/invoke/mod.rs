//! `worker.invoke`: an operator's invocation reaches the worker's connection task as a
//! [`SessionCommand::Invoke`] — on this replica directly, on another through NATS.
//!
//! - `mod.rs` (here): finding the worker and waiting (bounded) for its answer.
//! - `remote.rs`: the request/reply subject each replica serves routed invocations on, and
//!   sending one there.

mod remote;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use trustgate_protocol::{ErrorBody, ErrorCode};

pub(crate) use remote::serve;

use crate::registry::SessionCommand;
use crate::state::GatewayState;

/// Runs an invocation on the worker `worker_id`, wherever in the cluster it is connected.
pub(crate) async fn invoke(
    state: &GatewayState,
    worker_id: &str,
    command: String,
    args: Value,
) -> Result<Value, ErrorBody> {
    // A worker on another replica: the invocation travels there and runs as it would here.
    if state.sessions.worker_channel(worker_id).is_none()
        && let (Some(nats), Some(replicated)) = (&state.cluster, &state.replicated)
        && let Some(replica) = replicated.replica_of_worker(worker_id)
    {
        return remote::invoke_remote(
            nats,
            &replica,
            worker_id,
            &command,
            &args,
            state.limits.invoke_timeout(),
        )
        .await;
    }
    invoke_local(state, worker_id, command, args).await
}

/// Runs an invocation on a worker connected to this replica: an operator's here, or one
/// routed from another replica.
pub(crate) async fn invoke_local(
    state: &GatewayState,
    worker_id: &str,
    command: String,
    args: Value,
) -> Result<Value, ErrorBody> {
    let Some(worker) = state.sessions.worker_channel(worker_id) else {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "`params.workerId`: no connected worker has this id",
        )
        .with_details(json!({"field": "params.workerId", "reason": "unknown-worker"})));
    };
    let invoke_id = format!("inv-{}", hex::encode(rand::random::<[u8; 8]>()));
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        ErrorBody::new(ErrorCode::Unavailable, "the worker disconnected")
            .with_details(json!({"reason": "worker-disconnected"}))
            .with_retry_after(Some(1_000))
    };
    worker
        .send(SessionCommand::Invoke {
            invoke_id: invoke_id.clone(),
            command,
            args,
            reply: tx,
        })
        .await
        .map_err(|_| unavailable())?;
    match tokio::time::timeout(state.limits.invoke_timeout(), rx).await {
        Ok(Ok(Ok(outcome))) => Ok(json!({
            "workerId": worker_id,
            "invokeId": invoke_id,
            "ok": outcome.ok,
            "result": outcome.result,
            "error": outcome.error,
        })),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(unavailable()),
        Err(_) => Err(ErrorBody::new(
            ErrorCode::Unavailable,
            "the worker did not answer within the invoke timeout",
        )
        .with_details(json!({"reason": "invoke-timeout"}))),
    }
}
