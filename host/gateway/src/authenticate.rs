//! Deciding who a peer is: device proof, device token, the plugin chain, role and scope checks,
//! and the pairing fallback. Used by `connect`, `reauth` and the periodic re-validation.
//!
//! Deciding is pure: [`authenticate`] reads the pairing store but never writes it. It says
//! what should happen ([`Decision`]); the caller performs the writes that follow (issuing a
//! device token after a signature login, filing a pairing request), so a background
//! re-validation can never file a pairing request or rotate a token.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use trustgate_protocol::DEVICE_TOKEN_METHOD as DEVICE_METHOD;
use trustgate_protocol::{AuthParams, ClientInfo, ErrorBody, ErrorCode, Pairing, Role};
use trustgate_runtime::{
    CachePolicy, Credentials, Denial, DenyCode, Device, Identity, Outcome, Peer, PluginFailure,
    Request, Step, StepKind, escape_text,
};

use crate::pairing_store::{DeviceRecord, DeviceToken, PairingError, TokenRefusal};
use crate::state::GatewayState;

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
}

/// What should happen to an attempt.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The peer is who [`Authenticated`] says (boxed: it is by far the largest variant).
    Allowed(Box<Authenticated>),
    /// The peer is refused.
    Refused(Refusal),
    /// The peer proved a device that is not approved (for this role): on `connect` a pairing
    /// request is filed and the answer is `NOT_PAIRED`.
    PairingRequired(PairingRequired),
}

impl Decision {
    /// The decision of a peer's own `connect` or `reauth`: a device that needs pairing gets a
    /// pairing request filed (or its open one reused) and `NOT_PAIRED`.
    pub(crate) async fn or_file_pairing_request(
        self,
        state: &GatewayState,
        attempt: &Attempt<'_>,
    ) -> Result<Authenticated, Refusal> {
        match self {
            Self::Allowed(a) => Ok(*a),
            Self::Refused(r) => Err(r),
            Self::PairingRequired(p) => Err(file_pairing_request(state, attempt, p).await),
        }
    }
}

/// A device that needs an operator's approval.
#[derive(Debug)]
pub(crate) struct PairingRequired {
    pub device_id: String,
    pub public_key: String,
    /// What the client is told.
    pub message: &'static str,
    /// The real cause, for the log.
    pub cause: String,
    /// How the chain decided.
    pub trace: Trace,
}

/// How a decision came about, for the audit log and `trustgate auth explain`: every plugin's
/// step, and who the peer is as far as the chain got.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trace {
    pub steps: Vec<Step>,
    pub subject: Option<String>,
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
    /// A paired device that proved itself by signature rather than a device token: on
    /// `connect` it is issued a device token.
    pub signed_in_device: Option<String>,
    /// The paired device the peer is (by token or signature), if any: revoking it closes
    /// the session.
    pub device_id: Option<String>,
    /// The device token the peer presented, if it logged in with one (for rotation).
    pub presented_token: Option<DeviceToken>,
    /// The device token issued with this authentication, if one was.
    pub device_token: Option<String>,
    /// How the chain decided.
    pub trace: Trace,
}

/// A refusal: what the client is told, and what the log says.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// What the client is told (boxed: refusals travel in `Result`s on the hot path).
    pub error: Box<ErrorBody>,
    /// The real cause, for the log (never a secret).
    pub cause: String,
    /// The plugin that denied or failed, if one did.
    pub plugin: Option<String>,
    /// How the chain decided (empty if the refusal came before it).
    pub trace: Trace,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, reason: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            error: Box::new(
                ErrorBody::new(code, message.clone()).with_details(json!({ "reason": reason })),
            ),
            cause: message,
            plugin: None,
            trace: Trace::default(),
        }
    }
}

