//! Deciding who a peer is: device proof, device token, the plugin chain, role and scope checks,
//! and the pairing fallback. Used by `connect` and by `reauth`.

use std::net::SocketAddr;

use serde_json::json;

use super::GatewayState;
use super::pairing::DeviceRecord;
use crate::plugin::{Credentials, DenyCode, Device, Identity, Outcome, Peer, Request, StepKind};
use crate::protocol::{AuthParams, ClientInfo, ErrorBody, ErrorCode, Pairing, Role};

use crate::protocol::DEVICE_TOKEN_METHOD as DEVICE_METHOD;

/// Everything `connect` (or `reauth`) presented, with the device proof already verified.
pub(crate) struct Attempt<'a> {
    pub conn_id: &'a str,
    pub remote: SocketAddr,
    pub tls: bool,
    pub client: &'a ClientInfo,
    pub role: Role,
    pub scopes: &'a [String],
    pub auth: Option<&'a AuthParams>,
    /// The verified device (id, public key), if the peer proved one.
    pub device: Option<(String, String)>,
    /// Whether a device that logs in by signature gets a new device token (only on `connect`:
    /// re-validations must not rotate a token the client never sees).
    pub issue_token: bool,
}

/// A successful authentication.
#[derive(Debug, Clone)]
pub(crate) struct Authenticated {
    /// The plugin that established the identity (`gateway` for a paired device).
    pub plugin: Option<String>,
    pub identity: Identity,
    pub role: Role,
    pub scopes: Vec<String>,
    pub pairing: Pairing,
    pub device_token: Option<String>,
}

/// A refusal: what the client is told, and what the log says.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub error: ErrorBody,
    /// The real cause, for the log (never a secret).
    pub cause: String,
    /// The plugin that denied or failed, if one did.
    pub plugin: Option<String>,
}

impl Refusal {
    fn new(code: ErrorCode, reason: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            error: ErrorBody::new(code, message.clone()).with_details(json!({ "reason": reason })),
            cause: message,
            plugin: None,
        }
    }
}

fn device_identity(record: &DeviceRecord) -> Identity {
    Identity {
        subject: format!("device:{}", record.id),
        method: DEVICE_METHOD.into(),
        groups: vec!["trustgate:paired-devices".into()],
        attributes: vec![("device-id".into(), record.id.clone())],
        roles: record
            .roles
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        scopes: record.scopes.clone(),
        expires_at_ms: None,
        skip_pairing: false,
    }
}

fn deny_code(code: DenyCode) -> ErrorCode {
    match code {
        DenyCode::Unauthenticated => ErrorCode::Unauthenticated,
        DenyCode::Forbidden => ErrorCode::Forbidden,
        DenyCode::Unavailable => ErrorCode::Unavailable,
        DenyCode::RateLimited => ErrorCode::RateLimited,
    }
}

/// Methods that carry no credential of their own, so an approved device may stand for the peer.
fn is_device_method(method: &str) -> bool {
    matches!(method, "" | "none" | DEVICE_METHOD | "device")
}

/// Files (or reuses) a pairing request for the device and refuses with `NOT_PAIRED`.
fn not_paired(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    (id, public_key): (&str, &str),
    message: &str,
    why: &str,
) -> Refusal {
    let pending = state.pairing.request(
        id,
        public_key,
        attempt.role,
        attempt.scopes,
        &attempt.client.id,
        &attempt.remote.to_string(),
    );
    Refusal {
        error: ErrorBody::new(ErrorCode::NotPaired, message).with_details(json!({
            "reason": "pairing-required",
            "requestId": pending.request_id,
            "expiresAtMs": pending.expires_at_ms,
        })),
        cause: format!(
            "{why}; device {id} not paired (request {})",
            pending.request_id
        ),
        plugin: None,
    }
}

