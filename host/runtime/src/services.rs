//! Host capabilities that live outside the sandbox (Kubernetes TokenReview, local JWT
//! verification). The runtime only forwards plugin calls to a [`HostServices`]; what stands
//! behind it is the embedder's choice.

use async_trait::async_trait;

use std::sync::Arc;

use crate::types::{Review, ReviewError};

/// Whether a verification may be answered from the embedder's cache. Passed explicitly with
/// every call, so the decision to bypass a cache is visible in every signature it crosses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CachePolicy {
    /// A cached answer is fine (a new handshake).
    #[default]
    Use,
    /// Ask the authority again (re-validating a live session, where a cached "yes" could
    /// hide a revoked token); the fresh answer may still be stored.
    Bypass,
}

/// What plugins can ask the embedder to do on their behalf.
#[async_trait]
pub trait HostServices: Send + Sync + 'static {
    /// A Kubernetes TokenReview of `token` for `audiences`. The answer is shared, not copied:
    /// plugins read it through a handle.
    async fn token_review(
        &self,
        token: &str,
        audiences: &[String],
        cache: CachePolicy,
    ) -> Result<Arc<dyn Review>, ReviewError>;

    /// Local verification of a ServiceAccount JWT against the cluster's OIDC keys.
    async fn verify_jwt(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<dyn Review>, ReviewError>;

    /// The wall clock plugins read (`now-ms`), in milliseconds since the Unix epoch. A seam
    /// for policy tests that pin the time; the gateway keeps the default, the system clock.
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Services of a host that offers no verification at all: every call fails with
/// `not-configured` and a message saying why (and, ideally, what to configure), which plugins
/// turn into a clear denial.
#[derive(Debug, Clone)]
pub struct NoServices(&'static str);

impl NoServices {
    /// No services, explained to plugins (and through them, to operators) by `why`.
    pub const fn explained(why: &'static str) -> Self {
        Self(why)
    }
}

impl Default for NoServices {
    fn default() -> Self {
        Self::explained("this host offers no token verification service")
    }
}

#[async_trait]
impl HostServices for NoServices {
    async fn token_review(
        &self,
        _token: &str,
        _audiences: &[String],
        _cache: CachePolicy,
    ) -> Result<Arc<dyn Review>, ReviewError> {
        Err(ReviewError::NotConfigured(self.0.into()))
    }

    async fn verify_jwt(
        &self,
        _token: &str,
        _audiences: &[String],
    ) -> Result<Arc<dyn Review>, ReviewError> {
        Err(ReviewError::NotConfigured(self.0.into()))
    }
}
