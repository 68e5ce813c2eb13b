//! The SDK over the deprecated `trustgate:auth@0.1.0` (feature `contract-0-1`): the same API
//! as over 0.2, on top of 0.1's records. Under 0.1 the whole request — credentials included —
//! is copied into every plugin, and a `permit` is answered as 0.1 did: by allowing the
//! identity so far again, narrowed.

use std::net::IpAddr;

use crate::{
    Client, Decision, Denial, DenyCode, Device, LogLevel, Narrowing, Plugin, ReviewError,
    SecretError, parse_ip,
};

/// The generated bindings of the `auth-plugin` world.
#[allow(missing_docs, unsafe_code, clippy::all)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/0.1.0",
        world: "auth-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_bindings",
        default_bindings_module: "trustgate_plugin_sdk::bindings",
        runtime_path: "trustgate_plugin_sdk::wit_bindgen::rt",
    });
}

use bindings::trustgate::auth::host as h;
use bindings::trustgate::auth::types as t;

#[doc(hidden)]
pub type __RawRequest<'a> = t::Request;
#[doc(hidden)]
pub type __RawIdentity<'a> = t::Identity;
#[doc(hidden)]
pub type __RawDecision = t::Decision;

#[doc(hidden)]
pub fn __authenticate<P: Plugin>(
    plugin: Option<&P>,
    request: t::Request,
    so_far: Option<t::Identity>,
) -> t::Decision {
    let decision = match plugin {
        Some(plugin) => {
            let request = Request(&request);
            let identity = so_far.as_ref().map(Identity);
            plugin.authenticate(&request, identity.as_ref())
        }
        None => crate::__not_configured(),
    };
    match decision {
        Decision::Allow(e) => t::Decision::Allow(t::Identity {
            subject: e.subject,
            method: e.method,
            groups: e.groups,
            attributes: e.attributes,
            roles: e.roles,
            scopes: e.scopes,
            expires_at_ms: e.expires_at_ms,
            skip_pairing: e.skip_pairing,
        }),
        Decision::Permit(n) => match so_far {
            Some(id) => t::Decision::Allow(narrowed(id, n)),
            None => t::Decision::Abstain,
        },
        Decision::Deny(d) => t::Decision::Deny(raw_denial(d)),
        Decision::Abstain => t::Decision::Abstain,
    }
}

/// 0.1 has no `permit`: the identity so far is allowed again with the narrowing applied.
fn narrowed(mut id: t::Identity, n: Narrowing) -> t::Identity {
    if let Some(roles) = n.roles {
        id.roles.retain(|r| roles.contains(r));
    }
    if let Some(scopes) = n.scopes {
        id.scopes.retain(|s| scopes.contains(s));
    }
    for (k, v) in n.attributes {
        if !id.attributes.iter().any(|(ek, _)| *ek == k) {
            id.attributes.push((k, v));
        }
    }
    id.expires_at_ms = match (id.expires_at_ms, n.expires_at_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    id.skip_pairing &= !n.veto_skip_pairing;
    id
}

fn raw_denial(d: Denial) -> t::Denial {
    t::Denial {
        code: match d.code {
            DenyCode::Unauthenticated => t::DenyCode::Unauthenticated,
            DenyCode::Forbidden => t::DenyCode::Forbidden,
            DenyCode::Unavailable => t::DenyCode::Unavailable,
            DenyCode::RateLimited => t::DenyCode::RateLimited,
        },
        reason: d.reason,
        message: d.message,
        retry_after_ms: d.retry_after_ms,
    }
}

pub(crate) fn now_ms() -> u64 {
    h::now_ms()
}

pub(crate) fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Trace => h::LogLevel::Trace,
        LogLevel::Debug => h::LogLevel::Debug,
        LogLevel::Info => h::LogLevel::Info,
        LogLevel::Warn => h::LogLevel::Warn,
        LogLevel::Error => h::LogLevel::Error,
    };
    h::log(level, message);
}

/// The request being decided on.
pub struct Request<'a>(&'a t::Request);

impl Request<'_> {
    /// The role the peer asked for: `worker` or `operator`.
    pub fn role(&self) -> &str {
        &self.0.role
    }

    /// The auth method the peer asked for.
    pub fn method(&self) -> &str {
        &self.0.credentials.method
    }

    /// The scopes the peer asked for.
    pub fn scopes(&self) -> Vec<String> {
        self.0.scopes.clone()
    }

    /// The remote socket address, `ip:port` (`[ip]:port` for IPv6).
    pub fn remote_addr(&self) -> &str {
        &self.0.peer.remote_addr
    }

    /// The peer's IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        parse_ip(self.remote_addr())
    }

    /// Whether the connection is TLS-protected end to end to the gateway.
    pub fn tls(&self) -> bool {
        self.0.peer.tls
    }

    /// The client software, as the peer reports it (0.1 carries no instance id).
    pub fn client(&self) -> Client {
        Client {
            id: self.0.peer.client_id.clone(),
            version: self.0.peer.client_version.clone(),
            platform: self.0.peer.platform.clone(),
            instance_id: None,
        }
    }

    /// The gateway's id for this connection.
    pub fn conn_id(&self) -> String {
        self.0.peer.conn_id.clone()
    }

    /// The verified device identity, if the peer proved one.
    pub fn device(&self) -> Option<Device> {
        self.0.device.as_ref().map(|d| Device {
            id: d.id.clone(),
            public_key: d.public_key.clone(),
        })
    }

    /// The presented credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials(self.0.credentials.clone())
    }
}

