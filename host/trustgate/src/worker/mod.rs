//! The worker client (`trustgate worker`): connects to a gateway, authenticates (Kubernetes
//! ServiceAccount token and/or a paired device), serves `invoke.request`s, re-authenticates
//! before its credentials expire, and reconnects with jittered exponential backoff.
//!
//! It speaks only the public protocol (`trustgate-protocol`); nothing here knows gateway
//! internals (it borrows the gateway crate's TLS and atomic-write helpers, nothing else).

mod commands;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use trustgate_gateway::{fsutil, tls};
use trustgate_protocol::{
    AuthParams, ClientInfo, ConnectParams, DeviceKey, ErrorBody, ErrorCode, HelloOk,
    PROTOCOL_VERSION, RequestFrame, Role, ServerFrame, now_ms,
};

/// Where a projected ServiceAccount token is usually mounted for trustgate workers.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/trustgate";

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `ws://` or `wss://` URL of the gateway.
    pub gateway: String,
    /// Authenticate with the ServiceAccount token at `token_path`.
    pub k8s_trust: bool,
    /// The projected token file; re-read on every connect and reauth.
    pub token_path: PathBuf,
    /// A file holding the device key (created if missing); the device token is kept next to it.
    pub device_key: Option<PathBuf>,
    /// An extra CA certificate (PEM) to trust for `wss://`.
    pub ca_file: Option<PathBuf>,
    /// `client.id` to present.
    pub client_id: String,
    /// `client.instanceId` to present (e.g. the pod name).
    pub instance_id: Option<String>,
    /// First backoff step.
    pub backoff_base: Duration,
    /// Largest backoff step.
    pub backoff_max: Duration,
}

impl WorkerOptions {
    /// Options with defaults for everything but the gateway URL.
    pub fn new(gateway: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            k8s_trust: false,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            device_key: None,
            ca_file: None,
            client_id: "trustgate-worker".into(),
            instance_id: std::env::var("HOSTNAME").ok(),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Why the worker gave up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The gateway refused the worker with a non-retryable error.
    #[error("the gateway refused this worker: {code}: {message}{}", reason.as_ref().map(|r| format!(" (reason: {r})")).unwrap_or_default())]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The gateway's message.
        message: String,
        /// `details.reason`, if any.
        reason: Option<String>,
    },
    /// The worker's own setup is wrong (unreadable key, bad URL, TLS setup).
    #[error("{0}")]
    Setup(String),
}

/// Things the run loop reports, for callers that watch progress (tests, the demo).
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    /// A session started.
    Connected(HelloOk),
    /// The gateway asked for pairing approval.
    AwaitingApproval {
        /// The pending request's id.
        request_id: String,
    },
    /// A retryable failure; retrying after the given delay.
    Retrying {
        /// The failure.
        error: String,
        /// The delay.
        after: Duration,
    },
    /// Credentials were refreshed.
    Reauthenticated {
        /// The new expiry.
        expires_at_ms: Option<u64>,
    },
    /// The session ended.
    Disconnected {
        /// The close code, if the server sent one.
        code: Option<u16>,
    },
}

/// The device key in `path`, created (32 random bytes, base64url) if the file does not exist.
pub(crate) fn load_or_create_key(path: &Path) -> Result<DeviceKey, WorkerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let raw = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| {
                WorkerError::Setup(format!("{}: not a base64url device key", path.display()))
            })?;
            let seed: [u8; 32] = raw.try_into().map_err(|_| {
                WorkerError::Setup(format!("{}: a device key is 32 bytes", path.display()))
            })?;
            Ok(DeviceKey::from_seed(seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = DeviceKey::generate();
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .map_err(|e| WorkerError::Setup(format!("{}: {e}", dir.display())))?;
            }
            fsutil::write_atomic(path, URL_SAFE_NO_PAD.encode(key.seed()).as_bytes())
                .map_err(|e| WorkerError::Setup(format!("{}: {e}", path.display())))?;
            info!(path = %path.display(), device_id = %key.id(), "created a new device key");
            Ok(key)
        }
        Err(e) => Err(WorkerError::Setup(format!("{}: {e}", path.display()))),
    }
}

