//! What stands behind the plugins' host calls: the Kubernetes client when `[kubernetes]` is
//! configured, a clear "not configured" answer otherwise.

use std::sync::Arc;

use async_trait::async_trait;
use trustgate_k8s::{CacheMode, Kubernetes, ReviewFailure, ReviewOutcome};
use trustgate_runtime::{
    CachePolicy, HostServices, NoServices, ReviewError, TokenReviewStatus, UserInfo,
};

/// Host services backed by a Kubernetes API client.
#[derive(Debug, Clone)]
pub struct KubeServices(pub Arc<Kubernetes>);

fn status(o: ReviewOutcome) -> TokenReviewStatus {
    TokenReviewStatus {
        authenticated: o.authenticated,
        user: UserInfo {
            username: o.username,
            uid: o.uid,
            groups: o.groups,
            extra: o.extra.into_iter().collect(),
        },
        audiences: o.audiences,
        error: o.error,
        expires_at_ms: o.expires_at_ms,
    }
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
    ) -> Result<TokenReviewStatus, ReviewError> {
        let mode = match cache {
            CachePolicy::Use => CacheMode::Use,
            CachePolicy::Bypass => CacheMode::Bypass,
        };
        self.0
            .review(token, audiences, mode)
            .await
            .map(|(o, _)| status(o))
            .map_err(error)
    }

    async fn verify_jwt(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, ReviewError> {
        self.0
            .verify(token, audiences)
            .await
            .map(status)
            .map_err(error)
    }
}

/// The services of a gateway with no `[kubernetes]` section: every verification fails with
/// `not-configured`, naming the section to add.
pub const NO_KUBERNETES: NoServices = NoServices::explained(
    "this gateway has no Kubernetes client configured (set [kubernetes] in the gateway config)",
);
