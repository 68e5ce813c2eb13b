//! The SDK over `trustgate:auth@0.2.0`: the request, credentials, reviews and the identity so
//! far are handles; each fact is fetched from the gateway when first asked for (the common
//! ones are remembered for the rest of the call).

use std::cell::OnceCell;
use std::net::IpAddr;

use crate::{
    Client, Decision, Denial, DenyCode, Device, LogLevel, Plugin, ReviewError, SecretError,
    parse_ip,
};

/// The generated bindings of the `auth-plugin` world.
#[allow(missing_docs, unsafe_code, clippy::all)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
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
pub type __RawRequest<'a> = &'a t::Request;
#[doc(hidden)]
pub type __RawIdentity<'a> = &'a t::Identity;
#[doc(hidden)]
pub type __RawDecision = t::Decision;

#[doc(hidden)]
pub fn __authenticate<P: Plugin>(
    plugin: Option<&P>,
    request: &t::Request,
    so_far: Option<&t::Identity>,
) -> t::Decision {
    let decision = match plugin {
        Some(plugin) => {
            let request = Request::new(request);
            let so_far = so_far.map(Identity::new);
            plugin.authenticate(&request, so_far.as_ref())
        }
        None => crate::__not_configured(),
    };
    raw_decision(decision)
}

fn raw_decision(d: Decision) -> t::Decision {
    match d {
        Decision::Allow(e) => t::Decision::Allow(t::Established {
            subject: e.subject,
            method: e.method,
            groups: e.groups,
            attributes: e.attributes,
            roles: e.roles,
            scopes: e.scopes,
            expires_at_ms: e.expires_at_ms,
            skip_pairing: e.skip_pairing,
        }),
        Decision::Permit(n) => t::Decision::Permit(t::Narrowing {
            roles: n.roles,
            scopes: n.scopes,
            attributes: n.attributes,
            expires_at_ms: n.expires_at_ms,
            veto_skip_pairing: n.veto_skip_pairing,
        }),
        Decision::Deny(d) => t::Decision::Deny(raw_denial(d)),
        Decision::Abstain => t::Decision::Abstain,
    }
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
pub struct Request<'a> {
    raw: &'a t::Request,
    role: OnceCell<String>,
    method: OnceCell<String>,
    remote_addr: OnceCell<String>,
}

impl<'a> Request<'a> {
    fn new(raw: &'a t::Request) -> Self {
        Self {
            raw,
            role: OnceCell::new(),
            method: OnceCell::new(),
            remote_addr: OnceCell::new(),
        }
    }

    /// The role the peer asked for: `worker` or `operator`.
    pub fn role(&self) -> &str {
        self.role.get_or_init(|| self.raw.role())
    }

    /// The auth method the peer asked for, e.g. `k8s-sa-trust`, `device-token`, `none`.
    pub fn method(&self) -> &str {
        self.method.get_or_init(|| self.raw.method())
    }

    /// The scopes the peer asked for.
    pub fn scopes(&self) -> Vec<String> {
        self.raw.scopes()
    }

    /// The remote socket address, `ip:port` (`[ip]:port` for IPv6).
    pub fn remote_addr(&self) -> &str {
        self.remote_addr.get_or_init(|| self.raw.remote_addr())
    }

    /// The peer's IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        parse_ip(self.remote_addr())
    }

    /// Whether the connection is TLS-protected end to end to the gateway.
    pub fn tls(&self) -> bool {
        self.raw.tls()
    }

    /// The client software, as the peer reports it.
    pub fn client(&self) -> Client {
        let c = self.raw.client();
        Client {
            id: c.id,
            version: c.version,
            platform: c.platform,
            instance_id: c.instance_id,
        }
    }

    /// The gateway's id for this connection, for correlating logs.
    pub fn conn_id(&self) -> String {
        self.raw.conn_id()
    }

    /// The verified device identity, if the peer proved one.
    pub fn device(&self) -> Option<Device> {
        self.raw.device().map(|d| Device {
            id: d.id,
            public_key: d.public_key,
        })
    }

    /// The presented credentials, as an opaque handle.
    pub fn credentials(&self) -> Credentials {
        Credentials(self.raw.credentials())
    }
}

/// The credentials the peer presented. Verify them with [`Credentials::review`] or
/// [`Credentials::verify_jwt`]; read them only with the operator's grant.
pub struct Credentials(t::Credentials);