fn token_file(key_path: &Path) -> PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".token");
    PathBuf::from(p)
}

/// Reads the ServiceAccount token. Read on every use: kubelet rotates it in place.
fn read_sa_token(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            format!(
                "cannot read the ServiceAccount token {}: {e}",
                path.display()
            )
        })
}

struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Full jitter: uniformly random in [0, min(max, base * 2^attempt)].
    fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ms.max(1)))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Outcome of one connection attempt.
enum Attempt {
    /// A session ran and ended.
    SessionEnded(Option<u16>),
    /// The gateway refused the handshake.
    Refused(ErrorBody),
    /// The connection failed before or during the handshake.
    Failed(String),
    /// Asked to stop.
    Stopped,
}

/// Runs the worker until `stop` turns true or the gateway refuses it for good.
pub async fn run(
    options: WorkerOptions,
    mut stop: watch::Receiver<bool>,
    events: Option<tokio::sync::mpsc::UnboundedSender<WorkerEvent>>,
) -> Result<(), WorkerError> {
    tls::install_crypto_provider();
    let emit = |e: WorkerEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    let device = match &options.device_key {
        Some(path) => Some(load_or_create_key(path)?),
        None => None,
    };
    if device.is_none() && !options.k8s_trust {
        return Err(WorkerError::Setup(
            "nothing to authenticate with: pass --k8s-trust and/or --device-key FILE".into(),
        ));
    }
    let tls = if options.gateway.starts_with("wss://") {
        Some(
            tls::client_config(options.ca_file.as_deref())
                .map_err(|e| WorkerError::Setup(e.to_string()))?,
        )
    } else {
        None
    };
    let mut backoff = Backoff {
        base: options.backoff_base,
        max: options.backoff_max,
        attempt: 0,
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let attempt = connect_once(
            &options,
            device.as_ref(),
            tls.clone(),
            &mut stop,
            &emit,
            &mut backoff,
        )
        .await;
        let delay = match attempt {
            Attempt::Stopped => return Ok(()),
            Attempt::SessionEnded(code) => {
                emit(WorkerEvent::Disconnected { code });
                backoff.next()
            }
            Attempt::Failed(error) => {
                let after = backoff.next();
                warn!(%error, retry_in_ms = after.as_millis() as u64, "connection failed");
                emit(WorkerEvent::Retrying { error, after });
                after
            }
            Attempt::Refused(body) => {
                let reason = body
                    .details
                    .as_ref()
                    .and_then(|d| d.get("reason"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if body.code == ErrorCode::NotPaired {
                    let request_id = body
                        .details
                        .as_ref()
                        .and_then(|d| d.get("requestId"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    info!(%request_id, "waiting for an operator to approve pairing request {request_id}");
                    emit(WorkerEvent::AwaitingApproval { request_id });
                    // Pairing needs a human: poll, but never faster than every second.
                    backoff
                        .next()
                        .max(Duration::from_secs(1))
                        .min(options.backoff_max)
                } else if body.code == ErrorCode::Unauthenticated
                    && matches!(
                        reason.as_deref(),
                        Some("device-token-invalid" | "device-token-expired")
                    )
                    && let Some(path) = &options.device_key
                    && token_file(path).exists()
                {
                    warn!(
                        reason = reason.as_deref().unwrap_or_default(),
                        "the stored device token was refused; discarding it and signing in with the device key"
                    );
                    let _ = std::fs::remove_file(token_file(path));
                    Duration::ZERO
                } else if body.retryable {
                    let after = backoff
                        .next()
                        .max(Duration::from_millis(body.retry_after_ms.unwrap_or(0)));
                    warn!(code = %body.code, message = %body.message, retry_in_ms = after.as_millis() as u64, "gateway asked to retry");
                    emit(WorkerEvent::Retrying {
                        error: format!("{}: {}", body.code, body.message),
                        after,
                    });
                    after
                } else {
                    return Err(WorkerError::Refused {
                        code: body.code,
                        message: body.message,
                        reason,
                    });
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

fn auth_params(options: &WorkerOptions) -> Result<Option<AuthParams>, String> {
    if options.k8s_trust {
        return Ok(Some(AuthParams {
            method: "k8s-sa-trust".into(),
            token: Some(read_sa_token(&options.token_path)?),
            device_token: None,
        }));
    }
    let stored = options
        .device_key
        .as_ref()
        .and_then(|p| std::fs::read_to_string(token_file(p)).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    Ok(stored.map(|t| AuthParams {
        method: trustgate_protocol::DEVICE_TOKEN_METHOD.into(),
        token: None,
        device_token: Some(t),
    }))
}

async fn connect_once(
    options: &WorkerOptions,
    device: Option<&DeviceKey>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    stop: &mut watch::Receiver<bool>,
    emit: &impl Fn(WorkerEvent),
    backoff: &mut Backoff,
) -> Attempt {
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        options.gateway.as_str(),
        None,
        true,
        connector,
    );
    let ws = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(15), connecting) => match r {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Attempt::Failed(format!("cannot connect to {}: {e}", options.gateway)),
            Err(_) => return Attempt::Failed(format!("connecting to {} timed out", options.gateway)),
        },
        _ = stop.changed() => return Attempt::Stopped,
    };
    let (mut sink, mut source) = ws.split();

    // Challenge.
    let nonce = loop {
        match source.next().await {
            Some(Ok(Message::Text(t))) => match ServerFrame::parse(&t) {
                Ok(ServerFrame::Event(e)) if e.event == "connect.challenge" => {
                    match e.payload.get("nonce").and_then(Value::as_str) {
                        Some(n) => break n.to_string(),
                        None => return Attempt::Failed("challenge without a nonce".into()),
                    }
                }
                _ => continue,
            },
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Attempt::Failed(format!("reading the challenge: {e}")),
            None => return Attempt::Failed("closed before the challenge".into()),
        }
    };
    let auth = match auth_params(options) {
        Ok(a) => a,
        Err(e) => return Attempt::Failed(e),
    };
    let scopes: Vec<String> = Vec::new();
    let params = ConnectParams {
        min_protocol: PROTOCOL_VERSION,
        max_protocol: PROTOCOL_VERSION,
        client: ClientInfo {
            id: options.client_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            platform: Some(format!(
                "{}-{}",
                std::env::consts::OS,
                std::env::consts::ARCH
            )),
            instance_id: options.instance_id.clone(),
        },
        role: Role::Worker,
        scopes: scopes.clone(),
        auth,
        device: device
            .map(|k| k.prove(&options.client_id, Role::Worker, &scopes, &nonce, now_ms())),
    };
    let connect = RequestFrame::new("connect", "connect", json!(params));
    let Ok(text) = serde_json::to_string(&connect) else {
        return Attempt::Failed("cannot encode connect".into());
    };
    if let Err(e) = sink.send(Message::text(text)).await {
        return Attempt::Failed(format!("sending connect: {e}"));
    }
    let hello = loop {
        match source.next().await {
            Some(Ok(Message::Text(t))) => match ServerFrame::parse(&t) {
                Ok(ServerFrame::Res(r)) if r.id == "connect" => {
                    if let Some(err) = r.error {
                        return Attempt::Refused(err);
                    }
                    match r.payload.map(serde_json::from_value::<HelloOk>) {
                        Some(Ok(h)) => break h,
                        _ => return Attempt::Failed("malformed hello-ok".into()),
                    }
                }
                _ => continue,
            },
            Some(Ok(Message::Close(frame))) => {
                return Attempt::Failed(format!(
                    "closed during the handshake ({})",
                    frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default()
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Attempt::Failed(format!("reading hello: {e}")),
            None => return Attempt::Failed("closed during the handshake".into()),
        }
    };
    backoff.reset();
    if let (Some(token), Some(path)) = (&hello.auth.device_token, &options.device_key)
        && let Err(e) = fsutil::write_atomic(&token_file(path), token.as_bytes())
    {
        warn!(error = %e, "could not store the device token; the next connect will sign again");
    }
    info!(subject = %hello.auth.subject, conn_id = %hello.server.conn_id, pairing = ?hello.auth.pairing, "connected");
    let mut expires_at = hello.auth.expires_at_ms;
    emit(WorkerEvent::Connected(hello));

    // Session.
    let mut next_id: u64 = 0;
    let mut reauth_pending: Option<String> = None;
    loop {
        let reauth_at = expires_at.filter(|_| reauth_pending.is_none()).map(|at| {
            // Refresh at 80% of the remaining lifetime, so a slow gateway still has time.
            let now = now_ms();
            let lead = at.saturating_sub(now) / 5;
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now + lead))
        });
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(Message::Text(t))) => match ServerFrame::parse(&t) {
                    Ok(ServerFrame::Event(e)) if e.event == "invoke.request" => {
                        next_id += 1;
                        let reply = commands::handle(&e.payload);
                        let frame = RequestFrame::new(format!("r{next_id}"), "invoke.result", reply);
                        let Ok(text) = serde_json::to_string(&frame) else { continue };
                        if sink.send(Message::text(text)).await.is_err() {
                            return Attempt::SessionEnded(None);
                        }
                    }
                    Ok(ServerFrame::Res(r)) if Some(&r.id) == reauth_pending.as_ref() => {
                        reauth_pending = None;
                        match (r.ok, r.payload, r.error) {
                            (true, Some(p), _) => {
                                expires_at = p.get("expiresAtMs").and_then(Value::as_u64);
                                // The gateway rotates a device token in the second half of
                                // its life; the new one replaces the stored one.
                                if let (Some(token), Some(path)) =
                                    (p.get("deviceToken").and_then(Value::as_str), &options.device_key)
                                    && let Err(e) = fsutil::write_atomic(&token_file(path), token.as_bytes())
                                {
                                    warn!(error = %e, "could not store the rotated device token; the next connect will sign again");
                                }
                                info!(expires_at_ms = ?expires_at, "reauthenticated");
                                emit(WorkerEvent::Reauthenticated { expires_at_ms: expires_at });
                            }
                            (_, _, Some(e)) => {
                                // Keep the session until the gateway closes it at expiry;
                                // the reconnect then starts afresh.
                                warn!(code = %e.code, message = %e.message, "reauth refused");
                                expires_at = None;
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f| u16::from(f.code));
                    info!(code = ?code, reason = %frame.map(|f| f.reason.to_string()).unwrap_or_default(), "gateway closed the session");
                    return Attempt::SessionEnded(code);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    warn!(error = %e, "session read failed");
                    return Attempt::SessionEnded(None);
                }
                None => return Attempt::SessionEnded(None),
            },
            _ = async {
                match reauth_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let auth = match auth_params(options) {
                    Ok(Some(a)) => a,
                    Ok(None) => { expires_at = None; continue; }
                    Err(e) => { warn!(error = %e, "cannot reauthenticate"); expires_at = None; continue; }
                };
                next_id += 1;
                let id = format!("reauth-{next_id}");
                let frame = RequestFrame::new(id.clone(), "reauth", json!({"auth": auth}));
                let Ok(text) = serde_json::to_string(&frame) else { continue };
                if sink.send(Message::text(text)).await.is_err() {
                    return Attempt::SessionEnded(None);
                }
                reauth_pending = Some(id);
            }
            _ = stop.changed() => {
                let _ = sink.send(Message::Close(None)).await;
                return Attempt::Stopped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_resets() {
        let mut b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            attempt: 0,
        };
        for n in 0..12u32 {
            let ceiling = (100u64 << n.min(20)).min(1_000);
            assert!(b.next() <= Duration::from_millis(ceiling));
        }
        assert_eq!(b.attempt, 12);
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
