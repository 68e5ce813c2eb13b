//! A stand-in for kube-apiserver's authentication endpoints, for tests, benchmarks and
//! `trustgate demo`, since no real API server can run here. It follows the real API's JSON,
//! status codes, TLS and bearer-auth rules for:
//!
//! - `POST /apis/authentication.k8s.io/v1/tokenreviews` (201 with a `TokenReview`; 401/403/400
//!   as `Status` objects),
//! - `GET /.well-known/openid-configuration` and `GET /openid/v1/jwks`,
//!
//! and it mints TokenRequest-style RS256 ServiceAccount tokens with the claims kube-apiserver
//! puts in projected tokens. HTTPS uses a CA generated per instance; `kubeconfig()` writes a
//! kubeconfig that the `kube` crate uses as it would for a real cluster. Faults can be injected:
//! latency, 500s, 429 with `Retry-After`, connection resets ("down").

mod issuer;

/// Why the development cluster could not do something.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file (signing key, kubeconfig) or binding the listener failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The RSA signing key could not be generated or read.
    #[error("signing key: {0}")]
    Key(#[from] rsa::Error),
    /// The RSA signing key could not be encoded or decoded.
    #[error("signing key encoding: {0}")]
    KeyEncoding(#[from] rsa::pkcs1::Error),
    /// The TLS certificate could not be made.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The generated TLS key is not in a form rustls takes.
    #[error("TLS key: {0}")]
    TlsKey(&'static str),
    /// rustls refused the certificate.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A token could not be signed.
    #[error("token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    /// Every signing key has been retired.
    #[error("no signing key")]
    NoSigningKey,
}

/// The development cluster's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use issuer::{Claims, KubernetesClaim, Ref, TokenRequest};
use issuer::{Issuer, Review, SigningKey, user_info};

/// The issuer URL real clusters commonly use.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A one-shot fault for the next TokenReview.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer 500 with a `Status` body.
    InternalError,
    /// Answer 429 with `Retry-After` in seconds.
    TooManyRequests {
        /// The `Retry-After` value.
        retry_after_s: u64,
    },
}

/// Request counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// TokenReview requests that reached the handler (any outcome).
    pub token_reviews: AtomicU64,
    /// OIDC discovery requests.
    pub discovery: AtomicU64,
    /// JWKS requests.
    pub jwks: AtomicU64,
}

struct Shared {
    issuer: Mutex<Issuer>,
    reviewer_token: String,
    unprivileged_token: String,
    url: String,
    latency: Mutex<Duration>,
    faults: Mutex<VecDeque<Fault>>,
    counters: Counters,
}

/// A running API server. Stops when dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    down: watch::Sender<bool>,
    _stop: watch::Sender<()>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Mints a token with the signing key in `key_file` (created if missing), without a server:
/// what `trustgate dev token` does. A server started with the same key file accepts it.
pub fn mint_offline(key_file: &Path, request: &TokenRequest) -> Result<(String, Claims)> {
    let key = SigningKey::persistent(key_file)?;
    Issuer::new(DEFAULT_ISSUER.to_string(), key)?.mint(request)
}

fn random_token(prefix: &str) -> String {
    let b: [u8; 24] = rand::random();
    format!("{prefix}{}", hex::encode(b))
}

fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

impl ApiServer {
    /// Starts a server on `127.0.0.1` with a fresh CA, key and issuer [`DEFAULT_ISSUER`].
    pub async fn start() -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `addr` with a fresh signing key.
    pub async fn start_on(addr: SocketAddr) -> Result<Self> {
        Self::start_with(addr, None).await
    }

