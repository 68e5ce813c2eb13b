//! What stands behind the plugins' host calls: the Kubernetes client when `[kubernetes]` is
//! configured, a clear "not configured" answer otherwise.

use std::sync::Arc;

use async_trait::async_trait;
use trustgate_k8s::{CacheMode, Kubernetes, ReviewFailure, ReviewOutcome};
use trustgate_runtime::{CachePolicy, HostServices, NoServices, Review, ReviewError};

/// Host services backed by a Kubernetes API client.
#[derive(Debug, Clone)]
pub struct KubeServices(pub Arc<Kubernetes>);

/// A review as the client holds it (shared with its cache), read by plugins through a handle.
struct KubeReview(Arc<ReviewOutcome>);

impl Review for KubeReview {
    fn authenticated(&self) -> bool {
        self.0.authenticated
    }
    fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    fn username(&self) -> &str {
        &self.0.username
    }
    fn uid(&self) -> &str {
        &self.0.uid
    }
    fn groups(&self) -> &[String] {
        &self.0.groups
    }
    fn audiences(&self) -> &[String] {
        &self.0.audiences
    }
    fn extra(&self, key: &str) -> Option<&[String]> {
        self.0.extra.get(key).map(Vec::as_slice)
    }
    fn extras(&self) -> Vec<(String, Vec<String>)> {
        self.0
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn expires_at_ms(&self) -> Option<u64> {
        self.0.expires_at_ms
    }
}

fn shared(o: Arc<ReviewOutcome>) -> Arc<dyn Review> {
    Arc::new(KubeReview(o))
}

fn error(f: ReviewFailure) -> ReviewError {
    match f {
        ReviewFailure::Unavailable { .. } => ReviewError::Unavailable(f.to_string()),
        ReviewFailure::Forbidden(_) => ReviewError::Forbidden(f.to_string()),
        ReviewFailure::Failed(_) => ReviewError::Failed(f.to_string()),
    }
}

#[async_trait]
impl HostServices for KubeServices {
    async fn token_review(
        &self,
        token: &str,
        audiences: &[String],
        cache: CachePolicy,
    ) -> Result<Arc<dyn Review>, ReviewError> {
        let mode = match cache {
            CachePolicy::Use => CacheMode::Use,
            CachePolicy::Bypass => CacheMode::Bypass,
        };
        self.0
            .review(token, audiences, mode)
            .await
            .map(|(o, _)| shared(o))
            .map_err(error)
    }

    async fn verify_jwt(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<dyn Review>, ReviewError> {
        self.0
            .verify(token, audiences)
            .await
            .map(shared)
            .map_err(error)
    }
}

/// The services of a gateway with no `[kubernetes]` section: every verification fails with
/// `not-configured`, naming the section to add.
pub const NO_KUBERNETES: NoServices = NoServices::explained(
    "this gateway has no Kubernetes client configured (set [kubernetes] in the gateway config)",
);