/// The identity a paired device stands for. A login with a device token lasts no longer than
/// the token: the session must `reauth` (and so rotate the token) before it expires.
fn device_identity(record: &DeviceRecord, token: Option<&DeviceToken>) -> Identity {
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
        expires_at_ms: token.map(|t| t.expires_at_ms),
        skip_pairing: false,
    }
}

/// Methods that carry no credential of their own, so an approved device may stand for the peer.
fn is_device_method(method: &str) -> bool {
    matches!(method, "" | "none" | DEVICE_METHOD | "device")
}

/// Files (or reuses) a pairing request for the device and refuses with `NOT_PAIRED`. The one
/// place a decision leads to a pairing request; only a peer's own `connect` or `reauth` calls it.
async fn file_pairing_request(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    needed: PairingRequired,
) -> Refusal {
    let pending = match state
        .pairing
        .request(
            &needed.device_id,
            &needed.public_key,
            attempt.role,
            attempt.scopes,
            &attempt.client.id,
            &attempt.remote.to_string(),
        )
        .await
    {
        Ok(p) => p,
        Err(PairingError::TooManyPending {
            per_address,
            retry_after_ms,
        }) => {
            return Refusal {
                error: Box::new(
                    ErrorBody::new(
                        ErrorCode::RateLimited,
                        "too many pairing requests are waiting for an operator; try again later",
                    )
                    .with_retry_after(Some(retry_after_ms))
                    .with_details(json!({"reason": "too-many-pairing-requests"})),
                ),
                cause: format!(
                    "pairing request of device {} refused: the {} cap on pending requests is reached",
                    needed.device_id,
                    if per_address { "per-address" } else { "total" }
                ),
                plugin: None,
                trace: needed.trace,
            };
        }
        Err(e) => {
            return Refusal {
                error: Box::new(
                    ErrorBody::new(ErrorCode::Unavailable, "the pairing store is unavailable")
                        .with_details(json!({"reason": "pairing-store-unavailable"}))
                        .with_retry_after(Some(1_000)),
                ),
                cause: format!("pairing request of device {}: {e}", needed.device_id),
                plugin: None,
                trace: needed.trace,
            };
        }
    };
    Refusal {
        error: Box::new(
            ErrorBody::new(ErrorCode::NotPaired, needed.message).with_details(json!({
                "reason": "pairing-required",
                "requestId": pending.request_id,
                "expiresAtMs": pending.expires_at_ms,
            })),
        ),
        cause: format!(
            "{}; device {} not paired (request {})",
            needed.cause, needed.device_id, pending.request_id
        ),
        plugin: None,
        trace: needed.trace,
    }
}

/// Issues a device token to a device that signed in (`connect` only), for the client's
/// instance. The login does not depend on it: if the store cannot take the write (it is
/// unavailable), the device is still let in — its signature proved it — and simply gets no new
/// token this time.
pub(crate) async fn issue_device_token(
    state: &GatewayState,
    auth: &mut Authenticated,
    instance: &str,
) {
    let Some(device_id) = &auth.signed_in_device else {
        return;
    };
    match state.pairing.issue_token(device_id, instance).await {
        Ok(issued) => auth.device_token = issued.map(|(token, _)| token),
        Err(e) => {
            tracing::warn!(device = %device_id, error = %e, "no device token issued (the login proceeds on the signature)")
        }
    }
}

/// Decides on an attempt. `cache` says whether the plugins' verifications may be answered
/// from the review cache (a periodic re-validation passes [`CachePolicy::Bypass`]).
pub(crate) async fn authenticate(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    cache: CachePolicy,
) -> Decision {
    let mut trace = Trace::default();
    match decide(state, attempt, cache, &mut trace).await {
        Ok(mut a) => {
            a.trace = trace;
            Decision::Allowed(Box::new(a))
        }
        Err(Fallback::Refused(mut r)) => {
            r.trace = trace;
            Decision::Refused(r)
        }
        Err(Fallback::Pair(mut p)) => {
            p.trace = trace;
            Decision::PairingRequired(*p)
        }
    }
}

