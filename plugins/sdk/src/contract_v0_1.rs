//! The SDK over the deprecated `trustgate:auth@0.1.0` (feature `contract-0-1`): the same API
//! as over 0.3, on top of 0.1's records. Under 0.1 the whole request — credentials included —
//! is copied into every plugin, and a `permit` is answered as 0.1 did: by allowing the
//! identity so far again, narrowed.

use std::cell::{OnceCell, RefCell};

use crate::facts::{IdentityData, RequestData, Source, fill};
use crate::{
    Client, Decision, Denial, DenyCode, Device, IdentityFields, LogLevel, Narrowing, Plugin,
    RequestFields, Review, ReviewError, SecretError, Verification, Wants,
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

/// The exports of a [`Plugin`] over this contract (used by [`plugin!`](crate::plugin)).
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_exports {
    ($ty:ty, $export:ident, $slot:ident) => {
        impl $crate::bindings::exports::trustgate::auth::plugin::Guest for $export {
            fn configure(
                config: ::std::string::String,
            ) -> ::std::result::Result<(), ::std::string::String> {
                let plugin = $crate::__configure::<$ty>(&config)?;
                let declared = $crate::__Declared::new($crate::Plugin::wants(&plugin));
                $crate::__configured(declared.wants())?;
                $slot.with(|slot| {
                    *slot.borrow_mut() = ::std::option::Option::Some((plugin, declared))
                });
                ::std::result::Result::Ok(())
            }

            fn authenticate(
                request: $crate::bindings::trustgate::auth::types::Request,
                so_far: ::std::option::Option<$crate::bindings::trustgate::auth::types::Identity>,
            ) -> $crate::bindings::trustgate::auth::types::Decision {
                $slot.with(|slot| {
                    let slot = slot.borrow();
                    $crate::__authenticate(
                        slot.as_ref().map(|(p, d)| (p, d.wants())),
                        request,
                        so_far,
                    )
                })
            }
        }
    };
}

/// 0.1 has no declarations: every fact comes with every call.
#[doc(hidden)]
pub fn __configured(_: &Wants) -> Result<(), String> {
    Ok(())
}

#[doc(hidden)]
pub fn __authenticate<P: Plugin>(
    configured: Option<(&P, &Wants)>,
    request: t::Request,
    so_far: Option<t::Identity>,
) -> t::Decision {
    let Some((plugin, wants)) = configured else {
        return t::Decision::Deny(raw_denial(crate::__not_configured_denial()));
    };
    // 0.1 calls every plugin: the methods it decides on are filtered here.
    if !wants.decides_on(&request.credentials.method) {
        return t::Decision::Abstain;
    }
    let source = Copied {
        token: request.credentials.token.clone(),
        credentials: request.credentials.clone(),
        wants,
        last: RefCell::new(None),
    };
    let req = crate::Request {
        data: request_data(&request),
        source: &source,
        review: OnceCell::new(),
        verification: wants.verification.as_ref(),
    };
    let identity = so_far.as_ref().map(|i| crate::Identity {
        data: identity_data(i),
        source: &source,
    });
    let decision = match plugin.authenticate(&req, identity.as_ref()) {
        // 0.1 has no `allow-reviewed`: the identity is formed here, from the call's review.
        Decision::AllowReviewed(r) => {
            Decision::Allow(crate::facts::from_review(wants, source.last.take(), r))
        }
        d => d,
    };
    match decision {
        Decision::AllowReviewed(_) => t::Decision::Abstain,
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
        // 0.1 has no `fail`: said in the log, then a trap.
        Decision::Fail(m) => crate::facts::fail_by_trap(&m),
    }
}

fn request_data(r: &t::Request) -> RequestData {
    let d = RequestData::default();
    fill(
        &d.role,
        if r.role == "operator" {
            "operator"
        } else {
            "worker"
        },
    );
    fill(&d.scopes, r.scopes.clone());
    fill(&d.method, r.credentials.method.clone());
    fill(&d.remote, r.peer.remote_addr.parse().ok());
    fill(&d.remote_text, r.peer.remote_addr.clone());
    fill(&d.tls, r.peer.tls);
    // 0.1 carries no instance id.
    fill(
        &d.client,
        Client {
            id: r.peer.client_id.clone(),
            version: r.peer.client_version.clone(),
            platform: r.peer.platform.clone(),
            instance_id: None,
        },
    );
    fill(&d.conn_id, r.peer.conn_id.clone());
    fill(
        &d.device,
        r.device.as_ref().map(|d| Device {
            id: d.id.clone(),
            public_key: d.public_key.clone(),
        }),
    );
    fill(&d.has_token, r.credentials.token.is_some());
    fill(&d.has_device_token, r.credentials.device_token.is_some());
    d
}

fn identity_data(i: &t::Identity) -> IdentityData {
    let d = IdentityData::default();
    fill(&d.subject, i.subject.clone());
    fill(&d.method, i.method.clone());
    fill(&d.groups, i.groups.clone());
    fill(&d.attributes, i.attributes.clone());
    fill(&d.roles, i.roles.clone());
    fill(&d.scopes, i.scopes.clone());
    fill(&d.expires_at_ms, i.expires_at_ms);
    fill(&d.skip_pairing, i.skip_pairing);
    d
}

/// Everything came with the call; only verifications go to the gateway (with the token, as
/// 0.1 has it).
struct Copied<'a> {
    token: Option<String>,
    credentials: t::Credentials,
    wants: &'a Wants,
    /// The call's last review, in full (for `AllowReviewed`).
    last: RefCell<Option<Review>>,
}

