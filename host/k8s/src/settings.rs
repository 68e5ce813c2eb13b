//! The client's settings: the `[kubernetes]` table of a gateway configuration, deserialised as
//! is.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How to reach the API server and how hard to try.
///
/// Deserialised strictly (`deny_unknown_fields`); every field has a default, so an empty table
/// means "in-cluster, default timeouts". Call [`Settings::validate`] after deserialising.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// A kubeconfig file; `None` means in-cluster (service env, mounted token and `ca.crt`).
    /// The embedder resolves relative paths before connecting.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: the current one).
    pub context: Option<String>,
    /// Timeout of one API request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Extra attempts after a 5xx, 429 or connection failure (never after other 4xx).
    pub retries: u32,
    /// How long an accepted token's review is reused (capped by the token's own expiry), ms.
    pub review_cache_ttl_ms: u64,
    /// How long a rejected token's review is reused, ms.
    pub negative_cache_ttl_ms: u64,
    /// Bound on cached reviews.
    pub cache_max_entries: usize,
    /// Minimum time between JWKS refreshes triggered by unknown key ids, ms.
    pub jwks_min_refresh_ms: u64,
    /// The expected token issuer; default: the issuer from OIDC discovery.
    pub issuer: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            context: None,
            request_timeout_ms: 2_000,
            retries: 2,
            review_cache_ttl_ms: 120_000,
            negative_cache_ttl_ms: 10_000,
            cache_max_entries: 10_000,
            jwks_min_refresh_ms: 10_000,
            issuer: None,
        }
    }
}

/// A setting outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SettingsError {
    /// The offending key, relative to the settings table (e.g. `request_timeout_ms`).
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl Settings {
    /// Refuses values that cannot work (a zero timeout, an unbounded retry count, ...).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let range = |key: &'static str, value: u64, min: u64, max: u64| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(SettingsError {
                    key,
                    message: format!("must be between {min} and {max}, got {value}"),
                })
            }
        };
        range("request_timeout_ms", self.request_timeout_ms, 1, 60_000)?;
        range("retries", u64::from(self.retries), 0, 10)?;
        range(
            "cache_max_entries",
            self.cache_max_entries as u64,
            1,
            10_000_000,
        )?;
        range(
            "jwks_min_refresh_ms",
            self.jwks_min_refresh_ms,
            0,
            3_600_000,
        )?;
        Ok(())
    }

    /// Timeout of one API request.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// Lifetime of an accepted review in the cache.
    pub fn review_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.review_cache_ttl_ms)
    }

    /// Lifetime of a rejected review in the cache.
    pub fn negative_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.negative_cache_ttl_ms)
    }

    /// Minimum interval between key-set refreshes for unknown key ids.
    pub fn jwks_min_refresh(&self) -> Duration {
        Duration::from_millis(self.jwks_min_refresh_ms)
    }
}