/// The credentials the peer presented (0.1 copies them into every plugin).
pub struct Credentials(t::Credentials);

fn review_error(e: h::ReviewError) -> ReviewError {
    match e {
        h::ReviewError::NotConfigured(m) => ReviewError::NotConfigured(m),
        h::ReviewError::Unavailable(m) => ReviewError::Unavailable(m),
        h::ReviewError::Forbidden(m) => ReviewError::Forbidden(m),
        h::ReviewError::Failed(m) => ReviewError::Failed(m),
    }
}

impl Credentials {
    /// The auth method the peer asked for.
    pub fn method(&self) -> String {
        self.0.method.clone()
    }

    /// Whether the peer presented a bearer token.
    pub fn has_token(&self) -> bool {
        self.0.token.is_some()
    }

    /// Whether the peer presented a device token.
    pub fn has_device_token(&self) -> bool {
        self.0.device_token.is_some()
    }

    /// The bearer token (0.1 needs no grant).
    pub fn token(&self) -> Result<String, SecretError> {
        self.0.token.clone().ok_or(SecretError::Absent)
    }

    /// The device token (0.1 needs no grant).
    pub fn device_token(&self) -> Result<String, SecretError> {
        self.0.device_token.clone().ok_or(SecretError::Absent)
    }

    fn bearer(&self) -> Result<&str, ReviewError> {
        self.0
            .token
            .as_deref()
            .ok_or_else(|| ReviewError::Failed("the peer presented no bearer token".into()))
    }

    /// A Kubernetes TokenReview of the bearer token for `audiences`.
    pub fn review(&self, audiences: &[String]) -> Result<Review, ReviewError> {
        h::token_review(self.bearer()?, audiences)
            .map(Review)
            .map_err(review_error)
    }

    /// Local verification of the bearer token against the cluster's OIDC keys.
    pub fn verify_jwt(&self, audiences: &[String]) -> Result<Review, ReviewError> {
        h::verify_jwt(self.bearer()?, audiences)
            .map(Review)
            .map_err(review_error)
    }
}

/// What a verification found.
pub struct Review(h::TokenReviewStatus);

impl Review {
    /// Whether the token is valid for one of the requested audiences.
    pub fn authenticated(&self) -> bool {
        self.0.authenticated
    }

    /// Why the token was rejected.
    pub fn error(&self) -> Option<String> {
        self.0.error.clone()
    }

    /// The Kubernetes username.
    pub fn username(&self) -> String {
        self.0.user.username.clone()
    }

    /// The user's UID.
    pub fn uid(&self) -> String {
        self.0.user.uid.clone()
    }

    /// Groups.
    pub fn groups(&self) -> Vec<String> {
        self.0.user.groups.clone()
    }

    /// The audiences the token is valid for among the requested ones.
    pub fn audiences(&self) -> Vec<String> {
        self.0.audiences.clone()
    }

    /// An `extra` attribute.
    pub fn extra(&self, key: &str) -> Option<Vec<String>> {
        self.0
            .user
            .extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// The first value of an `extra` attribute.
    pub fn extra_first(&self, key: &str) -> Option<String> {
        self.extra(key).and_then(|v| v.into_iter().next())
    }

    /// When the token expires (Unix ms), if the gateway could tell.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.0.expires_at_ms
    }
}

/// The identity earlier plugins established.
pub struct Identity<'a>(&'a t::Identity);

impl Identity<'_> {
    /// The subject.
    pub fn subject(&self) -> &str {
        &self.0.subject
    }

    /// The auth method that established it.
    pub fn method(&self) -> String {
        self.0.method.clone()
    }

    /// Groups.
    pub fn groups(&self) -> Vec<String> {
        self.0.groups.clone()
    }

    /// Whether the subject belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.0.groups.iter().any(|g| g == group)
    }

    /// One attribute, if set.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.0
            .attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Every attribute.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.0.attributes.clone()
    }

    /// Roles the subject may take.
    pub fn roles(&self) -> Vec<String> {
        self.0.roles.clone()
    }

    /// Scopes the subject may hold.
    pub fn scopes(&self) -> Vec<String> {
        self.0.scopes.clone()
    }

    /// When the credentials behind it expire (Unix ms), if they do.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.0.expires_at_ms
    }

    /// Whether it may skip device pairing so far.
    pub fn skip_pairing(&self) -> bool {
        self.0.skip_pairing
    }
}