/// Why [`decide`] stopped short of an identity.
enum Fallback {
    Refused(Refusal),
    /// Boxed: far larger than a refusal, and rare.
    Pair(Box<PairingRequired>),
}

impl From<Refusal> for Fallback {
    fn from(r: Refusal) -> Self {
        Self::Refused(r)
    }
}

/// What the peer presented, read once.
struct Presented<'a> {
    /// `auth.method` (`none` without `auth`).
    method: &'a str,
    /// `auth.deviceToken`.
    device_token: Option<&'a str>,
}

/// A paired device that stands for the peer before the chain runs.
struct Seed {
    record: DeviceRecord,
    /// The token it logged in with (`None`: it proved itself by signature).
    token: Option<DeviceToken>,
}

/// The steps of a decision, in order; each either hands its result to the next or stops with
/// the refusal (or the pairing fallback) that ends the attempt.
async fn decide(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    cache: CachePolicy,
    trace: &mut Trace,
) -> Result<Authenticated, Fallback> {
    let presented = read_credentials(attempt)?;
    let seed = paired_device(state, attempt, &presented)?;
    let (identity, first_allow) =
        run_chain(state, attempt, &presented, seed.as_ref(), cache, trace).await?;
    check_role_and_scopes(attempt, &identity)?;
    let (pairing, signed_in_device, device_id, presented_token) =
        settle_pairing(state, attempt, seed, &identity)?;
    let plugin =
        first_allow.or_else(|| (pairing == Pairing::Paired).then(|| "gateway".to_string()));
    Ok(Authenticated {
        plugin,
        role: attempt.role,
        scopes: attempt.scopes.to_vec(),
        identity,
        pairing,
        signed_in_device,
        device_id,
        presented_token,
        device_token: None,
        trace: Trace::default(),
    })
}

/// Step 0: the credentials, refusing a combination that means two things at once.
fn read_credentials<'a>(attempt: &Attempt<'a>) -> Result<Presented<'a>, Refusal> {
    let method = attempt.auth.map_or("none", |a| a.method.as_str());
    let device_token = attempt.auth.and_then(|a| a.device_token.as_deref());
    if device_token.is_some() && attempt.auth.and_then(|a| a.token.as_ref()).is_some() {
        return Err(Refusal::new(
            ErrorCode::InvalidRequest,
            "conflicting-credentials",
            "auth.token and auth.deviceToken cannot be presented together",
        ));
    }
    Ok(Presented {
        method,
        device_token,
    })
}

/// Step 1: a paired device stands for the peer when the peer presents no other credential —
/// by its device token, or by its verified signature on a method that carries no credential.
fn paired_device(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    presented: &Presented<'_>,
) -> Result<Option<Seed>, Refusal> {
    if let Some(token) = presented.device_token {
        let (record, token) = state
            .pairing
            .device_for_token(token)
            .map_err(token_refusal)?;
        if let Some((id, _)) = &attempt.device
            && *id != record.id
        {
            return Err(Refusal::new(
                ErrorCode::Unauthenticated,
                "device-token-mismatch",
                "the device token belongs to another device",
            ));
        }
        return Ok(Some(Seed {
            record,
            token: Some(token),
        }));
    }
    // A device approved only for other roles pairs again for this one (step 4).
    Ok(
        if is_device_method(presented.method)
            && let Some((id, _)) = &attempt.device
            && let Some(record) = state.pairing.device(id)
            && record.roles.contains(&attempt.role)
        {
            Some(Seed {
                record,
                token: None,
            })
        } else {
            None
        },
    )
}

