//! Stable error codes and WebSocket close codes.

use serde::{Deserialize, Serialize};

/// The error codes a client may see in a failed response. Stable: clients switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// No protocol version in common; the connection closes with 1002.
    ProtocolMismatch,
    /// A dependency (e.g. the Kubernetes API) is unavailable; retry later (close 1013).
    Unavailable,
    /// Too many connections or attempts; retry later (close 1013).
    RateLimited,
    /// The frame or its parameters are malformed; `message` names the field.
    InvalidRequest,
    /// Credentials missing, malformed, expired or rejected.
    Unauthenticated,
    /// Authenticated but not allowed (role, scope, namespace, policy).
    Forbidden,
    /// A device identity that an operator has not approved yet; `details.requestId` names the
    /// pending pairing request.
    NotPaired,
    /// An auth plugin failed (trap, deadline, memory); the gateway denies (fail closed).
    PluginFailed,
}

impl ErrorCode {
    /// Whether retrying the same request later may succeed.
    pub fn retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::RateLimited)
    }

    /// The close code that follows this error when it fails a handshake.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::ProtocolMismatch => CloseCode::PROTOCOL_ERROR,
            Self::Unavailable | Self::RateLimited => CloseCode::TRY_AGAIN_LATER,
            _ => CloseCode::POLICY_VIOLATION,
        }
    }

    /// The wire spelling, e.g. `NOT_PAIRED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProtocolMismatch => "PROTOCOL_MISMATCH",
            Self::Unavailable => "UNAVAILABLE",
            Self::RateLimited => "RATE_LIMITED",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotPaired => "NOT_PAIRED",
            Self::PluginFailed => "PLUGIN_FAILED",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1002: protocol error (version mismatch).
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1007: a text frame that is not valid UTF-8, at any stage of the connection.
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation (bad first frame, auth failure, handshake timeout).
    pub const POLICY_VIOLATION: Self = Self(1008);
    /// 1009: a message larger than `maxPayload`.
    pub const TOO_BIG: Self = Self(1009);
    /// 1012: service restart — the gateway is shutting down; reconnect (to another replica).
    pub const SERVICE_RESTART: Self = Self(1012);
    /// 1011: internal error.
    pub const INTERNAL: Self = Self(1011);
    /// 1013: try again later.
    pub const TRY_AGAIN_LATER: Self = Self(1013);
    /// 4401: the session's credentials expired or were revoked.
    pub const CREDENTIALS_EXPIRED: Self = Self(4401);
}
