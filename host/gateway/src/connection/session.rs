//! The session: everything after `hello-ok`. One `select!` loop over client requests, ticks,
//! periodic re-validation, the credentials' expiry, replies from the invoke relay and commands
//! from other tasks (a relayed invocation, a forced close).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use trustgate_protocol::{
    AuthParams, CloseCode, ConnectParams, ErrorBody, ErrorCode, RequestFrame, ResponseFrame, Role,
    now_ms, parse_client_frame, parse_params,
};
use trustgate_runtime::CachePolicy;

use super::invoke::Invocations;
use super::{AuditEntry, Conn, Inbound, Source, invalid, next_frame, salvage_id};
use crate::authenticate::{Attempt, Authenticated, Decision, authenticate};
use crate::pairing_store::PairingError;
use crate::registry::SessionCommand;

/// Stands in for "never" where a timer is needed but the credentials do not expire.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// The state of one established session.
pub(super) struct Session {
    /// The `connect` that opened it.
    params: ConnectParams,
    /// Who the peer is (updated by reauth and re-validation).
    auth: Authenticated,
    /// The credentials to re-validate: those of `connect`, then of the last successful reauth.
    last_auth: Option<AuthParams>,
    /// The device the peer proved on `connect` (id, public key).
    device: Option<(String, String)>,
    /// Commands from other tasks.
    commands: mpsc::Receiver<SessionCommand>,
    /// Close orders (revocation, shutdown).
    close_orders: tokio::sync::watch::Receiver<crate::registry::CloseOrder>,
    /// Invocations relayed to this worker and not answered yet.
    invocations: Invocations,
    /// Its place among `max_connections`, given back when the session ends.
    _slot: crate::admission::SessionSlot,
}

impl Session {
    pub(super) fn new(
        params: ConnectParams,
        auth: Authenticated,
        commands: mpsc::Receiver<SessionCommand>,
        close_orders: tokio::sync::watch::Receiver<crate::registry::CloseOrder>,
        slot: crate::admission::SessionSlot,
    ) -> Self {
        let device = params
            .device
            .as_ref()
            .map(|d| (d.id.clone(), d.public_key.clone()));
        Self {
            last_auth: params.auth.clone(),
            params,
            auth,
            device,
            commands,
            close_orders,
            invocations: Invocations::default(),
            _slot: slot,
        }
    }

    /// The expiry of the session's credentials as a timer deadline.
    fn expiry(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        match self.auth.identity.expires_at_ms {
            Some(at) => now + Duration::from_millis(at.saturating_sub(now_ms())),
            None => now + FAR_FUTURE,
        }
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// The session loop of a registered session. However it ends, the session leaves the
    /// registry before its close frame is sent, so nobody is routed to a closing connection.
    pub(super) async fn session(&mut self, mut source: Source<S>, mut s: Session) {
        let (out_tx, mut out_rx) = mpsc::channel::<ResponseFrame>(64);
        let start = tokio::time::Instant::now();
        let revalidate_every = self.state.limits.revalidate_interval();
        let mut revalidation = tokio::time::interval_at(start + revalidate_every, revalidate_every);
        let tick_every = self.state.limits.tick_interval();
        let mut ticker = tokio::time::interval_at(start + tick_every, tick_every);
        // One timer for the session's life, moved only when the expiry changes.
        let mut expiry_at = s.auth.identity.expires_at_ms;
        let expiry = tokio::time::sleep_until(s.expiry());
        tokio::pin!(expiry);
        // `None`: the peer is gone; `Some`: close with this code and reason.
        let close: Option<(CloseCode, String)> = loop {
            if s.auth.identity.expires_at_ms != expiry_at {
                expiry_at = s.auth.identity.expires_at_ms;
                expiry.as_mut().reset(s.expiry());
            }
            tokio::select! {
                inbound = next_frame(&mut source) => match inbound {
                    Inbound::Text(text) => {
                        let reply = self.request(&text, &mut s, &out_tx).await;
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
                    Inbound::BadUtf8 => break Some((CloseCode::INVALID_PAYLOAD, "text frame is not valid UTF-8".into())),
                    Inbound::Closed => break None,
                },
                _ = ticker.tick() => {
                    if !self.send_event("tick", json!({"ts": now_ms()}), true).await {
                        break None;
                    }
                }
                _ = revalidation.tick() => {
                    if let Some(reason) = self.revalidate(&mut s).await {
                        break Some((CloseCode::CREDENTIALS_EXPIRED, reason.into()));
                    }
                }
                Some(reply) = out_rx.recv() => {
                    if !self.send_json(&reply).await {
                        break None;
                    }
                }
                Some(cmd) = s.commands.recv() => match cmd {
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
                        s.invocations.insert(invoke_id, reply);
                    }
                },
                Ok(()) = s.close_orders.changed() => {
                    let order = s.close_orders.borrow_and_update().clone();
                    if let Some((code, reason)) = order {
                        info!(code = code.0, %reason, "closing session");
                        break Some((code, reason));
                    }
                }
                _ = &mut expiry, if expiry_at.is_some() => {
                    info!(subject = %s.auth.identity.subject, "credentials expired");
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
    async fn request(
        &mut self,
        text: &str,
        s: &mut Session,
        out: &mpsc::Sender<ResponseFrame>,
    ) -> Option<ResponseFrame> {
        let frame = match parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => return Some(ResponseFrame::err(salvage_id(text), invalid(&e))),
        };
        let id = frame.id.clone();
        let result = match frame.method.as_str() {
            "ping" => Ok(json!({"pong": true})),
            "session.info" => Ok(self.session_info(&s.auth)),
            "reauth" => self.reauth(&frame, s).await,
            "connect" => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "already connected; `connect` is only valid as the first request",
            )
            .with_details(json!({"field": "method"}))),
            "invoke.result" if s.auth.role == Role::Worker => s.invocations.answer(&frame),
            "workers.list" | "pairing.list" | "pairing.approve" | "pairing.reject"
            | "worker.invoke" | "devices.list" | "devices.revoke"
                if s.auth.role != Role::Operator =>
            {
                Err(
                    ErrorBody::new(ErrorCode::Forbidden, "this method is for operators only")
                        .with_details(json!({"reason": "operator-only"})),
                )
            }
            "workers.list" => Ok(json!({"workers": self.state.sessions_view(true)})),
            "pairing.list" => Ok(json!({
                "pending": self.state.pairing.pending(),
                "devices": self.state.pairing.device_views(&self.state.sessions),
            })),
            "pairing.approve" | "pairing.reject" => self.decide_pairing(&frame, s).await,
            "devices.list" | "devices.revoke" => self.manage_device(&frame, s).await,
            "worker.invoke" => {
                super::invoke::relay(self.state.clone(), frame, out.clone());
                return None;
            }
            // The name is the client's text: not echoed.
            _ => Err(ErrorBody::new(
                ErrorCode::InvalidRequest,
                "`method`: not a method of this protocol (see docs/protocol.md)",
            )
            .with_details(json!({"field": "method"}))),
        };
        Some(match result {
            Ok(payload) => ResponseFrame::ok(id, payload),
            Err(e) => ResponseFrame::err(id, e),
        })
    }

    /// An authentication attempt within the established session: same connection, client,
    /// granted role and scopes, and device.
    fn session_attempt<'a>(
        &'a self,
        s: &'a Session,
        credentials: Option<&'a AuthParams>,
    ) -> Attempt<'a> {
        Attempt {
            conn_id: &self.conn_id,
            remote: self.remote,
            tls: self.tls,
            client: &s.params.client,
            role: s.auth.role,
            scopes: &s.auth.scopes,
            auth: credentials,
            device: s.device.clone(),
        }
    }

