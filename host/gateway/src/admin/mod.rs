//! The admin HTTP listener: health probes and metrics (open), the pairing API, the sessions
//! API and the operator page's data (bearer token).

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::lifecycle::Lifecycle;
use crate::pairing_store::PairingError;
use crate::state::GatewayState;

/// `[admin]`: the admin HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
    /// File holding the admin API bearer token; created with a random token if missing.
    /// Defaults to `admin-token` in the state directory.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            token_file: None,
        }
    }
}

/// Reads the admin token, creating the file with a random token if it does not exist. The
/// caller names the file in its error.
pub(crate) fn load_token(path: &FsPath) -> Result<String, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(std::io::Error::other("the file is empty")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut raw = [0u8; 24];
            rand::fill(&mut raw);
            let token = hex::encode(raw);
            crate::fsutil::write_atomic(path, token.as_bytes())?;
            info!(path = %path.display(), "created a new admin API token");
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<GatewayState>,
    mut stop: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/pairing", get(list_pairing))
        .route("/api/pairing/{id}/{verb}", post(decide))
        .route("/api/devices", get(list_devices))
        .route("/api/devices/{id}/revoke", post(revoke_device))
        .route("/api/sessions", get(list_sessions))
        .route("/api/overview", get(overview))
        .route("/ui", get(ui))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn metrics(State(state): State<Arc<GatewayState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn ready(State(state): State<Arc<GatewayState>>) -> Response {
    let plugins = state.plugins().len();
    if plugins == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "no auth chain loaded\n").into_response();
    }
    let mut body = json!({"ready": true, "plugins": plugins, "sessions": state.sessions.len()});
    // Ready does not wait for NATS (Kubernetes workers never depend on it); whether this
    // replica's copy of the shared state is loaded, and whether it reaches NATS right now (writes
    // such as approvals need it), are reported beside it.
    if let Some(nats) = &state.cluster {
        let connected = nats.client.connection_state() == async_nats::connection::State::Connected;
        body["cluster"] = json!({
            "replica": nats.replica,
            "synced": state.pairing.synced(),
            "connected": connected,
        });
    }
    axum::Json(body).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// A 401 as RFC 6750 has it: the challenge names the scheme and realm, and for a presented but
/// wrong token the error.
fn challenge(message: &str, invalid_token: bool) -> Response {
    let value = if invalid_token {
        r#"Bearer realm="trustgate-admin", error="invalid_token""#
    } else {
        r#"Bearer realm="trustgate-admin""#
    };
    let mut response = error(StatusCode::UNAUTHORIZED, message);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(value),
    );
    response
}

/// `Some(response)` when the request lacks the admin token: 401 with `WWW-Authenticate` for a
/// missing and for a wrong token alike. Compares digests so the comparison time does not depend
/// on where the tokens differ.
fn unauthorized(state: &GatewayState, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Some(challenge(
            "missing `Authorization: Bearer <admin token>`",
            false,
        ));
    };
    if Sha256::digest(presented.as_bytes()) != Sha256::digest(state.admin_token.as_bytes()) {
        return Some(challenge("wrong admin token", true));
    }
    None
}

fn pairing_failure(e: &PairingError) -> Response {
    match e {
        PairingError::UnknownRequest(_) | PairingError::UnknownDevice(_) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        PairingError::Conflict(_) => error(StatusCode::CONFLICT, e.to_string()),
        _ => {
            tracing::error!(error = %e, "pairing store failure");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the pairing store is unavailable",
            )
        }
    }
}

async fn list_pairing(State(state): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    axum::Json(json!({
        "pending": state.pairing.pending(),
        "devices": state.pairing.device_views(&state.sessions),
    }))
    .into_response()
}

/// The admin token's identity in audit records.
const ADMIN_ACTOR: &str = "admin-token";

async fn list_devices(State(state): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    axum::Json(json!({"devices": state.pairing.device_views(&state.sessions)})).into_response()
}

async fn revoke_device(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    match Lifecycle::new(&state, ADMIN_ACTOR).revoke(&id).await {
        Ok((device, closed)) => {
            axum::Json(json!({"revoked": true, "device": device.id, "sessionsClosed": closed}))
                .into_response()
        }
        Err(e) => pairing_failure(&e),
    }
}

async fn decide(
    State(state): State<Arc<GatewayState>>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    let lifecycle = Lifecycle::new(&state, ADMIN_ACTOR);
    let result = match verb.as_str() {
        "approve" => lifecycle
            .approve(&id)
            .await
            .map(|device| json!({"approved": true, "device": state.pairing.device_view(&device.id, &state.sessions)})),
        "reject" => lifecycle
            .reject(&id)
            .await
            .map(|request| json!({"rejected": true, "request": request})),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "no such pairing action (approve, reject)",
            );
        }
    };
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => pairing_failure(&e),
    }
}

/// The operator page: a static shell; its data comes from `/api/overview` with the admin token
/// the operator types in, so the page itself holds no secret and needs no external assets.
async fn ui() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("ui.html"),
    )
        .into_response()
}

async fn overview(State(state): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    use std::sync::atomic::Ordering::Relaxed;
    let plugins: Vec<_> = state
        .plugins()
        .iter()
        .map(|p| {
            let s = p.stats();
            json!({
                "name": p.name(),
                "sha256": p.sha256(),
                "calls": s.calls.load(Relaxed),
                "denials": s.denials.load(Relaxed),
                "failures": s.failures.load(Relaxed),
                "p99Us": s.p99_us(),
            })
        })
        .collect();
    axum::Json(json!({
        "sessions": state.sessions_view(false),
        "plugins": plugins,
        "pending": state.pairing.pending(),
        "devices": state.pairing.device_views(&state.sessions),
    }))
    .into_response()
}

async fn list_sessions(State(state): State<Arc<GatewayState>>, headers: HeaderMap) -> Response {
    if let Some(r) = unauthorized(&state, &headers) {
        return r;
    }
    axum::Json(json!({"sessions": state.sessions_view(false)})).into_response()
}
