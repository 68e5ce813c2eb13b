//! One WebSocket connection: challenge, `connect` handshake, then the session loop (requests,
//! ticks, relayed invocations, expiry).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tracing::{Instrument, debug, info, info_span, warn};

use super::GatewayState;
use super::auth::{Attempt, Authenticated, authenticate};
use super::sessions::{InvokeOutcome, SessionCommand, SessionInfo};
use crate::protocol::{
    AuthParams, CloseCode, ConnectParams, ErrorBody, ErrorCode, EventFrame, FrameError, HelloAuth,
    HelloOk, HelloPolicy, HelloServer, PROTOCOL_VERSION, RequestFrame, ResponseFrame, Role,
    parse_client_frame, parse_params,
};
use crate::time::now_ms;

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// Stands in for "never" where a timer is needed but the credentials do not expire.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);
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

/// Serves one accepted TCP (or TLS) stream until it closes.
pub(crate) async fn serve<S>(state: Arc<GatewayState>, stream: S, remote: SocketAddr, tls: bool)
where
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
        let ws = match tokio::time::timeout(
            state.limits.handshake_timeout,
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
        let (sink, source) = ws.split();
        let mut conn = Conn {
            state: state.clone(),
            conn_id: conn_id.clone(),
            remote,
            tls,
            sink,
            seq: 0,
        };
        let mut source = source;
        let Some((params, auth, commands)) = conn.handshake(&mut source).await else {
            return;
        };
        conn.session(source, params, auth, commands).await;
    }
    .instrument(span)
    .await;
}

struct Conn<S> {
    state: Arc<GatewayState>,
    conn_id: String,
    remote: SocketAddr,
    tls: bool,
    sink: Sink<S>,
    seq: u64,
}

/// How reading the next text frame went.
enum Inbound {
    Text(String),
    Binary,
    Closed,
    TooBig,
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

    /// Records one authentication decision in the metrics (connect only) and the audit log.
    #[allow(clippy::too_many_arguments)] // one record's fields
    fn record(
        &self,
        event: &str,
        started: std::time::Instant,
        method: &str,
        role: Role,
        subject: Option<&str>,
        error: Option<&ErrorBody>,
        plugin: Option<&str>,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        if event == "connect" {
            self.state
                .metrics
                .record_handshake(error.map_or("ok", |e| e.code.as_str()), seconds);
        }
        if !self.state.audit.enabled() {
            return;
        }
        let reason = error
            .and_then(|e| e.details.as_ref())
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        self.state.audit.record(&super::AuditRecord {
            ts: now_ms(),
            event,
            conn_id: &self.conn_id,
            peer: self.remote.to_string(),
            method,
            role: role.as_str(),
            subject,
            decision: if error.is_none() { "allow" } else { "deny" },
            code: error.map(|e| e.code.as_str()),
            reason,
            plugin,
            duration_ms: seconds * 1000.0,
        });
    }

    /// Refuses a `connect`: records the decision, answers, and closes with the code's close code.
    async fn refuse(
        &mut self,
        id: &str,
        started: std::time::Instant,
        method: &str,
        role: Role,
        error: ErrorBody,
        plugin: Option<&str>,
    ) {
        self.record("connect", started, method, role, None, Some(&error), plugin);
        let close = error.code.close_code();
        self.fail(id, error, close).await;
    }

    async fn fail(&mut self, id: &str, error: ErrorBody, close: CloseCode) {
        let reason = format!("{}: {}", error.code, error.message);
        self.send_json(&ResponseFrame::err(id, error)).await;
        self.close(close, &reason).await;
    }

