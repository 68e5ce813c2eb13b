//! The invoke relay: an operator's `worker.invoke` travels to the worker's connection task as a
//! [`SessionCommand::Invoke`], out to the worker as an `invoke.request` event, and back through
//! the worker's `invoke.result`. The operator's side waits in its own task, so a slow worker
//! never blocks the operator's other requests.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use trustgate_protocol::{ErrorBody, ErrorCode, RequestFrame, ResponseFrame, parse_params};

use super::{invalid, random_id};
use crate::GatewayState;
use crate::registry::{InvokeOutcome, SessionCommand};

type Reply = oneshot::Sender<Result<InvokeOutcome, ErrorBody>>;

/// A worker session's invocations awaiting their `invoke.result`.
#[derive(Default)]
pub(super) struct Invocations(HashMap<String, Reply>);

impl Invocations {
    pub(super) fn insert(&mut self, invoke_id: String, reply: Reply) {
        self.0.insert(invoke_id, reply);
    }

    /// Handles a worker's `invoke.result`: hands the outcome to the waiting operator.
    pub(super) fn answer(&mut self, frame: &RequestFrame) -> Result<Value, ErrorBody> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct InvokeResult {
            invoke_id: String,
            ok: bool,
            #[serde(default)]
            result: Option<Value>,
            #[serde(default)]
            error: Option<Value>,
        }
        let p: InvokeResult = parse_params(&frame.params).map_err(|e| invalid(&e))?;
        let Some(reply) = self.0.remove(&p.invoke_id) else {
            return Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`params.invokeId`: no pending invocation has this id",
            )
            .with_details(json!({"field": "params.invokeId"})));
        };
        let _ = reply.send(Ok(InvokeOutcome {
            ok: p.ok,
            result: p.result,
            error: p.error,
        }));
        Ok(json!({"accepted": true}))
    }
}

/// Relays an operator's `worker.invoke` in a task of its own; the response reaches the
/// operator's connection through `out`.
pub(super) fn relay(
    state: Arc<GatewayState>,
    frame: RequestFrame,
    out: mpsc::Sender<ResponseFrame>,
) {
    tokio::spawn(async move {
        let id = frame.id.clone();
        let frame = match invoke(&state, frame).await {
            Ok(payload) => ResponseFrame::ok(id, payload),
            Err(e) => ResponseFrame::err(id, e),
        };
        let _ = out.send(frame).await;
    });
}

async fn invoke(state: &GatewayState, frame: RequestFrame) -> Result<Value, ErrorBody> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct Invoke {
        worker_id: String,
        command: String,
        #[serde(default = "empty")]
        args: Value,
    }
    fn empty() -> Value {
        json!({})
    }
    let p: Invoke = parse_params(&frame.params).map_err(|e| invalid(&e))?;
    // A worker on another replica: the invocation travels there and runs as it would here.
    if state.sessions.worker_channel(&p.worker_id).is_none()
        && let Some(nats) = &state.cluster
        && let Some(replica) = nats.registry.replica_of_worker(&p.worker_id)
    {
        return crate::cluster::invoke_remote(
            nats,
            &replica,
            &p.worker_id,
            &p.command,
            &p.args,
            state.limits.invoke_timeout(),
        )
        .await;
    }
    invoke_local(state, &p.worker_id, p.command, p.args).await
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
    let invoke_id = random_id("inv-", 8);
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
