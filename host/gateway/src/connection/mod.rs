//! One WebSocket connection, in the order it lives:
//!
//! 1. here: the upgrade, and the frame plumbing every stage shares;
//! 2. `handshake.rs`: challenge → `connect` → decision → registration and `hello-ok`, or a
//!    refusal;
//! 3. `session.rs`: the loop after `hello-ok` (requests, ticks, reauth, re-validation, expiry,
//!    commands from other tasks);
//! 4. `invoke.rs`: the `worker.invoke` relay between an operator's and a worker's connection.

mod handshake;
mod invoke;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tracing::{Instrument, debug, info_span};
use trustgate_protocol::{
    CloseCode, ErrorBody, ErrorCode, EventFrame, FrameError, ResponseFrame, Role, now_ms,
};

use trustgate_runtime::Step;

use crate::audit::{AuditRecord, AuditStep};
use crate::state::GatewayState;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;
type Source<S> = SplitStream<WebSocketStream<S>>;

/// Decrements the live-connection count however the task ends.
struct ConnGuard(Arc<GatewayState>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn random_id(prefix: &str, bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::fill(&mut raw[..]);
    format!("{prefix}{}", hex::encode(raw))
}

/// What an accepted socket carries until `hello-ok`: its place in the pre-auth budget and
/// the one deadline from accept to `hello-ok`.
pub(crate) struct PreAuth {
    pub(crate) admission: crate::preauth::Admission,
    pub(crate) deadline: tokio::time::Instant,
}

/// Serves one accepted TCP (or TLS) stream until it closes.
pub(crate) async fn serve<S>(
    state: Arc<GatewayState>,
    stream: S,
    remote: SocketAddr,
    tls: bool,
    pre: PreAuth,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    state
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _guard = ConnGuard(state.clone());
    let conn_id = random_id("c-", 8);
    let span = info_span!("conn", conn_id = %conn_id, peer = %remote);
    async move {
        let max = state.limits.max_payload;
        // Small buffers: tungstenite's defaults (128 KiB each way) would make every idle
        // session cost a quarter of a megabyte. Frames here are small JSON; writes go out at once.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let ws = match tokio::time::timeout_at(
            pre.deadline,
            tokio_tungstenite::accept_async_with_config(stream, Some(ws_config)),
        )
        .await
        {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
            Err(_) => {
                debug!("WebSocket upgrade timed out");
                return;
            }
        };
        let (sink, mut source) = ws.split();
        let mut conn = Conn {
            state,
            conn_id,
            remote,
            tls,
            sink,
            seq: 0,
        };
        let Some(session) = conn.handshake(&mut source, pre.deadline).await else {
            return;
        };
        // Past hello-ok: the socket is a session now, counted against `max_connections`.
        drop(pre.admission);
        conn.session(source, session).await;
    }
    .instrument(span)
    .await;
}

/// A connection's identity and its sending half, shared by every stage.
struct Conn<S> {
    state: Arc<GatewayState>,
    conn_id: String,
    remote: SocketAddr,
    tls: bool,
    sink: Sink<S>,
    /// The last `seq` of a sequenced event.
    seq: u64,
}

/// How reading the next text frame went.
enum Inbound {
    Text(String),
    Binary,
    Closed,
    TooBig,
    /// A text frame that is not UTF-8: closed with 1007 at any stage.
    BadUtf8,
}

async fn next_frame<S>(source: &mut Source<S>) -> Inbound
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match source.next().await {
            Some(Ok(Message::Text(t))) => return Inbound::Text(t.to_string()),
            Some(Ok(Message::Binary(_))) => return Inbound::Binary,
            // Control frames are handled by tungstenite (pongs are sent automatically).
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Inbound::Closed,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))
            | Some(Err(WsError::Capacity(_))) => return Inbound::TooBig,
            Some(Err(WsError::Utf8(_))) => return Inbound::BadUtf8,
            Some(Err(e)) => {
                debug!(error = %e, "read failed");
                return Inbound::Closed;
            }
        }
    }
}

/// The id of a frame that failed to parse, if it has one, so the error can be matched.
fn salvage_id(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default()
}

/// The `INVALID_REQUEST` answer to a frame or params that did not parse.
fn invalid(e: &FrameError) -> ErrorBody {
    let body = ErrorBody::new(ErrorCode::InvalidRequest, e.message.clone());
    match &e.field {
        Some(field) => body.with_details(json!({ "field": field })),
        None => body,
    }
}

/// A close reason must fit in a control frame (123 bytes).
fn clip_reason(reason: &str) -> String {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// One authentication decision, as the metrics and the audit log record it.
struct AuditEntry<'a> {
    /// `connect`, `reauth` or `revalidate`.
    event: &'a str,
    started: std::time::Instant,
    /// The presented auth method.
    method: &'a str,
    role: Role,
    /// Who the peer is, as far as the decision got (for a refusal too).
    subject: Option<&'a str>,
    /// The refusal, if it was one.
    error: Option<&'a ErrorBody>,
    /// The plugin that decided.
    plugin: Option<&'a str>,
    /// Every plugin step.
    trace: &'a [Step],
}

fn audit_trace(trace: &[Step]) -> Vec<AuditStep<'_>> {
    trace
        .iter()
        .map(|s| AuditStep {
            plugin: &s.plugin,
            verdict: s.kind.as_str(),
            code: s.code.map(|c| crate::authenticate::deny_code(c).as_str()),
            reason: s.reason.as_deref(),
            error: s.error.as_deref(),
            us: (s.elapsed.as_nanos() / 100) as f64 / 10.0,
        })
        .collect()
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn send_json(&mut self, value: &impl serde::Serialize) -> bool {
        match serde_json::to_string(value) {
            Ok(text) => self.sink.send(Message::text(text)).await.is_ok(),
            Err(_) => false,
        }
    }

    async fn send_event(&mut self, event: &str, payload: Value, sequenced: bool) -> bool {
        let seq = if sequenced {
            self.seq += 1;
            Some(self.seq)
        } else {
            None
        };
        self.send_json(&EventFrame::new(event, payload, seq)).await
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code: WsCloseCode::from(code.0),
            reason: clip_reason(reason).into(),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
        let _ = self.sink.close().await;
    }

    /// Answers `id` with `error`, then closes with `close`.
    async fn fail(&mut self, id: &str, error: ErrorBody, close: CloseCode) {
        let reason = format!("{}: {}", error.code, error.message);
        self.send_json(&ResponseFrame::err(id, error)).await;
        self.close(close, &reason).await;
    }

    /// Records one authentication decision in the metrics (connect only) and the audit log.
    fn record(&self, entry: AuditEntry<'_>) {
        let seconds = entry.started.elapsed().as_secs_f64();
        if entry.event == "connect" {
            self.state
                .metrics
                .record_handshake(entry.error.map_or("ok", |e| e.code.as_str()), seconds);
        }
        if !self.state.audit.enabled() {
            return;
        }
        let reason = entry
            .error
            .and_then(|e| e.details.as_ref())
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        self.state.audit.record(&AuditRecord {
            ts: now_ms(),
            event: entry.event,
            conn_id: &self.conn_id,
            peer: self.remote.to_string(),
            method: entry.method,
            role: entry.role.as_str(),
            subject: entry.subject,
            decision: if entry.error.is_none() {
                "allow"
            } else {
                "deny"
            },
            code: entry.error.map(|e| e.code.as_str()),
            reason,
            plugin: entry.plugin,
            duration_ms: seconds * 1000.0,
            trace: audit_trace(entry.trace),
        });
    }
}
