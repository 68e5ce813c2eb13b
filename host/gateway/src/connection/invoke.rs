//! The connection's side of the invoke relay: an operator's `worker.invoke` is read here and
//! handed to `crate::invoke` (which finds the worker, here or on another replica); on the
//! worker's connection the [`SessionCommand::Invoke`] goes out as an `invoke.request` event and
//! comes back through the worker's `invoke.result`. The operator's side waits in its own task,
//! so a slow worker never blocks the operator's other requests.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use trustgate_protocol::{ErrorBody, ErrorCode, RequestFrame, ResponseFrame, parse_params};

use super::invalid;
use crate::registry::InvokeOutcome;
use crate::state::GatewayState;

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
    crate::invoke::invoke(state, &p.worker_id, p.command, p.args).await
}
