//! The SDK over `trustgate:auth@0.2.0` (feature `contract-0-2`): the request, credentials,
//! reviews and the identity so far are handles; each fact is fetched from the gateway when
//! first read, one per crossing, and kept for the rest of the call.

use std::cell::{OnceCell, RefCell};

use crate::facts::{IdentityData, RequestData, Source, fill};
use crate::{
    Client, Decision, Denial, DenyCode, Device, IdentityFields, LogLevel, Plugin, RequestFields,
    Review, ReviewError, SecretError, Verification, Wants,
};

/// The generated bindings of the `auth-plugin` world.
#[allow(missing_docs, unsafe_code, clippy::all)] // generated code
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/0.2.0",
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
                request: &$crate::bindings::trustgate::auth::types::Request,
                so_far: ::std::option::Option<&$crate::bindings::trustgate::auth::types::Identity>,
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

/// 0.2 has no declarations: every fact is read on demand.
#[doc(hidden)]
pub fn __configured(_: &Wants) -> Result<(), String> {
    Ok(())
}

#[doc(hidden)]
pub fn __authenticate<P: Plugin>(
    configured: Option<(&P, &Wants)>,
    request: &t::Request,
    so_far: Option<&t::Identity>,
) -> t::Decision {
    let Some((plugin, wants)) = configured else {
        return t::Decision::Deny(raw_denial(crate::__not_configured_denial()));
    };
    let source = Gateway {
        request,
        identity: so_far,
        wants,
        last: RefCell::new(None),
    };
    let req = crate::Request {
        data: RequestData::default(),
        source: &source,
        review: OnceCell::new(),
        verification: wants.verification.as_ref(),
    };
    // 0.2 calls every plugin: the methods it decides on are filtered here.
    if !wants.decides_on(req.method()) {
        return t::Decision::Abstain;
    }
    let identity = so_far.map(|_| crate::Identity {
        data: IdentityData::default(),
        source: &source,
    });
    let decision = plugin.authenticate(&req, identity.as_ref());
    raw_decision(decision, &source)
}

/// The lent handles, for facts not read yet: one crossing per fact.
struct Gateway<'a> {
    request: &'a t::Request,
    identity: Option<&'a t::Identity>,
    wants: &'a Wants,
    /// The call's last review, with everything the identity template needs.
    last: RefCell<Option<Review>>,
}