    /// Starts a server on `addr`; with `key_file`, the issuer's signing key is loaded from (or
    /// created in) that file, so tokens minted with [`mint_offline`] by another process validate.
    pub async fn start_with(addr: SocketAddr, key_file: Option<&Path>) -> Result<Self> {
        let signing_key = match key_file {
            Some(path) => SigningKey::persistent(path)?,
            None => SigningKey::generate()?,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "kubernetes (trustgate test cluster)",
        );
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone(), ca.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                    .map_err(Error::TlsKey)?,
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let url = format!("https://127.0.0.1:{}", addr.port());
        let shared = Arc::new(Shared {
            issuer: Mutex::new(Issuer::new(DEFAULT_ISSUER.to_string(), signing_key)?),
            reviewer_token: random_token("reviewer-"),
            unprivileged_token: random_token("nobody-"),
            url,
            latency: Mutex::new(Duration::ZERO),
            faults: Mutex::new(VecDeque::new()),
            counters: Counters::default(),
        });
        let app = Router::new()
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(token_review),
            )
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/openid/v1/jwks", get(jwks))
            .fallback(|| async {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                    None,
                )
            })
            .with_state(shared.clone());
        let (down, down_rx) = watch::channel(false);
        let (stop, mut stop_rx) = watch::channel(());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = stop_rx.changed() => return,
                };
                if *down_rx.borrow() {
                    drop(tcp); // connection reset: the API server is "down"
                    continue;
                }
                let acceptor = acceptor.clone();
                let app = app.clone();
                let mut down = down_rx.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = TowerToHyperService::new(app);
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        // Going down drops live (keep-alive) connections too.
                        _ = async { while down.changed().await.is_ok() { if *down.borrow() { break; } } } => {}
                    }
                });
            }
        });
        Ok(Self {
            shared,
            addr,
            ca,
            down,
            _stop: stop,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The token the gateway authenticates with; it may create TokenReviews.
    pub fn reviewer_token(&self) -> &str {
        &self.shared.reviewer_token
    }

    /// A valid token of an identity that may *not* create TokenReviews (403).
    pub fn unprivileged_token(&self) -> &str {
        &self.shared.unprivileged_token
    }

    /// The issuer (`iss`).
    pub fn issuer(&self) -> String {
        self.lock_issuer().issuer.clone()
    }

    fn lock_issuer(&self) -> std::sync::MutexGuard<'_, Issuer> {
        self.shared.issuer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        self.kubeconfig_with(dir, "kubeconfig", &self.ca_pem(), self.reviewer_token())
    }

    /// Writes a kubeconfig with a chosen CA and user token.
    pub fn kubeconfig_with(
        &self,
        dir: &Path,
        name: &str,
        ca_pem: &str,
        token: &str,
    ) -> Result<PathBuf> {
        let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: gateway\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: gateway\ncurrent-context: test\n",
            self.url()
        );
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Mints a token (TokenRequest). Creates the ServiceAccount and pod as needed.
    pub fn token(&self, request: &TokenRequest) -> Result<(String, Claims)> {
        self.lock_issuer().mint(request)
    }

    /// Deletes a pod: tokens bound to it stop validating. Returns whether the pod was known.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> bool {
        let key = format!("{namespace}/{name}");
        let mut issuer = self.lock_issuer();
        issuer.deleted_pods.insert(key.clone());
        issuer.pods.remove(&key).is_some()
    }

    /// Adds a new signing key; new tokens use it. With `retire_old`, older keys are dropped
    /// (tokens signed with them stop validating and disappear from the JWKS).
    pub fn rotate_key(&self, retire_old: bool) -> Result<String> {
        let key = SigningKey::generate()?;
        let kid = key.kid.clone();
        let mut issuer = self.lock_issuer();
        if retire_old {
            issuer.keys.clear();
        }
        issuer.keys.push(key);
        Ok(kid)
    }

    /// Adds latency to every TokenReview, discovery and JWKS answer.
    pub fn set_latency(&self, latency: Duration) {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = latency;
    }

    /// Queues one-shot faults for the next TokenReviews.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(faults);
    }

    /// Takes the server down (every connection, live or new, is reset) or brings it back.
    pub fn set_down(&self, down: bool) {
        let _ = self.down.send(down);
    }

    /// Request counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// TokenReview requests so far.
    pub fn token_reviews(&self) -> u64 {
        self.shared.counters.token_reviews.load(Ordering::SeqCst)
    }

    /// JWKS requests so far.
    pub fn jwks_fetches(&self) -> u64 {
        self.shared.counters.jwks.load(Ordering::SeqCst)
    }
}

enum Caller {
    Reviewer,
    Unprivileged,
    Unknown,
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Caller {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(t) if t == shared.reviewer_token => Caller::Reviewer,
        Some(t) if t == shared.unprivileged_token => Caller::Unprivileged,
        _ => Caller::Unknown,
    }
}

fn unauthorized() -> Response {
    status(401, "Unauthorized", "Unauthorized", None)
}

async fn delay(shared: &Shared) {
    let latency = *shared.latency.lock().unwrap_or_else(|p| p.into_inner());
    if !latency.is_zero() {
        tokio::time::sleep(latency).await; // injected latency is the fault being simulated
    }
}

async fn token_review(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.counters.token_reviews.fetch_add(1, Ordering::SeqCst);
    delay(&shared).await;
    let fault = shared
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front();
    match fault {
        Some(Fault::InternalError) => {
            return status(
                500,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out",
                None,
            );
        }
        Some(Fault::TooManyRequests { retry_after_s }) => {
            let mut r = status(
                429,
                "TooManyRequests",
                "Too many requests, please try again later.",
                Some(json!({"retryAfterSeconds": retry_after_s})),
            );
            if let Ok(v) = retry_after_s.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        None => {}
    }
    match authenticate(&shared, &headers) {
        Caller::Reviewer => {}
        Caller::Unknown => return unauthorized(),
        Caller::Unprivileged => {
            return status(
                403,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:default:nobody\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
                Some(json!({"group": "authentication.k8s.io", "kind": "tokenreviews"})),
            );
        }
    }
    let Ok(review) = serde_json::from_slice::<Value>(&body) else {
        return status(
            400,
            "BadRequest",
            "the body of the request was in an unknown format",
            None,
        );
    };
    if review["apiVersion"] != "authentication.k8s.io/v1" || review["kind"] != "TokenReview" {
        return status(
            400,
            "BadRequest",
            "the body must be an authentication.k8s.io/v1 TokenReview",
            None,
        );
    }
    let Some(token) = review["spec"]["token"].as_str() else {
        return status(
            422,
            "Invalid",
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
            None,
        );
    };
    let audiences: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let outcome = shared
        .issuer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .review(token, &audiences);
    let status_obj = match outcome {
        Review::Authenticated { claims, audiences } => json!({
            "authenticated": true,
            "user": user_info(&claims),
            "audiences": audiences,
        }),
        Review::Rejected(error) => json!({"user": {}, "error": error}),
    };
    let mut spec = json!({"token": token});
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    let body = json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status_obj,
    });
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

async fn discovery(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.counters.discovery.fetch_add(1, Ordering::SeqCst);
    delay(&shared).await;
    if let Caller::Unknown = authenticate(&shared, &headers) {
        return unauthorized();
    }
    let issuer = shared
        .issuer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .issuer
        .clone();
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", shared.url),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    shared.counters.jwks.fetch_add(1, Ordering::SeqCst);
    delay(&shared).await;
    if let Caller::Unknown = authenticate(&shared, &headers) {
        return unauthorized();
    }
    let keys: Vec<Value> = shared
        .issuer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys
        .iter()
        .map(SigningKey::jwk)
        .collect();
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json")],
        axum::Json(json!({"keys": keys})),
    )
        .into_response()
}
