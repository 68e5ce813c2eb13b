//! The Kubernetes side of ServiceAccount trust: a `kube` client (in-cluster or kubeconfig, the
//! cluster CA always verified), TokenReview with bounded retries, a review cache that never
//! holds a raw token, and local verification against the cluster's OIDC keys.
//!
//! This crate knows nothing of the gateway or the plugin runtime; the gateway adapts it to the
//! plugins' host interface.

mod jwks;
mod request;
mod review;
mod review_cache;
mod settings;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use review_cache::CacheOutcome;
pub use settings::{Settings, SettingsError};

/// Whether a review may be answered from the review cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// A cached answer (or one in flight) is fine.
    #[default]
    Use,
    /// Ask the API server again (a live session's periodic re-validation, where a cached
    /// "yes" could hide a deleted pod); the answer is still stored for others.
    Bypass,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a review (or a local verification) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewOutcome {
    /// Whether the token is valid for one of the audiences.
    pub authenticated: bool,
    /// Username, e.g. `system:serviceaccount:ns:sa`.
    pub username: String,
    /// The user's UID (for ServiceAccounts: the ServiceAccount's).
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (`authentication.kubernetes.io/pod-uid`, ...).
    pub extra: BTreeMap<String, Vec<String>>,
    /// The audiences the token is valid for among those requested.
    pub audiences: Vec<String>,
    /// Why the token was rejected.
    pub error: Option<String>,
    /// The token's expiry (Unix ms), when known.
    pub expires_at_ms: Option<u64>,
}

impl ReviewOutcome {
    pub(crate) fn rejected(error: impl Into<String>) -> Self {
        Self {
            authenticated: false,
            username: String::new(),
            uid: String::new(),
            groups: Vec::new(),
            extra: BTreeMap::new(),
            audiences: Vec::new(),
            error: Some(error.into()),
            expires_at_ms: None,
        }
    }
}

/// A review that could not be completed. None of these says anything about the token, and none
/// is cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewFailure {
    /// Network, TLS, timeout, 5xx or 429 (after retries).
    #[error("Kubernetes API unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// The API server refused the gateway's own credentials (401/403).
    #[error("Kubernetes API refused the gateway's credentials: {0}")]
    Forbidden(String),
    /// Any other failure (malformed answer, 4xx).
    #[error("TokenReview failed: {0}")]
    Failed(String),
}

/// Why the client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The kubeconfig could not be read.
    #[error("kubeconfig {path}: {source}")]
    KubeconfigRead {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig was read but cannot be used (unknown context, bad credentials, ...).
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// In-cluster configuration is incomplete (not running in a pod?).
    #[error(
        "in-cluster Kubernetes configuration: {0} (outside a cluster, set [kubernetes] kubeconfig)"
    )]
    InCluster(#[source] kube::config::InClusterError),
    /// The kubeconfig disables TLS verification.
    #[error(
        "the kubeconfig disables TLS verification (insecure-skip-tls-verify); trustgate refuses to review tokens over an unverified connection"
    )]
    InsecureTls,
    /// The client could not be built.
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// TokenReview requests sent to the API server (each retry counts).
    pub api_requests: AtomicU64,
    /// Reviews answered from the cache.
    pub cache_hits: AtomicU64,
    /// Reviews that needed the API.
    pub cache_misses: AtomicU64,
    /// Reviews that waited on an identical review already in flight.
    pub coalesced: AtomicU64,
    /// JWKS refreshes.
    pub jwks_refreshes: AtomicU64,
    /// Completed reviews that accepted the token.
    pub reviews_authenticated: AtomicU64,
    /// Completed reviews that rejected the token.
    pub reviews_rejected: AtomicU64,
    /// Reviews that failed: API unavailable.
    pub reviews_unavailable: AtomicU64,
    /// Reviews that failed: the gateway's credentials were refused.
    pub reviews_forbidden: AtomicU64,
    /// Reviews that failed otherwise.
    pub reviews_failed: AtomicU64,
}

/// A connected Kubernetes client with its review cache and key set.
pub struct Kubernetes {
    client: kube::Client,
    settings: Settings,
    cache: review_cache::ReviewCache,
    jwks: jwks::Jwks,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// Builds the client. TLS verification uses the cluster CA from the kubeconfig or the
    /// mounted `ca.crt`; it is never disabled.
    pub async fn connect(settings: Settings) -> Result<Self, SetupError> {
        // Several dependencies enable different rustls providers; without an explicit choice
        // rustls refuses to pick one. The first call wins; later ones are no-ops.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                    SetupError::KubeconfigRead {
                        path: path.clone(),
                        source,
                    }
                })?;
                let options = kube::config::KubeConfigOptions {
                    context: settings.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|source| SetupError::Kubeconfig {
                        path: path.clone(),
                        source,
                    })?
            }
            None => kube::Config::incluster().map_err(SetupError::InCluster)?,
        };
        if config.accept_invalid_certs {
            return Err(SetupError::InsecureTls);
        }
        config.read_timeout = Some(settings.request_timeout());
        config.connect_timeout = Some(settings.request_timeout());
        let client = kube::Client::try_from(config).map_err(SetupError::Client)?;
        let stats = Arc::new(Stats::default());
        Ok(Self {
            cache: review_cache::ReviewCache::new(
                settings.review_cache_ttl(),
                settings.negative_cache_ttl(),
                settings.cache_max_entries,
            ),
            jwks: jwks::Jwks::new(
                client.clone(),
                settings.issuer.clone(),
                settings.jwks_min_refresh(),
                settings.request_timeout(),
                stats.clone(),
            ),
            client,
            settings,
            stats,
        })
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Reviews `token` for `audiences`: from the cache when `cache` allows and an answer is
    /// there, coalesced with an identical review in flight, else one TokenReview (retried on
    /// 5xx/429). The answer is shared with the cache, not copied.
    pub async fn review(
        &self,
        token: &str,
        audiences: &[String],
        cache: CacheMode,
    ) -> Result<(Arc<ReviewOutcome>, CacheOutcome), ReviewFailure> {
        let fresh = cache == CacheMode::Bypass;
        let result = self
            .cache
            .get_or_review(token, audiences, fresh, || async {
                self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
                let result = review::token_review(
                    &self.client,
                    token,
                    audiences,
                    &self.settings,
                    &self.stats,
                )
                .await;
                let counter = match &result {
                    Ok(o) if o.authenticated => &self.stats.reviews_authenticated,
                    Ok(_) => &self.stats.reviews_rejected,
                    Err(ReviewFailure::Unavailable { .. }) => &self.stats.reviews_unavailable,
                    Err(ReviewFailure::Forbidden(_)) => &self.stats.reviews_forbidden,
                    Err(ReviewFailure::Failed(_)) => &self.stats.reviews_failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                result
            })
            .await;
        match &result {
            Ok((_, CacheOutcome::Hit)) => {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            }
            Ok((_, CacheOutcome::Coalesced)) => {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        result
    }

    /// Verifies `token` locally against the cluster's published keys.
    pub async fn verify(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<ReviewOutcome>, ReviewFailure> {
        self.jwks.verify(token, audiences).await.map(Arc::new)
    }
}

/// The `exp` claim of a JWT (Unix ms), read without verifying the signature. Only used to
/// bound how long a review that the API server (or the key set) accepted is trusted.
pub fn unverified_expiry_ms(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("exp")?.as_u64().map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000,"sub":"x"}"#);
        assert_eq!(
            unverified_expiry_ms(&format!("h.{payload}.s")),
            Some(1_700_000_000_000)
        );
        assert_eq!(unverified_expiry_ms("not-a-jwt"), None);
    }
}
