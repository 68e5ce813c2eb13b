//! `[limits]`: the protocol limits every connection runs under (message size, handshake and
//! invoke timeouts, tick and re-validation intervals, session capacity) and the pre-auth
//! budget (`preauth.rs`). The plugin sandbox's
//! limits are the runtime's (`trustgate_runtime::RuntimeSettings`), not these.

use std::time::Duration;

use serde::Deserialize;

/// Protocol limits in force.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolLimits {
    /// Largest WebSocket message accepted, in bytes.
    pub max_payload: usize,
    /// One deadline from TCP accept to `hello-ok` — TLS, the upgrade, `connect` and the
    /// decision — in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Concurrent sessions (peers past `hello-ok`) beyond which `connect` is answered
    /// `RATE_LIMITED` (`gateway-full`). Unauthenticated sockets do not count here.
    pub max_connections: usize,
    /// Concurrent unauthenticated sockets (accepted, not yet past `hello-ok`); beyond it new
    /// sockets are closed at accept.
    pub max_unauthenticated: usize,
    /// Concurrent unauthenticated sockets per client address (IPv6: per /64); at most
    /// `max_unauthenticated`. Unset, it is 32 or `max_unauthenticated`, whichever is smaller.
    pub max_unauthenticated_per_address: Option<usize>,
    /// Failed handshakes an address may make per second, on average; beyond its burst a
    /// `connect` is answered `RATE_LIMITED` with `retryAfterMs` before any plugin runs.
    pub failed_handshakes_per_second: u32,
    /// Failed handshakes an address may make in a burst.
    pub failed_handshake_burst: u32,
    /// Interval of `tick` events, in milliseconds.
    pub tick_interval_ms: u64,
    /// How long an operator's `worker.invoke` waits for the worker's result, in milliseconds.
    pub invoke_timeout_ms: u64,
    /// How often live sessions' credentials are validated again (a revoked token, a deleted
    /// pod or a revoked device closes the session with 4401), in milliseconds.
    pub revalidate_interval_ms: u64,
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        Self {
            max_payload: 1 << 20,
            handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            max_unauthenticated: 2_048,
            max_unauthenticated_per_address: None,
            failed_handshakes_per_second: 2,
            failed_handshake_burst: 20,
            tick_interval_ms: 15_000,
            invoke_timeout_ms: 30_000,
            revalidate_interval_ms: 300_000,
        }
    }
}

impl ProtocolLimits {
    /// Refuses values that would disable a limit: `(key, message)` of the first offender.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value, min) in [
            ("max_payload", self.max_payload as u64, 1024),
            ("handshake_timeout_ms", self.handshake_timeout_ms, 1),
            ("max_connections", self.max_connections as u64, 1),
            ("max_unauthenticated", self.max_unauthenticated as u64, 1),
            (
                "max_unauthenticated_per_address",
                self.unauthenticated_per_address() as u64,
                1,
            ),
            (
                "failed_handshakes_per_second",
                u64::from(self.failed_handshakes_per_second),
                1,
            ),
            (
                "failed_handshake_burst",
                u64::from(self.failed_handshake_burst),
                1,
            ),
            ("tick_interval_ms", self.tick_interval_ms, 10),
            ("invoke_timeout_ms", self.invoke_timeout_ms, 1),
            ("revalidate_interval_ms", self.revalidate_interval_ms, 10),
        ] {
            if value < min {
                return Err((key, format!("must be at least {min}, got {value}")));
            }
        }
        if let Some(per) = self.max_unauthenticated_per_address
            && per > self.max_unauthenticated
        {
            return Err((
                "max_unauthenticated_per_address",
                format!(
                    "must not exceed max_unauthenticated ({}), got {per}",
                    self.max_unauthenticated
                ),
            ));
        }
        Ok(())
    }

    /// Unauthenticated sockets one address may hold: `max_unauthenticated_per_address`, or if
    /// unset 32 or `max_unauthenticated`, whichever is smaller.
    pub fn unauthenticated_per_address(&self) -> usize {
        self.max_unauthenticated_per_address
            .unwrap_or(32.min(self.max_unauthenticated))
    }

    /// Time allowed for `connect`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// Interval of `tick` events.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_interval_ms)
    }

    /// How long `worker.invoke` waits.
    pub fn invoke_timeout(&self) -> Duration {
        Duration::from_millis(self.invoke_timeout_ms)
    }

    /// Interval of credential re-validation of live sessions.
    pub fn revalidate_interval(&self) -> Duration {
        Duration::from_millis(self.revalidate_interval_ms)
    }
}