    /// Validates the session's credentials again, bypassing the review cache. Returns the close
    /// reason if they no longer hold; a check that could not be completed (API down, plugin
    /// failure) keeps the session. Never files a pairing request or issues a token.
    async fn revalidate(&mut self, s: &mut Session) -> Option<&'static str> {
        let attempt = self.session_attempt(s, s.last_auth.as_ref());
        match authenticate(&self.state, &attempt, CachePolicy::Bypass).await {
            Decision::Allowed(fresh) if fresh.identity.subject == s.auth.identity.subject => {
                let expires = fresh.identity.expires_at_ms;
                s.auth.identity = fresh.identity;
                self.state.sessions.update_expiry(&self.conn_id, expires);
                debug!(expires_at_ms = ?expires, "credentials re-validated");
                None
            }
            Decision::Allowed(other) => {
                warn!(old = %s.auth.identity.subject, new = %other.identity.subject, "re-validation found another subject");
                Some("credentials expired")
            }
            Decision::PairingRequired(p) => {
                info!(cause = %p.cause, "the session's device is no longer paired; closing");
                Some("credentials expired")
            }
            Decision::Refused(r)
                if matches!(
                    r.error.code,
                    ErrorCode::Unauthenticated | ErrorCode::Forbidden | ErrorCode::NotPaired
                ) =>
            {
                info!(code = %r.error.code, cause = %r.cause, "credentials no longer valid; closing");
                Some("credentials expired")
            }
            Decision::Refused(r) => {
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

    async fn reauth(&mut self, frame: &RequestFrame, s: &mut Session) -> Result<Value, ErrorBody> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ReauthParams {
            auth: AuthParams,
        }
        let p: ReauthParams = parse_params(&frame.params).map_err(|e| invalid(&e))?;
        let attempt = self.session_attempt(s, Some(&p.auth));
        let started = Instant::now();
        let entry = |subject, error, plugin, trace| AuditEntry {
            event: "reauth",
            started,
            method: &p.auth.method,
            role: s.auth.role,
            subject,
            error,
            plugin,
            trace,
        };
        // A peer's own reauth may file a pairing request, as its `connect` would.
        let fresh = match authenticate(&self.state, &attempt, CachePolicy::Use)
            .await
            .or_file_pairing_request(&self.state, &attempt)
            .await
        {
            Ok(f) => f,
            Err(r) => {
                info!(code = %r.error.code, cause = %r.cause, "reauth refused");
                self.record(entry(
                    r.trace.subject.as_deref(),
                    Some(&r.error),
                    r.plugin.as_deref(),
                    &r.trace.steps,
                ));
                return Err(*r.error);
            }
        };
        self.record(entry(
            Some(&fresh.identity.subject),
            None,
            fresh.plugin.as_deref(),
            &fresh.trace.steps,
        ));
        if fresh.identity.subject != s.auth.identity.subject {
            warn!(old = %s.auth.identity.subject, new = %fresh.identity.subject, "reauth with another subject refused");
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                "reauth must authenticate the same subject as the session",
            )
            .with_details(json!({"reason": "subject-changed"})));
        }
        let mut expires = fresh.identity.expires_at_ms;
        let mut reply = json!({});
        let mut auth = p.auth;
        // A device token in the second half of its life is rotated: the new one (for the
        // same client instance) comes back in the reply and is what re-validation uses from
        // now on; the old one stops working.
        if let (Some(token), Some(device)) = (&fresh.presented_token, &fresh.device_id)
            && self.state.pairing.due_for_rotation(token)
        {
            match self
                .state
                .pairing
                .issue_token(device, &token.instance)
                .await
            {
                Ok(Some((new, new_expiry))) => {
                    info!(device = %device, "device token rotated on reauth");
                    // The session was bounded by the old token; now by the new one (unless
                    // a plugin set an earlier bound).
                    if expires == Some(token.expires_at_ms) {
                        expires = Some(new_expiry);
                    }
                    reply["deviceToken"] = json!(new);
                    auth.device_token = Some(new);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(device = %device, error = %e, "device token not rotated (will retry at the next reauth)")
                }
            }
        }
        if let Some(device) = &fresh.device_id {
            self.state.pairing.seen(device);
        }
        reply["expiresAtMs"] = json!(expires);
        s.auth.identity = fresh.identity;
        s.auth.identity.expires_at_ms = expires;
        s.last_auth = Some(auth);
        self.state.sessions.update_expiry(&self.conn_id, expires);
        info!(expires_at_ms = ?expires, "reauthenticated");
        Ok(reply)
    }

    /// `pairing.approve` / `pairing.reject` from an operator session; audited with the
    /// operator as the actor.
    async fn decide_pairing(&self, frame: &RequestFrame, s: &Session) -> Result<Value, ErrorBody> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Decide {
            request_id: String,
        }
        let p: Decide = parse_params(&frame.params).map_err(|e| invalid(&e))?;
        let actor = format!("operator:{}", s.auth.identity.subject);
        let lifecycle = crate::lifecycle::Lifecycle::new(&self.state, &actor);
        let result = if frame.method == "pairing.approve" {
            lifecycle
                .approve(&p.request_id)
                .await
                .map(|d| json!({"approved": true, "device": self.state.pairing.device_view(&d.id, &self.state.sessions)}))
        } else {
            lifecycle
                .reject(&p.request_id)
                .await
                .map(|r| json!({"rejected": true, "request": r}))
        };
        result.map_err(|e| pairing_error(&e))
    }

    /// `devices.list` / `devices.revoke` from an operator session.
    async fn manage_device(&self, frame: &RequestFrame, s: &Session) -> Result<Value, ErrorBody> {
        if frame.method == "devices.list" {
            return Ok(json!({"devices": self.state.pairing.device_views(&self.state.sessions)}));
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        struct Revoke {
            device_id: String,
        }
        let p: Revoke = parse_params(&frame.params).map_err(|e| invalid(&e))?;
        let actor = format!("operator:{}", s.auth.identity.subject);
        crate::lifecycle::Lifecycle::new(&self.state, &actor)
            .revoke(&p.device_id)
            .await
            .map(|(device, closed)| json!({"revoked": true, "device": device.id, "sessionsClosed": closed}))
            .map_err(|e| pairing_error(&e))
    }
}

/// The protocol's answer to a pairing store failure. Ids the client sent are not echoed.
fn pairing_error(e: &PairingError) -> ErrorBody {
    match e {
        PairingError::UnknownRequest(_) => ErrorBody::new(
            ErrorCode::InvalidRequest,
            "`params.requestId`: no pending pairing request has this id (it may have expired or been decided already)",
        )
        .with_details(json!({"field": "params.requestId", "reason": "unknown-request"})),
        PairingError::UnknownDevice(_) => ErrorBody::new(
            ErrorCode::InvalidRequest,
            "`params.deviceId`: no approved device has this id",
        )
        .with_details(json!({"field": "params.deviceId", "reason": "unknown-device"})),
        PairingError::Conflict(_) => ErrorBody::new(
            ErrorCode::Unavailable,
            "another replica changed this entry at the same time; look again and retry",
        )
        .with_details(json!({"reason": "pairing-conflict"}))
        .with_retry_after(Some(100)),
        _ => {
            warn!(error = %e, "pairing store failure");
            ErrorBody::new(ErrorCode::Unavailable, "the pairing store is unavailable")
                .with_details(json!({"reason": "pairing-store-unavailable"}))
                .with_retry_after(Some(1_000))
        }
    }
}
