//! Host capabilities that live outside the sandbox (Kubernetes TokenReview, local JWT
//! verification). The runtime only forwards plugin calls to a [`HostServices`]; what stands
//! behind it is the gateway's choice.

use async_trait::async_trait;

use super::bindings::{ReviewError, TokenReviewStatus};

/// What plugins can ask the gateway to do on their behalf.
#[async_trait]
pub trait HostServices: Send + Sync + 'static {
    /// A Kubernetes TokenReview of `token` for `audiences`.
    async fn token_review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, ReviewError>;

    /// Local verification of a ServiceAccount JWT against the cluster's OIDC keys.
    async fn verify_jwt(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, ReviewError>;
}

/// The services of a gateway with no Kubernetes client: every call fails with
/// `not-configured`, which plugins turn into a clear denial.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoKubernetes;

const NOT_CONFIGURED: &str =
    "this gateway has no Kubernetes client configured (set [kubernetes] in the gateway config)";

#[async_trait]
impl HostServices for NoKubernetes {
    async fn token_review(
        &self,
        _token: &str,
        _audiences: &[String],
    ) -> Result<TokenReviewStatus, ReviewError> {
        Err(ReviewError::NotConfigured(NOT_CONFIGURED.into()))
    }

    async fn verify_jwt(
        &self,
        _token: &str,
        _audiences: &[String],
    ) -> Result<TokenReviewStatus, ReviewError> {
        Err(ReviewError::NotConfigured(NOT_CONFIGURED.into()))
    }
}
