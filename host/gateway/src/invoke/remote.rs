//! `worker.invoke` across replicas: each replica serves `<prefix>.invoke.<replica>` by
//! request/reply and runs the invocation exactly as a local one; an operator's replica that
//! does not hold the worker sends it there. Results, errors and timeouts are the local ones.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tracing::warn;
use trustgate_protocol::{ErrorBody, ErrorCode};

use crate::cluster::Nats;
use crate::state::GatewayState;

/// Invocations one replica runs for others at once; beyond it they are answered `UNAVAILABLE`.
const MAX_ROUTED_INVOCATIONS: usize = 256;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Routed {
    worker_id: String,
    command: String,
    args: Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Answer {
    Ok(Value),
    Error(ErrorBody),
}

fn subject(nats: &Nats, replica: &str) -> String {
    format!("{}.invoke.{replica}", nats.settings.subject_prefix)
}

fn unavailable(reason: &str, message: &str) -> ErrorBody {
    ErrorBody::new(ErrorCode::Unavailable, message)
        .with_details(json!({"reason": reason}))
        .with_retry_after(Some(1_000))
}

/// Sends an invocation to the replica that holds the worker and waits for its answer (at most
/// the invoke timeout, plus a second for the round trip).
pub(super) async fn invoke_remote(
    nats: &Nats,
    replica: &str,
    worker_id: &str,
    command: &str,
    args: &Value,
    timeout: Duration,
) -> Result<Value, ErrorBody> {
    let routed = Routed {
        worker_id: worker_id.to_string(),
        command: command.to_string(),
        args: args.clone(),
    };
    let payload = Bytes::from(serde_json::to_vec(&routed).unwrap_or_default());
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout + Duration::from_secs(1)));
    let reply = nats
        .client
        .send_request(subject(nats, replica), request)
        .await;
    match reply {
        Ok(message) => match serde_json::from_slice::<Answer>(&message.payload) {
            Ok(Answer::Ok(v)) => Ok(v),
            Ok(Answer::Error(e)) => Err(e),
            Err(e) => {
                warn!(replica, error = %e, "unreadable answer from a replica");
                Err(unavailable(
                    "cluster-unavailable",
                    "the replica holding the worker answered unreadably",
                ))
            }
        },
        Err(e) => match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Err(unavailable(
                "worker-disconnected",
                "the worker disconnected",
            )),
            async_nats::RequestErrorKind::TimedOut => Err(ErrorBody::new(
                ErrorCode::Unavailable,
                "the worker did not answer within the invoke timeout",
            )
            .with_details(json!({"reason": "invoke-timeout"}))),
            _ => {
                warn!(replica, error = %e, "cannot route an invocation");
                Err(unavailable(
                    "cluster-unavailable",
                    "the replica holding the worker cannot be reached",
                ))
            }
        },
    }
}

/// Serves invocations routed to this replica, for as long as the gateway runs.
pub(crate) async fn serve(nats: Arc<Nats>, state: Weak<GatewayState>) {
    let permits = Arc::new(Semaphore::new(MAX_ROUTED_INVOCATIONS));
    let mut delay = Duration::from_millis(100);
    loop {
        let mut requests = match nats.client.subscribe(subject(&nats, &nats.replica)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot serve routed invocations; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        while let Some(message) = requests.next().await {
            let Some(reply_to) = message.reply.clone() else {
                continue;
            };
            let Some(gateway) = state.upgrade() else {
                return;
            };
            let client = nats.client.clone();
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let busy = Answer::Error(unavailable(
                    "cluster-busy",
                    "the replica holding the worker is busy; try again",
                ));
                let _ = client
                    .publish(
                        reply_to,
                        Bytes::from(serde_json::to_vec(&busy).unwrap_or_default()),
                    )
                    .await;
                continue;
            };
            tokio::spawn(async move {
                let answer = match serde_json::from_slice::<Routed>(&message.payload) {
                    Ok(r) => {
                        match super::invoke_local(&gateway, &r.worker_id, r.command, r.args).await {
                            Ok(v) => Answer::Ok(v),
                            Err(e) => Answer::Error(e),
                        }
                    }
                    Err(_) => Answer::Error(ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        "a routed invocation could not be read",
                    )),
                };
                drop(gateway);
                let bytes = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
                let _ = client.publish(reply_to, bytes).await;
                drop(permit);
            });
        }
    }
}
