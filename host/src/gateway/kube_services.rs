//! Adapts the Kubernetes client to the plugins' host interface.

use std::sync::Arc;

use async_trait::async_trait;

use crate::k8s::{Kubernetes, ReviewFailure, ReviewOutcome};
use crate::plugin::{HostServices, ReviewError, TokenReviewStatus, UserInfo};

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
    ) -> Result<TokenReviewStatus, ReviewError> {
        self.0
            .review(token, audiences)
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