/// Why a presented device token stands for no device.
fn token_refusal(refusal: TokenRefusal) -> Refusal {
    match refusal {
        TokenRefusal::Expired => Refusal::new(
            ErrorCode::Unauthenticated,
            "device-token-expired",
            "the device token has expired; sign in with the device key for a new one",
        ),
        TokenRefusal::Unavailable => Refusal {
            error: Box::new(
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the pairing store is still loading; try again",
                )
                .with_details(json!({"reason": "pairing-store-unavailable"}))
                .with_retry_after(Some(1_000)),
            ),
            cause: "device token not in the local copy, which has not finished loading".into(),
            plugin: None,
            trace: Trace::default(),
        },
        TokenRefusal::Unknown => Refusal::new(
            ErrorCode::Unauthenticated,
            "device-token-invalid",
            "the device token is unknown, revoked or superseded; pair again",
        ),
    }
}

/// Step 2: the plugin chain, seeded with the paired device's identity. Returns the identity
/// and the first plugin that allowed; records the steps in the metrics and the trace.
async fn run_chain(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    presented: &Presented<'_>,
    seed: Option<&Seed>,
    cache: CachePolicy,
    trace: &mut Trace,
) -> Result<(Identity, Option<String>), Fallback> {
    let request = Arc::new(chain_request(attempt, presented));
    let seeded = seed.map(|s| device_identity(&s.record, s.token.as_ref()));
    let verdict = state.chain().evaluate(&request, seeded, cache).await;
    let (deny, failure) = match &verdict.outcome {
        Outcome::Denied { denial, .. } => (Some(deny_code(denial.code).as_str()), None),
        Outcome::Failed { failure, .. } => (None, Some(failure.cause())),
        _ => (None, None),
    };
    state.metrics.record_steps(&verdict.steps, deny, failure);
    trace.steps = verdict.steps;
    trace.subject = verdict.subject;
    let first_allow = trace
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Allow)
        .map(|s| s.plugin.clone());
    match verdict.outcome {
        Outcome::Allowed(identity) => Ok((identity, first_allow)),
        Outcome::Denied { plugin, denial } => Err(denied(plugin, &denial).into()),
        Outcome::Failed { plugin, failure } => Err(failed(plugin, &failure).into()),
        Outcome::NoDecision => Err(undecided(attempt, presented)),
    }
}

/// What the chain sees of the attempt.
fn chain_request(attempt: &Attempt<'_>, presented: &Presented<'_>) -> Request {
    Request {
        credentials: Credentials {
            method: presented.method.to_string(),
            token: attempt.auth.and_then(|a| a.token.clone()),
            device_token: presented.device_token.map(str::to_string),
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
            instance_id: attempt.client.instance_id.clone(),
            conn_id: attempt.conn_id.to_string(),
        },
        role: attempt.role.as_str().to_string(),
        scopes: attempt.scopes.to_vec(),
    }
}

/// A plugin's denial, as the client and the log see it.
fn denied(plugin: String, denial: &Denial) -> Refusal {
    let code = deny_code(denial.code);
    let mut error = ErrorBody::new(code, format!("denied by auth plugin `{plugin}`"))
        .with_details(json!({ "reason": denial.reason, "plugin": plugin }))
        .with_retry_after(denial.retry_after_ms.map(u64::from));
    if code.retryable() && error.retry_after_ms.is_none() {
        error.retry_after_ms = Some(1_000);
    }
    Refusal {
        error: Box::new(error),
        cause: format!(
            "plugin `{plugin}` denied ({}): {}",
            denial.reason,
            escape_text(&denial.message)
        ),
        plugin: Some(plugin),
        trace: Trace::default(),
    }
}

/// A plugin that failed: load (busy) the client may retry; anything else denies access.
fn failed(plugin: String, failure: &PluginFailure) -> Refusal {
    let error = if matches!(failure, PluginFailure::Busy) {
        ErrorBody::new(
            ErrorCode::Unavailable,
            format!("auth plugin `{plugin}` is busy; try again"),
        )
        .with_details(json!({ "plugin": plugin, "reason": "plugin-busy" }))
        .with_retry_after(Some(1_000))
    } else {
        ErrorBody::new(
            ErrorCode::PluginFailed,
            format!("auth plugin `{plugin}` failed; access denied"),
        )
        .with_details(json!({ "plugin": plugin, "reason": failure.cause() }))
    };
    Refusal {
        error: Box::new(error),
        cause: format!("plugin `{plugin}` {failure}"),
        plugin: Some(plugin),
        trace: Trace::default(),
    }
}

