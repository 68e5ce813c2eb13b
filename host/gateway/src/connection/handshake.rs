//! The handshake: challenge → `connect` → decision → registration and `hello-ok`, or a
//! refusal that is recorded, answered and closed.

use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::info;
use trustgate_protocol::{
    CloseCode, ConnectParams, ErrorBody, ErrorCode, HelloAuth, HelloOk, HelloPolicy, HelloServer,
    PROTOCOL_VERSION, ResponseFrame, Role, now_ms, parse_client_frame, parse_params,
};
use trustgate_runtime::{CachePolicy, Step};

use super::session::Session;
use super::{AuditEntry, Conn, Inbound, Source, invalid, next_frame, random_id, salvage_id};
use crate::authenticate::{Attempt, authenticate, issue_device_token};
use crate::registry::{SessionCommand, SessionInfo};

/// The parts of a refusal the record and the answer need.
#[derive(Clone, Copy)]
struct Refused<'a> {
    id: &'a str,
    started: Instant,
    method: &'a str,
    role: Role,
    plugin: Option<&'a str>,
    /// Whom the refusal is about, as far as the decision got.
    subject: Option<&'a str>,
    trace: &'a [Step],
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Refuses a `connect`: records the decision, answers, and closes with the code's close code.
    /// A refusal that is the client's doing drains its address's failed-handshake bucket.
    async fn refuse(&mut self, r: Refused<'_>, error: ErrorBody) {
        if counts_as_failure(error.code) {
            self.state.preauth.failed(self.remote.ip());
        }
        self.record(AuditEntry {
            event: "connect",
            started: r.started,
            method: r.method,
            role: r.role,
            subject: r.subject,
            error: Some(&error),
            plugin: r.plugin,
            trace: r.trace,
        });
        let close = error.code.close_code();
        self.fail(r.id, error, close).await;
    }

    /// A protocol violation before `hello-ok`: answered (when there is something to answer),
    /// closed, and charged to the address like a failed handshake.
    async fn violation(&mut self, id: &str, error: Option<ErrorBody>, close: CloseCode, why: &str) {
        self.state.preauth.failed(self.remote.ip());
        match error {
            Some(e) => self.fail(id, e, close).await,
            None => self.close(close, why).await,
        }
    }

    /// Sends the challenge and runs `connect`, all before `deadline` (set at accept). On
    /// success the session is registered (so it is listed, routable and revocable) *before*
    /// `hello-ok` is sent.
    pub(super) async fn handshake(
        &mut self,
        source: &mut Source<S>,
        deadline: tokio::time::Instant,
    ) -> Option<Session> {
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
        let mut draining = self.state.draining.subscribe();
        let first = tokio::select! {
            f = tokio::time::timeout_at(deadline, next_frame(source)) => match f {
                Ok(f) => f,
                Err(_) => {
                    info!("no connect within the handshake timeout");
                    self.close(CloseCode::POLICY_VIOLATION, "handshake timeout: no connect")
                        .await;
                    return None;
                }
            },
            _ = async { drop(draining.wait_for(|d| *d).await) } => {
                self.close(CloseCode::SERVICE_RESTART, "service restart").await;
                return None;
            }
        };
        let text = match first {
            Inbound::Text(t) => t,
            Inbound::Binary => {
                let why = "the first frame must be a text req `connect`";
                self.violation("", None, CloseCode::POLICY_VIOLATION, why)
                    .await;
                return None;
            }
            Inbound::TooBig => {
                let why = "message exceeds maxPayload";
                self.violation("", None, CloseCode::TOO_BIG, why).await;
                return None;
            }
            Inbound::BadUtf8 => {
                let why = "text frame is not valid UTF-8";
                self.violation("", None, CloseCode::INVALID_PAYLOAD, why)
                    .await;
                return None;
            }
            Inbound::Closed => return None,
        };
        let frame = match parse_client_frame(&text) {
            Ok(f) => f,
            Err(e) => {
                info!(error = %e.message, "malformed first frame");
                let id = salvage_id(&text);
                self.violation(&id, Some(invalid(&e)), CloseCode::POLICY_VIOLATION, "")
                    .await;
                return None;
            }
        };
        if frame.method != "connect" {
            let e = ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`method`: the first request must be `connect`",
            )
            .with_details(json!({"field": "method"}));
            self.violation(&frame.id, Some(e), CloseCode::POLICY_VIOLATION, "")
                .await;
            return None;
        }
        let params: ConnectParams = match parse_params(&frame.params) {
            Ok(p) => p,
            Err(e) => {
                info!(error = %e.message, "malformed connect");
                self.violation(
                    &frame.id,
                    Some(invalid(&e)),
                    CloseCode::POLICY_VIOLATION,
                    "",
                )
                .await;
                return None;
            }
        };
        let method = params
            .auth
            .as_ref()
            .map_or("none", |a| a.method.as_str())
            .to_string();
        let refused = Refused {
            id: &frame.id,
            started: Instant::now(),
            method: &method,
            role: params.role,
            plugin: None,
            subject: None,
            trace: &[],
        };
        if params.min_protocol > PROTOCOL_VERSION || params.max_protocol < PROTOCOL_VERSION {
            let e = ErrorBody::new(
                ErrorCode::ProtocolMismatch,
                format!(
                    "this gateway speaks protocol {PROTOCOL_VERSION}; the client offers {}..={}",
                    params.min_protocol, params.max_protocol
                ),
            )
            .with_details(json!({"supported": [PROTOCOL_VERSION]}));
            self.refuse(refused, e).await;
            return None;
        }
        // An address whose handshakes keep failing waits before its next one reaches the
        // chain: a flood of bad credentials costs a lookup, not a chain evaluation.
        if let Err(wait) = self.state.preauth.may_attempt(self.remote.ip()) {
            let e = ErrorBody::new(
                ErrorCode::RateLimited,
                "too many failed handshakes from this address; wait before trying again",
            )
            .with_retry_after(Some(wait.as_millis().max(1) as u64))
            .with_details(json!({"reason": "too-many-failed-handshakes"}));
            self.refuse(refused, e).await;
            return None;
        }
        // The session's slot, taken before the chain runs and held until the session ends:
        // however many handshakes decide at once, no more than `max_connections` get through.
        let Some(slot) = self.state.slots.take() else {
            let e = ErrorBody::new(
                ErrorCode::RateLimited,
                "the gateway is at its session limit",
            )
            .with_retry_after(Some(1_000))
            .with_details(json!({"reason": "gateway-full"}));
            self.refuse(refused, e).await;
            return None;
        };
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
                    self.refuse(refused, body).await;
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
        };
        let decision = tokio::time::timeout_at(
            deadline,
            authenticate(&self.state, &attempt, CachePolicy::Use),
        )
        .await;
        let Ok(decision) = decision else {
            info!("the decision did not finish within the handshake deadline");
            let e = ErrorBody::new(
                ErrorCode::Unavailable,
                "the handshake did not finish in time; try again",
            )
            .with_details(json!({"reason": "handshake-timeout"}));
            self.refuse(refused, e).await;
            return None;
        };
        let decided = decision
            .or_file_pairing_request(&self.state, &attempt)
            .await;
        let mut auth = match decided {
            Ok(a) => a,
            Err(refusal) => {
                info!(code = %refusal.error.code, cause = %refusal.cause, "connect refused");
                let refused = Refused {
                    plugin: refusal.plugin.as_deref(),
                    subject: refusal.trace.subject.as_deref(),
                    trace: &refusal.trace.steps,
                    ..refused
                };
                self.refuse(refused, *refusal.error).await;
                return None;
            }
        };
        let instance = params.client.instance_id.as_deref().unwrap_or("");
        issue_device_token(&self.state, &mut auth, instance).await;
        if let Some(device) = &auth.device_id {
            self.state.pairing.seen(device);
        }
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
                handshake_timeout_ms: self.state.limits.handshake_timeout_ms,
                tick_interval_ms: self.state.limits.tick_interval_ms,
            },
        };
        let payload = serde_json::to_value(&hello).unwrap_or(Value::Null);
        // Register first: a peer told it is connected must already be listed, reachable by
        // `worker.invoke` and covered by revocations. Commands sent before the session loop
        // starts wait in the channel and are served right after `hello-ok`.
        let (cmd_tx, commands) = mpsc::channel::<SessionCommand>(64);
        let close_orders = self.state.sessions.insert(
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
                device_id: auth.device_id.clone(),
            },
            cmd_tx,
        );
        // A drain that began while this handshake decided closed every session listed then:
        // this one is listed only now, so it closes the same way.
        if *self.state.draining.borrow() {
            self.state.sessions.remove(&self.conn_id);
            self.close(CloseCode::SERVICE_RESTART, "service restart")
                .await;
            return None;
        }
        // A revocation that landed between the decision and the registration just above
        // walked the registry without this session: look again now that it is listed.
        if let Some(device) = &auth.device_id
            && self.state.pairing.device(device).is_none()
        {
            self.state.sessions.remove(&self.conn_id);
            let e = ErrorBody::new(
                ErrorCode::Unauthenticated,
                "the device was revoked; pair again",
            )
            .with_details(json!({"reason": "device-revoked"}));
            self.refuse(refused, e).await;
            return None;
        }
        self.record(AuditEntry {
            event: "connect",
            started: refused.started,
            method: &method,
            role: params.role,
            subject: Some(&auth.identity.subject),
            error: None,
            plugin: auth.plugin.as_deref(),
            trace: &auth.trace.steps,
        });
        if !self.send_json(&ResponseFrame::ok(&frame.id, payload)).await {
            self.state.sessions.remove(&self.conn_id);
            return None;
        }
        // `method` is what the peer presented (`auth.method`), as in the audit record;
        // `identified_by` is how the identity was established (a plugin's, or the device's).
        info!(subject = %auth.identity.subject, role = auth.role.as_str(), %method, identified_by = %auth.identity.method, pairing = ?auth.pairing, "connected");
        Some(Session::new(params, auth, commands, close_orders, slot))
    }
}

/// Whether a refusal with this code is the client's doing (bad or rejected credentials, a
/// malformed request), so it drains the address's failed-handshake bucket. Waiting for
/// pairing, an unavailable dependency or a limit are not.
fn counts_as_failure(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthenticated
            | ErrorCode::Forbidden
            | ErrorCode::InvalidRequest
            | ErrorCode::PluginFailed
            | ErrorCode::ProtocolMismatch
    )
}
