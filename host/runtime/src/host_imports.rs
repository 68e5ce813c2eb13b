//! The capabilities plugins are given: the `trustgate:auth/host` interface of `wit/auth.wit`.
//! Everything else a guest could reach is fenced off in `sandbox.rs`.

use super::bindings::{HostImports, LogLevel, ReviewError, TokenReviewStatus};
use super::sandbox::{StoreState, clip};

impl super::bindings::trustgate::auth::types::Host for StoreState {}

impl HostImports for StoreState {
    async fn log(&mut self, level: LogLevel, message: String) {
        let message = clip(&message);
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    async fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    async fn token_review(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<TokenReviewStatus, ReviewError> {
        let (services, cache) = (self.services.clone(), self.cache);
        let timeout = self.host_call_timeout();
        self.host_call(services.token_review(&token, &audiences, cache))
            .await
            .unwrap_or_else(|| Err(timed_out("TokenReview", timeout)))
    }

    async fn verify_jwt(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<TokenReviewStatus, ReviewError> {
        let services = self.services.clone();
        let timeout = self.host_call_timeout();
        self.host_call(services.verify_jwt(&token, &audiences))
            .await
            .unwrap_or_else(|| Err(timed_out("JWT verification", timeout)))
    }
}

fn timed_out(what: &str, timeout: std::time::Duration) -> ReviewError {
    ReviewError::Unavailable(format!(
        "{what} did not answer within {} ms",
        timeout.as_millis()
    ))
}