impl Source for Copied<'_> {
    fn request(&self, _: &RequestData, _: RequestFields) {}

    fn identity(&self, _: &IdentityData, _: IdentityFields) {}

    fn credentials(&self) -> crate::Credentials {
        Credentials(self.credentials.clone())
    }

    fn review(&self, verification: &Verification) -> Result<Review, ReviewError> {
        let Some(token) = self.token.as_deref() else {
            return Err(ReviewError::Failed(
                "the peer presented no bearer token".into(),
            ));
        };
        let (answer, spec) = match verification {
            Verification::TokenReview(spec) => (h::token_review(token, &spec.audiences), spec),
            Verification::KubernetesJwt(spec) => (h::verify_jwt(token, &spec.audiences), spec),
        };
        let r = answer.map_err(|e| match e {
            h::ReviewError::NotConfigured(m) => ReviewError::NotConfigured(m),
            h::ReviewError::Unavailable(m) => ReviewError::Unavailable(m),
            h::ReviewError::Forbidden(m) => ReviewError::Forbidden(m),
            h::ReviewError::Failed(m) => ReviewError::Failed(m),
        })?;
        let legacy = crate::facts::LegacyReview {
            authenticated: r.authenticated,
            error: r.error.clone(),
            username: r.user.username.clone(),
            uid: r.user.uid.clone(),
            groups: r.user.groups.clone(),
            audiences: r.audiences.clone(),
            expires_at_ms: r.expires_at_ms,
        };
        let extra = |k: &str| {
            r.user
                .extra
                .iter()
                .find(|(ek, _)| ek == k)
                .and_then(|(_, v)| v.first().cloned())
        };
        if let Some(template) = &self.wants.template {
            *self.last.borrow_mut() = Some(legacy.full(template, &extra));
        }
        Ok(legacy.asked(spec, &spec.extra, &extra))
    }
}

/// The credentials the peer presented (0.1 copies them into every plugin).
pub struct Credentials(t::Credentials);

impl Credentials {
    /// The auth method the peer asked for.
    pub fn method(&self) -> String {
        self.0.method.clone()
    }

    /// The bearer token (0.1 needs no grant).
    pub fn token(&self) -> Result<String, SecretError> {
        self.0.token.clone().ok_or(SecretError::Absent)
    }

    /// The device token (0.1 needs no grant).
    pub fn device_token(&self) -> Result<String, SecretError> {
        self.0.device_token.clone().ok_or(SecretError::Absent)
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