/// No plugin decided: a device on a credential-less method pairs; otherwise a refusal that
/// says whether anything was presented at all.
fn undecided(attempt: &Attempt<'_>, presented: &Presented<'_>) -> Fallback {
    match &attempt.device {
        Some((id, pk)) if is_device_method(presented.method) => {
            Fallback::Pair(Box::new(PairingRequired {
                device_id: id.clone(),
                public_key: pk.clone(),
                message: "this device is not paired; an operator must approve the request",
                cause: "no plugin decided".into(),
                trace: Trace::default(),
            }))
        }
        _ if presented.method == "none" => Refusal::new(
            ErrorCode::Unauthenticated,
            "no-credentials",
            "no credentials presented: send auth or a device identity",
        )
        .into(),
        _ => Refusal::new(
            ErrorCode::Unauthenticated,
            "credentials-not-accepted",
            "no auth plugin accepted the credentials of this `auth.method`",
        )
        .into(),
    }
}

/// Step 3: the role and the scopes asked for must be ones the identity allows.
fn check_role_and_scopes(attempt: &Attempt<'_>, identity: &Identity) -> Result<(), Refusal> {
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
    if let Some(i) = attempt
        .scopes
        .iter()
        .position(|s| !identity.scopes.contains(s))
    {
        // The scope is the client's text: named by its position, not echoed.
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "scope-not-allowed",
            format!(
                "`{}` may not hold the scope at `params.scopes[{i}]`",
                identity.subject
            ),
        ));
    }
    Ok(())
}

/// How the peer stands with pairing: `(pairing, signed-in device, device, presented token)`.
type Settled = (Pairing, Option<String>, Option<String>, Option<DeviceToken>);

/// Step 4: pairing is skipped only when a plugin said so; otherwise a paired device is needed.
fn settle_pairing(
    state: &GatewayState,
    attempt: &Attempt<'_>,
    seed: Option<Seed>,
    identity: &Identity,
) -> Result<Settled, Fallback> {
    if let Some(Seed { record, token }) = seed {
        let signed_in = token.is_none().then(|| record.id.clone());
        return Ok((Pairing::Paired, signed_in, Some(record.id), token));
    }
    if identity.skip_pairing {
        return Ok((Pairing::Skipped, None, None, None));
    }
    let Some((id, pk)) = &attempt.device else {
        return Err(Refusal::new(
            ErrorCode::Unauthenticated,
            "device-required",
            format!(
                "`{}` may not skip pairing: present a device identity to pair",
                identity.subject
            ),
        )
        .into());
    };
    match state.pairing.device(id) {
        Some(record) if record.roles.contains(&attempt.role) => {
            Ok((Pairing::Paired, None, Some(record.id), None))
        }
        _ => Err(Fallback::Pair(Box::new(PairingRequired {
            device_id: id.clone(),
            public_key: pk.clone(),
            message: "this identity may not skip pairing and its device is not paired",
            cause: format!("{} may not skip pairing", identity.subject),
            trace: Trace::default(),
        }))),
    }
}

/// The protocol code a plugin's denial becomes.
pub(crate) fn deny_code(code: DenyCode) -> ErrorCode {
    match code {
        DenyCode::Unauthenticated => ErrorCode::Unauthenticated,
        DenyCode::Forbidden => ErrorCode::Forbidden,
        DenyCode::Unavailable => ErrorCode::Unavailable,
        DenyCode::RateLimited => ErrorCode::RateLimited,
    }
}