fn secret(r: Result<String, t::SecretError>) -> Result<String, SecretError> {
    r.map_err(|e| match e {
        t::SecretError::NotGranted => SecretError::NotGranted,
        t::SecretError::Absent => SecretError::Absent,
    })
}

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
        self.0.method()
    }

    /// Whether the peer presented a bearer token.
    pub fn has_token(&self) -> bool {
        self.0.has_token()
    }

    /// Whether the peer presented a device token.
    pub fn has_device_token(&self) -> bool {
        self.0.has_device_token()
    }

    /// The bearer token. Needs the operator's grant (`credentials = "read"`).
    pub fn token(&self) -> Result<String, SecretError> {
        secret(self.0.token())
    }

    /// The device token. Needs the operator's grant (`credentials = "read"`).
    pub fn device_token(&self) -> Result<String, SecretError> {
        secret(self.0.device_token())
    }

    /// A Kubernetes TokenReview of the bearer token for `audiences` (cached by the gateway).
    pub fn review(&self, audiences: &[String]) -> Result<Review, ReviewError> {
        h::token_review(&self.0, audiences)
            .map(Review)
            .map_err(review_error)
    }

    /// Local verification of the bearer token against the cluster's OIDC keys.
    pub fn verify_jwt(&self, audiences: &[String]) -> Result<Review, ReviewError> {
        h::verify_jwt(&self.0, audiences)
            .map(Review)
            .map_err(review_error)
    }
}

/// What a verification found.
pub struct Review(h::Review);

impl Review {
    /// Whether the token is valid for one of the requested audiences.
    pub fn authenticated(&self) -> bool {
        self.0.authenticated()
    }

    /// Why the token was rejected.
    pub fn error(&self) -> Option<String> {
        self.0.error()
    }

    /// The Kubernetes username, e.g. `system:serviceaccount:ns:sa`.
    pub fn username(&self) -> String {
        self.0.username()
    }

    /// The user's UID (for a ServiceAccount: the ServiceAccount's UID, not a pod's).
    pub fn uid(&self) -> String {
        self.0.uid()
    }

    /// Groups.
    pub fn groups(&self) -> Vec<String> {
        self.0.groups()
    }

    /// The audiences the token is valid for among the requested ones.
    pub fn audiences(&self) -> Vec<String> {
        self.0.audiences()
    }

    /// An `extra` attribute, e.g. `authentication.kubernetes.io/pod-uid`.
    pub fn extra(&self, key: &str) -> Option<Vec<String>> {
        self.0.extra(key)
    }

    /// The first value of an `extra` attribute.
    pub fn extra_first(&self, key: &str) -> Option<String> {
        self.0.extra(key).and_then(|v| v.into_iter().next())
    }

    /// When the token expires (Unix ms), if the gateway could tell.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.0.expires_at_ms()
    }
}

/// The identity earlier plugins established.
pub struct Identity<'a> {
    raw: &'a t::Identity,
    subject: OnceCell<String>,
}

impl<'a> Identity<'a> {
    fn new(raw: &'a t::Identity) -> Self {
        Self {
            raw,
            subject: OnceCell::new(),
        }
    }

    /// The subject, e.g. `system:serviceaccount:ns:sa` or `device:<id>`.
    pub fn subject(&self) -> &str {
        self.subject.get_or_init(|| self.raw.subject())
    }

    /// The auth method that established it.
    pub fn method(&self) -> String {
        self.raw.method()
    }

    /// Groups.
    pub fn groups(&self) -> Vec<String> {
        self.raw.groups()
    }

    /// Whether the subject belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.raw.in_group(group)
    }

    /// One attribute (`namespace`, `pod-name`, ...), if set.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.raw.attribute(key)
    }

    /// Every attribute.
    pub fn attributes(&self) -> Vec<(String, String)> {
        self.raw.attributes()
    }

    /// Roles the subject may take.
    pub fn roles(&self) -> Vec<String> {
        self.raw.roles()
    }

    /// Scopes the subject may hold.
    pub fn scopes(&self) -> Vec<String> {
        self.raw.scopes()
    }

    /// When the credentials behind it expire (Unix ms), if they do.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.raw.expires_at_ms()
    }

    /// Whether it may skip device pairing so far.
    pub fn skip_pairing(&self) -> bool {
        self.raw.skip_pairing()
    }
}