pub(crate) async fn authenticate(
    state: &GatewayState,
    attempt: &Attempt<'_>,
) -> Result<Authenticated, Refusal> {
    let method = attempt.auth.map(|a| a.method.as_str()).unwrap_or("none");
    let device_token = attempt.auth.and_then(|a| a.device_token.as_deref());
    if device_token.is_some() && attempt.auth.and_then(|a| a.token.as_ref()).is_some() {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            "conflicting-credentials",
            "auth.token and auth.deviceToken cannot be presented together",
        ));
    }

    // 1. A paired device stands for the peer when the peer presents no other credential.
    let mut seeded: Option<(DeviceRecord, bool)> = None; // (device, came with a token)
    if let Some(token) = device_token {
        let Some(record) = state.pairing.device_for_token(token) else {
            return Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "device-token-invalid",
                "the device token is unknown, revoked or superseded; pair again",
            ));
        };
        if let Some((id, _)) = &attempt.device
            && *id != record.id
        {
            return Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "device-token-mismatch",
                "the device token belongs to another device",
            ));
        }
        seeded = Some((record, true));
    } else if is_device_method(method)
        && let Some((id, _)) = &attempt.device
        && let Some(record) = state.pairing.device(id)
        && record.roles.contains(&attempt.role)
    {
        // A device approved only for other roles pairs again for this one (below).
        seeded = Some((record, false));
    }

    // 2. The plugin chain.
    let request = Request {
        credentials: Credentials {
            method: method.to_string(),
            token: attempt.auth.and_then(|a| a.token.clone()),
            device_token: device_token.map(str::to_string),
        },
        device: attempt.device.as_ref().map(|(id, pk)| Device {
            id: id.clone(),
            public_key: pk.clone(),
        }),
        peer: Peer {
            remote_addr: attempt.remote.to_string(),
            tls: attempt.tls,
            client_id: attempt.client.id.clone(),
            client_version: attempt.client.version.clone(),
            platform: attempt.client.platform.clone(),
            conn_id: attempt.conn_id.to_string(),
        },
        role: attempt.role.as_str().to_string(),
        scopes: attempt.scopes.to_vec(),
    };
    let chain = state.chain();
    let verdict = chain
        .evaluate_with(&request, seeded.as_ref().map(|(r, _)| device_identity(r)))
        .await;
    let (deny, failure) = match &verdict.outcome {
        Outcome::Denied { denial, .. } => (Some(deny_code(denial.code).as_str()), None),
        Outcome::Failed { failure, .. } => (None, Some(failure.cause())),
        _ => (None, None),
    };
    state.metrics.record_steps(&verdict.steps, deny, failure);
    let first_allow = verdict
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Allow)
        .map(|s| s.plugin.clone());
    let identity = match verdict.outcome {
        Outcome::Allowed(identity) => identity,
        Outcome::Denied { plugin, denial } => {
            let code = deny_code(denial.code);
            let mut error = ErrorBody::new(code, format!("denied by auth plugin `{plugin}`"))
                .with_details(json!({ "reason": denial.reason, "plugin": plugin }))
                .with_retry_after(denial.retry_after_ms.map(u64::from));
            if code.retryable() && error.retry_after_ms.is_none() {
                error.retry_after_ms = Some(1_000);
            }
            return Err(Refusal {
                error,
                cause: format!(
                    "plugin `{plugin}` denied ({}): {}",
                    denial.reason, denial.message
                ),
                plugin: Some(plugin),
            });
        }
        Outcome::Failed { plugin, failure } => {
            return Err(Refusal {
                error: ErrorBody::new(
                    ErrorCode::PluginFailed,
                    format!("auth plugin `{plugin}` failed; access denied"),
                )
                .with_details(json!({ "plugin": plugin, "reason": failure.cause() })),
                cause: format!("plugin `{plugin}` {failure}"),
                plugin: Some(plugin),
            });
        }
        Outcome::NoDecision => {
            return Err(match &attempt.device {
                Some((id, pk)) if is_device_method(method) => not_paired(
                    state,
                    attempt,
                    (id, pk),
                    "this device is not paired; an operator must approve the request",
                    "no plugin decided",
                ),
                _ if method == "none" => Refusal::new(
                    ErrorCode::Unauthenticated,
                    "no-credentials",
                    "no credentials presented: send auth or a device identity",
                ),
                _ => Refusal::new(
                    ErrorCode::Unauthenticated,
                    "credentials-not-accepted",
                    format!("no auth plugin accepted credentials of method `{method}`"),
                ),
            });
        }
    };

    // 3. Role and scopes: only what the identity allows.
    if !identity.roles.iter().any(|r| r == attempt.role.as_str()) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "role-not-allowed",
            format!(
                "`{}` may not connect as {}",
                identity.subject,
                attempt.role.as_str()
            ),
        ));
    }
    if let Some(s) = attempt.scopes.iter().find(|s| !identity.scopes.contains(s)) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "scope-not-allowed",
            format!("`{}` may not hold scope `{s}`", identity.subject),
        ));
    }

    // 4. Pairing: skipped only when a plugin said so; otherwise a paired device is needed.
    let (pairing, device_token) = match seeded {
        Some((record, with_token)) => {
            let token = if with_token || !attempt.issue_token {
                None
            } else {
                state.pairing.issue_token(&record.id).map_err(|e| Refusal {
                    error: ErrorBody::new(ErrorCode::Unavailable, "pairing store unavailable")
                        .with_retry_after(Some(1_000)),
                    cause: e.to_string(),
                    plugin: None,
                })?
            };
            (Pairing::Paired, token)
        }
        None if identity.skip_pairing => (Pairing::Skipped, None),
        None => match &attempt.device {
            Some((id, pk)) => match state.pairing.device(id) {
                Some(record) if record.roles.contains(&attempt.role) => (Pairing::Paired, None),
                _ => {
                    return Err(not_paired(
                        state,
                        attempt,
                        (id, pk),
                        "this identity may not skip pairing and its device is not paired",
                        &format!("{} may not skip pairing", identity.subject),
                    ));
                }
            },
            None => {
                return Err(Refusal::new(
                    ErrorCode::Unauthenticated,
                    "device-required",
                    format!(
                        "`{}` may not skip pairing: present a device identity to pair",
                        identity.subject
                    ),
                ));
            }
        },
    };
    let plugin =
        first_allow.or_else(|| (pairing == Pairing::Paired).then(|| "gateway".to_string()));
    Ok(Authenticated {
        plugin,
        role: attempt.role,
        scopes: attempt.scopes.to_vec(),
        identity,
        pairing,
        device_token,
    })
}