impl Source for Gateway<'_> {
    fn request(&self, data: &RequestData, field: RequestFields) {
        let r = self.request;
        // Only the field a read needs: the others may never be read.
        let has = |f| field.contains(f);
        if has(RequestFields::ROLE) && data.role.get().is_none() {
            fill(
                &data.role,
                if r.role() == "operator" {
                    "operator"
                } else {
                    "worker"
                },
            );
        } else if has(RequestFields::METHOD) && data.method.get().is_none() {
            fill(&data.method, r.method());
        } else if has(RequestFields::SCOPES) && data.scopes.get().is_none() {
            fill(&data.scopes, r.scopes());
        } else if has(RequestFields::REMOTE) && data.remote.get().is_none() {
            let text = r.remote_addr();
            fill(&data.remote, text.parse().ok());
            fill(&data.remote_text, text);
        } else if has(RequestFields::TLS) && data.tls.get().is_none() {
            fill(&data.tls, r.tls());
        } else if has(RequestFields::CLIENT) && data.client.get().is_none() {
            let c = r.client();
            fill(
                &data.client,
                Client {
                    id: c.id,
                    version: c.version,
                    platform: c.platform,
                    instance_id: c.instance_id,
                },
            );
        } else if has(RequestFields::CONN_ID) && data.conn_id.get().is_none() {
            fill(&data.conn_id, r.conn_id());
        } else if has(RequestFields::DEVICE) && data.device.get().is_none() {
            fill(
                &data.device,
                r.device().map(|d| Device {
                    id: d.id,
                    public_key: d.public_key,
                }),
            );
        } else if has(RequestFields::PRESENTED) && data.has_token.get().is_none() {
            let c = r.credentials();
            fill(&data.has_token, c.has_token());
            fill(&data.has_device_token, c.has_device_token());
        }
    }

    fn identity(&self, data: &IdentityData, field: IdentityFields) {
        let Some(i) = self.identity else { return };
        let has = |f| field.contains(f);
        if has(IdentityFields::SUBJECT) && data.subject.get().is_none() {
            fill(&data.subject, i.subject());
        } else if has(IdentityFields::METHOD) && data.method.get().is_none() {
            fill(&data.method, i.method());
        } else if has(IdentityFields::GROUPS) && data.groups.get().is_none() {
            fill(&data.groups, i.groups());
        } else if has(IdentityFields::ATTRIBUTES) && data.attributes.get().is_none() {
            fill(&data.attributes, i.attributes());
        } else if has(IdentityFields::ROLES) && data.roles.get().is_none() {
            fill(&data.roles, i.roles());
        } else if has(IdentityFields::SCOPES) && data.scopes.get().is_none() {
            fill(&data.scopes, i.scopes());
        } else if has(IdentityFields::EXPIRES_AT_MS) && data.expires_at_ms.get().is_none() {
            fill(&data.expires_at_ms, i.expires_at_ms());
        } else if has(IdentityFields::SKIP_PAIRING) && data.skip_pairing.get().is_none() {
            fill(&data.skip_pairing, i.skip_pairing());
        }
    }

    fn credentials(&self) -> crate::Credentials {
        Credentials(self.request.credentials())
    }

    fn review(&self, verification: &Verification) -> Result<Review, ReviewError> {
        let credentials = self.request.credentials();
        let (answer, spec) = match verification {
            Verification::TokenReview(spec) => {
                (h::token_review(&credentials, &spec.audiences), spec)
            }
            Verification::KubernetesJwt(spec) => {
                (h::verify_jwt(&credentials, &spec.audiences), spec)
            }
        };
        let r = answer.map_err(|e| match e {
            h::ReviewError::NotConfigured(m) => ReviewError::NotConfigured(m),
            h::ReviewError::Unavailable(m) => ReviewError::Unavailable(m),
            h::ReviewError::Forbidden(m) => ReviewError::Forbidden(m),
            h::ReviewError::Failed(m) => ReviewError::Failed(m),
        })?;
        let legacy = crate::facts::LegacyReview {
            authenticated: r.authenticated(),
            error: r.error(),
            username: r.username(),
            uid: r.uid(),
            groups: r.groups(),
            audiences: r.audiences(),
            expires_at_ms: r.expires_at_ms(),
        };
        let extra = |k: &str| r.extra(k).and_then(|v| v.into_iter().next());
        // What `AllowReviewed` needs besides, kept for the decision.
        if let Some(template) = &self.wants.template {
            *self.last.borrow_mut() = Some(legacy.full(template, &extra));
        }
        Ok(legacy.asked(spec, &spec.extra, &extra))
    }
}

/// The credentials the peer presented, as an opaque handle.
pub struct Credentials(t::Credentials);

fn secret(r: Result<String, t::SecretError>) -> Result<String, SecretError> {
    r.map_err(|e| match e {
        t::SecretError::NotGranted => SecretError::NotGranted,
        t::SecretError::Absent => SecretError::Absent,
    })
}

impl Credentials {
    /// The auth method the peer asked for.
    pub fn method(&self) -> String {
        self.0.method()
    }

    /// The bearer token. Needs the operator's grant (`credentials = "read"`).
    pub fn token(&self) -> Result<String, SecretError> {
        secret(self.0.token())
    }

    /// The device token. Needs the operator's grant (`credentials = "read"`).
    pub fn device_token(&self) -> Result<String, SecretError> {
        secret(self.0.device_token())
    }
}

fn raw_decision(d: Decision, source: &Gateway) -> t::Decision {
    match d {
        Decision::Allow(e) => allow(e),
        // 0.2 has no `allow-reviewed`: the identity is formed here, from the call's review.
        Decision::AllowReviewed(r) => allow(crate::facts::from_review(
            source.wants,
            source.last.take(),
            r,
        )),
        Decision::Permit(n) => t::Decision::Permit(t::Narrowing {
            roles: n.roles,
            scopes: n.scopes,
            attributes: n.attributes,
            expires_at_ms: n.expires_at_ms,
            veto_skip_pairing: n.veto_skip_pairing,
        }),
        Decision::Deny(d) => t::Decision::Deny(raw_denial(d)),
        Decision::Abstain => t::Decision::Abstain,
        // 0.2 has no `fail`: said in the log, then a trap.
        Decision::Fail(m) => crate::facts::fail_by_trap(&m),
    }
}

fn allow(e: crate::Established) -> t::Decision {
    t::Decision::Allow(t::Established {
        subject: e.subject,
        method: e.method,
        groups: e.groups,
        attributes: e.attributes,
        roles: e.roles,
        scopes: e.scopes,
        expires_at_ms: e.expires_at_ms,
        skip_pairing: e.skip_pairing,
    })
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