    /// Sends the challenge and runs `connect`. On success the session is registered (so it is
    /// listed, routable and revocable) *before* `hello-ok` is sent, and its command channel is
    /// returned with the session's parameters.
    async fn handshake(
        &mut self,
        source: &mut Source<S>,
    ) -> Option<(ConnectParams, Authenticated, mpsc::Receiver<SessionCommand>)> {
        let nonce = random_id("", 16);
        if !self
            .send_event(
                "connect.challenge",
                json!({"nonce": nonce, "ts": now_ms()}),
                false,
            )
            .await
        {
            return None;
        }
        let timeout = self.state.limits.handshake_timeout;
        let first = match tokio::time::timeout(timeout, next_frame(source)).await {
            Ok(f) => f,
            Err(_) => {
                info!("no connect within the handshake timeout");
                self.close(CloseCode::POLICY_VIOLATION, "handshake timeout: no connect")
                    .await;
                return None;
            }
        };
        let text = match first {
            Inbound::Text(t) => t,
            Inbound::Binary => {
                self.close(
                    CloseCode::POLICY_VIOLATION,
                    "the first frame must be a text req `connect`",
                )
                .await;
                return None;
            }
            Inbound::TooBig => {
                self.close(CloseCode::TOO_BIG, "message exceeds maxPayload")
                    .await;
                return None;
            }
            Inbound::Closed => return None,
        };
        let frame = match parse_client_frame(&text) {
            Ok(f) => f,
            Err(e) => {
                info!(error = %e.message, "malformed first frame");
                self.fail(&salvage_id(&text), invalid(&e), CloseCode::POLICY_VIOLATION)
                    .await;
                return None;
            }
        };
        if frame.method != "connect" {
            let e = ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!(
                    "the first request must be `connect`, got `{}`",
                    frame.method
                ),
            )
            .with_details(json!({"field": "method"}));
            self.fail(&frame.id, e, CloseCode::POLICY_VIOLATION).await;
            return None;
        }
        let params: ConnectParams = match parse_params(&frame.params) {
            Ok(p) => p,
            Err(e) => {
                info!(error = %e.message, "malformed connect");
                self.fail(&frame.id, invalid(&e), CloseCode::POLICY_VIOLATION)
                    .await;
                return None;
            }
        };
        let started = std::time::Instant::now();
        let method = params
            .auth
            .as_ref()
            .map_or("none", |a| a.method.as_str())
            .to_string();
        if params.min_protocol > PROTOCOL_VERSION || params.max_protocol < PROTOCOL_VERSION {
            let e = ErrorBody::new(
                ErrorCode::ProtocolMismatch,
                format!(
                    "this gateway speaks protocol {PROTOCOL_VERSION}; the client offers {}..={}",
                    params.min_protocol, params.max_protocol
                ),
            )
            .with_details(json!({"supported": [PROTOCOL_VERSION]}));
            self.refuse(&frame.id, started, &method, params.role, e, None)
                .await;
            return None;
        }
        let live = self
            .state
            .connections
            .load(std::sync::atomic::Ordering::Relaxed);
        if live > self.state.limits.max_connections {
            let e = ErrorBody::new(
                ErrorCode::RateLimited,
                "the gateway is at its connection limit",
            )
            .with_retry_after(Some(1_000));
            self.refuse(&frame.id, started, &method, params.role, e, None)
                .await;
            return None;
        }
        let device = match &params.device {
            None => None,
            Some(proof) => match proof.verify(
                &params.client.id,
                params.role,
                &params.scopes,
                &nonce,
                now_ms(),
            ) {
                Ok(id) => Some((id, proof.public_key.clone())),
                Err(e) => {
                    info!(reason = e.reason(), "device proof rejected: {e}");
                    let body = ErrorBody::new(ErrorCode::Unauthenticated, e.to_string())
                        .with_details(json!({"reason": e.reason()}));
                    self.refuse(&frame.id, started, &method, params.role, body, None)
                        .await;
                    return None;
                }
            },
        };
        let attempt = Attempt {
            conn_id: &self.conn_id,
            remote: self.remote,
            tls: self.tls,
            client: &params.client,
            role: params.role,
            scopes: &params.scopes,
            auth: params.auth.as_ref(),
            device,
            issue_token: true,
        };
        let outcome = authenticate(&self.state, &attempt).await;
        let auth = match outcome {
            Ok(a) => a,
            Err(refusal) => {
                info!(code = %refusal.error.code, cause = %refusal.cause, "connect refused");
                let super::auth::Refusal { error, plugin, .. } = refusal;
                self.refuse(
                    &frame.id,
                    started,
                    &method,
                    params.role,
                    error,
                    plugin.as_deref(),
                )
                .await;
                return None;
            }
        };
        let hello = HelloOk {
            kind: "hello-ok".into(),
            protocol: PROTOCOL_VERSION,
            server: HelloServer {
                version: env!("CARGO_PKG_VERSION").into(),
                conn_id: self.conn_id.clone(),
            },
            auth: HelloAuth {
                method: auth.identity.method.clone(),
                subject: auth.identity.subject.clone(),
                role: auth.role,
                scopes: auth.scopes.clone(),
                pairing: auth.pairing,
                device_token: auth.device_token.clone(),
                expires_at_ms: auth.identity.expires_at_ms,
            },
            policy: HelloPolicy {
                max_payload: self.state.limits.max_payload,
                handshake_timeout_ms: self.state.limits.handshake_timeout.as_millis() as u64,
                tick_interval_ms: self.state.limits.tick_interval.as_millis() as u64,
            },
        };
        self.record(
            "connect",
            started,
            &method,
            params.role,
            Some(&auth.identity.subject),
            None,
            auth.plugin.as_deref(),
        );
        let payload = serde_json::to_value(&hello).unwrap_or(Value::Null);
        // Register first: a peer told it is connected must already be listed, reachable by
        // `worker.invoke` and covered by revocations. Commands sent before the session loop
        // starts wait in the channel and are served right after `hello-ok`.
        let (cmd_tx, cmd_rx) = mpsc::channel::<SessionCommand>(64);
        self.state.sessions.insert(
            SessionInfo {
                conn_id: self.conn_id.clone(),
                subject: auth.identity.subject.clone(),
                role: auth.role,
                method: auth.identity.method.clone(),
                client_id: params.client.id.clone(),
                instance_id: params.client.instance_id.clone(),
                remote_addr: self.remote.to_string(),
                connected_at_ms: now_ms(),
                expires_at_ms: auth.identity.expires_at_ms,
                attributes: auth.identity.attributes.iter().cloned().collect(),
            },
            cmd_tx,
        );
        if !self.send_json(&ResponseFrame::ok(&frame.id, payload)).await {
            self.state.sessions.remove(&self.conn_id);
            return None;
        }
        info!(subject = %auth.identity.subject, role = auth.role.as_str(), method = %auth.identity.method, pairing = ?auth.pairing, "connected");
        Some((params, auth, cmd_rx))
    }

    /// The session loop of a registered session. However it ends, the session leaves the
    /// registry before its close frame is sent, so nobody is routed to a closing connection.
    async fn session(
        &mut self,
        mut source: Source<S>,
        params: ConnectParams,
        mut auth: Authenticated,
        mut cmd_rx: mpsc::Receiver<SessionCommand>,
    ) {
        let (out_tx, mut out_rx) = mpsc::channel::<ResponseFrame>(64);
        let device = params
            .device
            .as_ref()
            .map(|d| (d.id.clone(), d.public_key.clone()));
        let mut invokes: HashMap<String, oneshot::Sender<Result<InvokeOutcome, ErrorBody>>> =
            HashMap::new();
        let mut last_auth = params.auth.clone();
        let revalidate_every = self.state.limits.revalidate_interval;
        let mut revalidation = tokio::time::interval_at(
            tokio::time::Instant::now() + revalidate_every,
            revalidate_every,
        );
        let tick_every = self.state.limits.tick_interval;
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
        let deadline = |at: Option<u64>| {
            at.map(|at| {
                tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
            })
        };
        // One timer for the session's life, moved only when a reauth changes the expiry.
        let mut expiry_at = auth.identity.expires_at_ms;
        let expiry = tokio::time::sleep_until(
            deadline(expiry_at).unwrap_or_else(|| tokio::time::Instant::now() + FAR_FUTURE),
        );
        tokio::pin!(expiry);
        // `None`: the peer is gone; `Some`: close with this code and reason.
        let close: Option<(CloseCode, String)> = loop {
            if auth.identity.expires_at_ms != expiry_at {
                expiry_at = auth.identity.expires_at_ms;
                expiry.as_mut().reset(
                    deadline(expiry_at).unwrap_or_else(|| tokio::time::Instant::now() + FAR_FUTURE),
                );
            }
            tokio::select! {
                inbound = next_frame(&mut source) => match inbound {
                    Inbound::Text(text) => {
                        let reply = self
                            .request(&text, &params, &mut auth, &mut last_auth, device.clone(), &mut invokes, &out_tx)
                            .await;
                        if let Some(reply) = reply && !self.send_json(&reply).await {
                            break None;
                        }
                    }
                    Inbound::Binary => {
                        let e = ErrorBody::new(ErrorCode::InvalidRequest, "binary frames are not supported");
                        if !self.send_json(&ResponseFrame::err("", e)).await {
                            break None;
                        }
                    }
                    Inbound::TooBig => break Some((CloseCode::TOO_BIG, "message exceeds maxPayload".into())),
                    Inbound::Closed => break None,
                },
                _ = ticker.tick() => {
                    if !self.send_event("tick", json!({"ts": now_ms()}), true).await {
                        break None;
                    }
                }
                _ = revalidation.tick() => {
                    if let Some(reason) = self.revalidate(&params, &mut auth, last_auth.as_ref(), device.clone()).await {
                        break Some((CloseCode::CREDENTIALS_EXPIRED, reason.into()));
                    }
                }
                Some(reply) = out_rx.recv() => {
                    if !self.send_json(&reply).await {
                        break None;
                    }
                }
                Some(cmd) = cmd_rx.recv() => match cmd {
                    SessionCommand::Invoke { invoke_id, command, args, reply } => {
                        let sent = self
                            .send_event(
                                "invoke.request",
                                json!({"invokeId": invoke_id, "command": command, "args": args}),
                                true,
                            )
                            .await;
                        if !sent {
                            break None;
                        }
                        invokes.insert(invoke_id, reply);
                    }
                    SessionCommand::Close(code, reason) => {
                        info!(code = code.0, %reason, "closing session");
                        break Some((code, reason));
                    }
                },
                _ = &mut expiry, if expiry_at.is_some() => {
                    info!(subject = %auth.identity.subject, "credentials expired");
                    break Some((CloseCode::CREDENTIALS_EXPIRED, "credentials expired".into()));
                }
            }
        };
        self.state.sessions.remove(&self.conn_id);
        if let Some((code, reason)) = close {
            self.close(code, &reason).await;
        }
        info!("disconnected");
    }

    /// Handles one request after the handshake. Returns the response to send now, or `None`
    /// when the response will come later through `out`.
    #[allow(clippy::too_many_arguments)] // the session's state, passed apart to keep borrows short
    async fn request(
        &mut self,
        text: &str,
        params: &ConnectParams,
        auth: &mut Authenticated,
        last_auth: &mut Option<AuthParams>,
        device: Option<(String, String)>,
        invokes: &mut HashMap<String, oneshot::Sender<Result<InvokeOutcome, ErrorBody>>>,
        out: &mpsc::Sender<ResponseFrame>,
    ) -> Option<ResponseFrame> {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => return Some(ResponseFrame::err(salvage_id(text), invalid(&e))),
        };
        let id = frame.id.clone();
        let result = match frame.method.as_str() {
            "ping" => Ok(json!({"pong": true})),
            "session.info" => Ok(self.session_info(auth)),
            "reauth" => self.reauth(&frame, params, auth, last_auth, device).await,
            "connect" => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "already connected; `connect` is only valid as the first request",
            )
            .with_details(json!({"field": "method"}))),
            "invoke.result" if auth.role == Role::Worker => invoke_result(&frame, invokes),
            "workers.list" | "pairing.list" | "pairing.approve" | "pairing.reject"
            | "worker.invoke"
                if auth.role != Role::Operator =>
            {
                Err(ErrorBody::new(
                    ErrorCode::Forbidden,
                    format!("`{}` is an operator method", frame.method),
                )
                .with_details(json!({"reason": "operator-only"})))
            }
            "workers.list" => Ok(json!({"workers": self.state.sessions.workers()})),
            "pairing.list" => Ok(json!({
                "pending": self.state.pairing.pending(),
                "devices": self.state.pairing.devices(),
            })),
            "pairing.approve" | "pairing.reject" => self.decide_pairing(&frame),
            "worker.invoke" => {
                self.worker_invoke(frame, out.clone());
                return None;
            }
            other => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                format!("unknown method `{other}`"),
            )
            .with_details(json!({"field": "method"}))),
        };
        Some(match result {
            Ok(payload) => ResponseFrame::ok(id, payload),
            Err(e) => ResponseFrame::err(id, e),
        })
    }

    /// An authentication attempt within the established session: same connection, client,
    /// granted role and scopes, and device; never a new device token.
    fn session_attempt<'a>(
        &'a self,
        params: &'a ConnectParams,
        auth: &'a Authenticated,
        credentials: Option<&'a AuthParams>,
        device: Option<(String, String)>,
    ) -> Attempt<'a> {
        Attempt {
            conn_id: &self.conn_id,
            remote: self.remote,
            tls: self.tls,
            client: &params.client,
            role: auth.role,
            scopes: &auth.scopes,
            auth: credentials,
            device,
            issue_token: false,
        }
    }

    /// Validates the session's credentials again, bypassing the review cache. Returns the close
    /// reason if they no longer hold; a check that could not be completed (API down, plugin
    /// failure) keeps the session.
    async fn revalidate(
        &mut self,
        params: &ConnectParams,
        auth: &mut Authenticated,
        last_auth: Option<&AuthParams>,
        device: Option<(String, String)>,
    ) -> Option<&'static str> {
        let attempt = self.session_attempt(params, auth, last_auth, device);
        match crate::k8s::fresh(authenticate(&self.state, &attempt)).await {
            Ok(fresh) if fresh.identity.subject == auth.identity.subject => {
                let expires = fresh.identity.expires_at_ms;
                auth.identity = fresh.identity;
                self.state.sessions.update_expiry(&self.conn_id, expires);
                debug!(expires_at_ms = ?expires, "credentials re-validated");
                None
            }
            Ok(other) => {
                warn!(old = %auth.identity.subject, new = %other.identity.subject, "re-validation found another subject");
                Some("credentials expired")
            }
            Err(r)
                if matches!(
                    r.error.code,
                    ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::NotPaired
                ) =>
            {
                info!(code = %r.error.code, cause = %r.cause, "credentials no longer valid; closing");
                Some("credentials expired")
            }
            Err(r) => {
                warn!(code = %r.error.code, cause = %r.cause, "could not re-validate credentials; keeping the session");
                None
            }
        }
    }

    fn session_info(&self, auth: &Authenticated) -> Value {
        let attributes: serde_json::Map<String, Value> = auth
            .identity
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "connId": self.conn_id,
            "subject": auth.identity.subject,
            "method": auth.identity.method,
            "role": auth.role,
            "scopes": auth.scopes,
            "groups": auth.identity.groups,
            "attributes": attributes,
            "pairing": auth.pairing,
            "expiresAtMs": auth.identity.expires_at_ms,
        })
    }

    async fn reauth(
        &mut self,
        frame: &RequestFrame,
        params: &ConnectParams,
        auth: &mut Authenticated,
        last_auth: &mut Option<AuthParams>,
        device: Option<(String, String)>,
    ) -> Result<Value, ErrorBody> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ReauthParams {
            auth: AuthParams,
        }
        let p: ReauthParams = parse_params(&frame.params).map_err(|e| invalid(&e))?;
        let attempt = self.session_attempt(params, auth, Some(&p.auth), device);
        let started = std::time::Instant::now();
        let fresh = match authenticate(&self.state, &attempt).await {
            Ok(f) => f,
            Err(r) => {
                info!(code = %r.error.code, cause = %r.cause, "reauth refused");
                self.record(
                    "reauth",
                    started,
                    &p.auth.method,
                    auth.role,
                    None,
                    Some(&r.error),
                    r.plugin.as_deref(),
                );
                return Err(r.error);
            }
        };
        self.record(
            "reauth",
            started,
            &p.auth.method,
            auth.role,
            Some(&fresh.identity.subject),
            None,
            fresh.plugin.as_deref(),
        );
        if fresh.identity.subject != auth.identity.subject {
            warn!(old = %auth.identity.subject, new = %fresh.identity.subject, "reauth with another subject refused");
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "reauth must authenticate the same subject as the session",
            )
            .with_details(json!({"reason": "subject-changed"})));
        }
        let expires = fresh.identity.expires_at_ms;
        auth.identity = fresh.identity;
        *last_auth = Some(p.auth);
        self.state.sessions.update_expiry(&self.conn_id, expires);
        info!(expires_at_ms = ?expires, "reauthenticated");
        Ok(json!({"expiresAtMs": expires}))
    }

    fn decide_pairing(&self, frame: &RequestFrame) -> Result<Value, ErrorBody> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Decide {
            request_id: String,
        }
        let p: Decide = parse_params(&frame.params).map_err(|e| invalid(&e))?;
        let approve = frame.method == "pairing.approve";
        let result = if approve {
            self.state
                .pairing
                .approve(&p.request_id)
                .map(|d| json!({"approved": true, "device": d}))
        } else {
            self.state
                .pairing
                .reject(&p.request_id)
                .map(|r| json!({"rejected": true, "request": r}))
        };
        result.map_err(|e| pairing_error(&e))
    }

    fn worker_invoke(&self, frame: RequestFrame, out: mpsc::Sender<ResponseFrame>) {
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
        let state = self.state.clone();
        tokio::spawn(async move {
            let id = frame.id.clone();
            let reply = async {
                let p: Invoke = parse_params(&frame.params).map_err(|e| invalid(&e))?;
                let Some(worker) = state.sessions.worker_channel(&p.worker_id) else {
                    return Err(ErrorBody::new(
                        ErrorCode::InvalidRequest,
                        format!("no connected worker `{}`", p.worker_id),
                    )
                    .with_details(json!({"field": "params.workerId"})));
                };
                let invoke_id = random_id("inv-", 8);
                let (tx, rx) = oneshot::channel();
                let unavailable = || {
                    ErrorBody::new(ErrorCode::Unavailable, "the worker disconnected")
                        .with_retry_after(Some(1_000))
                };
                worker
                    .send(SessionCommand::Invoke {
                        invoke_id: invoke_id.clone(),
                        command: p.command,
                        args: p.args,
                        reply: tx,
                    })
                    .await
                    .map_err(|_| unavailable())?;
                match tokio::time::timeout(state.limits.invoke_timeout, rx).await {
                    Ok(Ok(Ok(outcome))) => Ok(json!({
                        "workerId": p.worker_id,
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
                    )),
                }
            }
            .await;
            let frame = match reply {
                Ok(payload) => ResponseFrame::ok(id, payload),
                Err(e) => ResponseFrame::err(id, e),
            };
            let _ = out.send(frame).await;
        });
    }
}

fn invoke_result(
    frame: &RequestFrame,
    invokes: &mut HashMap<String, oneshot::Sender<Result<InvokeOutcome, ErrorBody>>>,
) -> Result<Value, ErrorBody> {
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
    let Some(reply) = invokes.remove(&p.invoke_id) else {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            format!("no pending invocation `{}`", p.invoke_id),
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

pub(crate) fn pairing_error(e: &super::pairing::PairingError) -> ErrorBody {
    match e {
        super::pairing::PairingError::UnknownRequest(_) => {
            ErrorBody::new(ErrorCode::InvalidRequest, e.to_string())
                .with_details(json!({"field": "params.requestId"}))
        }
        _ => {
            warn!(error = %e, "pairing store failure");
            ErrorBody::new(ErrorCode::Unavailable, "the pairing store is unavailable")
                .with_retry_after(Some(1_000))
        }
    }
}
