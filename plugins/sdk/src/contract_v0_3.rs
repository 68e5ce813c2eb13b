//! The SDK over `trustgate:auth@0.3.0`: each call brings the facts the plugin declared in
//! [`Plugin::wants`] — the declared verification already made — as one list; any other fact is
//! fetched on first read, all missing ones in one crossing.

use std::cell::OnceCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use crate::facts::{IdentityData, RequestData, Source, fill};
use crate::{
    __Declared, Client, Decision, Denial, DenyCode, Device, IdentityFields, LogLevel, Plugin,
    RequestFields, Review, ReviewError, ReviewSpec, SecretError, Verification, Wants,
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

/// The exports of a [`Plugin`] over this contract (used by [`plugin!`](crate::plugin)).
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_exports {
    ($ty:ty, $export:ident, $slot:ident) => {
        impl $crate::bindings::exports::trustgate::auth::plugin::Guest for $export {
            fn configure(
                config: ::std::string::String,
            ) -> ::std::result::Result<
                $crate::bindings::trustgate::auth::types::Wants,
                ::std::string::String,
            > {
                let plugin = $crate::__configure::<$ty>(&config)?;
                let declared = $crate::__Declared::new($crate::Plugin::wants(&plugin));
                let raw = $crate::__configured(declared.wants())?;
                $slot.with(|slot| {
                    *slot.borrow_mut() = ::std::option::Option::Some((plugin, declared))
                });
                ::std::result::Result::Ok(raw)
            }

            fn authenticate(
                facts: ::std::vec::Vec<$crate::bindings::trustgate::auth::types::Fact>,
            ) -> $crate::bindings::trustgate::auth::types::Decision {
                $slot.with(|slot| {
                    let slot = slot.borrow();
                    $crate::__authenticate(slot.as_ref().map(|(p, d)| (p, d)), facts)
                })
            }
        }
    };
}

/// What `configure` answers: the plugin's declaration.
#[doc(hidden)]
pub fn __configured(wants: &Wants) -> Result<t::Wants, String> {
    Ok(t::Wants {
        methods: wants.methods.clone(),
        request: request_fields(wants.request),
        so_far: identity_fields(wants.so_far),
        attributes: wants.attributes.clone(),
        verification: wants.verification.as_ref().map(|v| match v {
            Verification::TokenReview(spec) => t::Verification::TokenReview(review_spec(spec)),
            Verification::KubernetesJwt(spec) => t::Verification::KubernetesJwt(review_spec(spec)),
        }),
        template: wants.template.as_ref().map(|t| t::IdentityTemplate {
            method: t.method.clone(),
            groups: t.groups,
            uid_attribute: t.uid_attribute.clone(),
            extra_attributes: t.extra_attributes.clone(),
            cluster_attribute: t.cluster_attribute.clone(),
        }),
    })
}

fn review_spec(spec: &ReviewSpec) -> t::ReviewSpec {
    let mut fields = t::ReviewFields::empty();
    for (asked, field) in [
        (spec.uid, t::ReviewFields::UID),
        (spec.groups, t::ReviewFields::GROUPS),
        (spec.valid_audiences, t::ReviewFields::AUDIENCES),
        (spec.extra_values, t::ReviewFields::EXTRA_VALUES),
        (spec.cluster, t::ReviewFields::CLUSTER),
    ] {
        if asked {
            fields |= field;
        }
    }
    t::ReviewSpec {
        audiences: spec.audiences.clone(),
        extra: spec.extra.clone(),
        fields,
    }
}

fn request_fields(f: RequestFields) -> t::RequestFields {
    let mut out = t::RequestFields::empty();
    for (ours, theirs) in [
        (RequestFields::ROLE, t::RequestFields::ROLE),
        (RequestFields::SCOPES, t::RequestFields::SCOPES),
        (RequestFields::METHOD, t::RequestFields::METHOD),
        (RequestFields::REMOTE, t::RequestFields::REMOTE),
        (RequestFields::TLS, t::RequestFields::TLS),
        (RequestFields::CLIENT, t::RequestFields::CLIENT),
        (RequestFields::CONN_ID, t::RequestFields::CONN_ID),
        (RequestFields::DEVICE, t::RequestFields::DEVICE),
        (RequestFields::PRESENTED, t::RequestFields::PRESENTED),
    ] {
        if f.contains(ours) {
            out |= theirs;
        }
    }
    out
}

fn identity_fields(f: IdentityFields) -> t::IdentityFields {
    let mut out = t::IdentityFields::empty();
    for (ours, theirs) in [
        (IdentityFields::SUBJECT, t::IdentityFields::SUBJECT),
        (IdentityFields::METHOD, t::IdentityFields::METHOD),
        (IdentityFields::GROUPS, t::IdentityFields::GROUPS),
        (IdentityFields::ATTRIBUTES, t::IdentityFields::ATTRIBUTES),
        (IdentityFields::ROLES, t::IdentityFields::ROLES),
        (IdentityFields::SCOPES, t::IdentityFields::SCOPES),
        (
            IdentityFields::EXPIRES_AT_MS,
            t::IdentityFields::EXPIRES_AT_MS,
        ),
        (
            IdentityFields::SKIP_PAIRING,
            t::IdentityFields::SKIP_PAIRING,
        ),
    ] {
        if f.contains(ours) {
            out |= theirs;
        }
    }
    out
}

#[doc(hidden)]
pub fn __authenticate<P: Plugin>(
    configured: Option<(&P, &__Declared)>,
    facts: Vec<t::Fact>,
) -> t::Decision {
    let Some((plugin, declared)) = configured else {
        return raw_decision(crate::__not_configured());
    };
    let wants = &declared.wants;
    let source = Gateway;
    let request = RequestData::default();
    let mut identity = IdentityData::default();
    let review = OnceCell::new();
    let mut established = false;
    let attributes = put(
        &facts_data(&request, &identity),
        facts,
        &mut |r| {
            let _ = review.set(Some(
                r.map(|r| to_review(r, declared.extra_keys.clone()))
                    .map_err(review_error),
            ));
        },
        &mut established,
    );
    // Asked: what the call brought is all there is of these (the rest is fetched on read).
    settle(&request, wants.request);
    if established {
        settle_identity(&identity, wants.so_far);
        if wants.so_far.contains(IdentityFields::ATTRIBUTES) {
            fill(&identity.attributes, attributes);
        } else {
            identity.named = wants
                .attributes
                .iter()
                .map(|k| {
                    let v = attributes
                        .iter()
                        .find(|(ak, _)| ak == k)
                        .map(|(_, v)| v.clone());
                    (k.clone(), v)
                })
                .collect();
        }
    }
    if wants.verification.is_some() && review.get().is_none() {
        // Declared, and none came: the peer presented no bearer token.
        let _ = review.set(None);
    }
    let request = crate::Request {
        data: request,
        source: &source,
        review,
        verification: wants.verification.as_ref(),
    };
    let identity = established.then_some(crate::Identity {
        data: identity,
        source: &source,
    });
    raw_decision(plugin.authenticate(&request, identity.as_ref()))
}

/// Where facts go.
struct Cells<'a> {
    request: &'a RequestData,
    identity: &'a IdentityData,
}

fn facts_data<'a>(request: &'a RequestData, identity: &'a IdentityData) -> Cells<'a> {
    Cells { request, identity }
}

/// Puts each fact in its cell; the review goes to `review`, `identity` marks an identity,
/// and the attributes come back.
fn put(
    cells: &Cells,
    facts: Vec<t::Fact>,
    review: &mut dyn FnMut(Result<t::Review, t::ReviewError>),
    established: &mut bool,
) -> Vec<(String, String)> {
    let (r, i) = (cells.request, cells.identity);
    let mut attributes = Vec::new();
    for fact in facts {
        match fact {
            t::Fact::Role(v) => fill(
                &r.role,
                match v {
                    t::Role::Worker => "worker",
                    t::Role::Operator => "operator",
                },
            ),
            t::Fact::Scopes(v) => fill(&r.scopes, v),
            t::Fact::Method(v) => fill(&r.method, v),
            t::Fact::Remote(a) => fill(&r.remote, Some(socket_address(a))),
            t::Fact::Tls(v) => fill(&r.tls, v),
            t::Fact::Client(c) => fill(
                &r.client,
                Client {
                    id: c.id,
                    version: c.version,
                    platform: c.platform,
                    instance_id: c.instance_id,
                },
            ),
            t::Fact::ConnId(v) => fill(&r.conn_id, v),
            t::Fact::Device(d) => fill(
                &r.device,
                d.map(|d| Device {
                    id: d.id,
                    public_key: d.public_key,
                }),
            ),
            t::Fact::Presented(p) => {
                fill(&r.has_token, p.contains(t::Presented::TOKEN));
                fill(&r.has_device_token, p.contains(t::Presented::DEVICE_TOKEN));
            }
            t::Fact::Identity => *established = true,
            t::Fact::Subject(v) => fill(&i.subject, v),
            t::Fact::IdentityMethod(v) => fill(&i.method, v),
            t::Fact::Groups(v) => fill(&i.groups, v),
            t::Fact::Attribute(kv) => attributes.push(kv),
            t::Fact::Roles(v) => fill(&i.roles, v),
            t::Fact::IdentityScopes(v) => fill(&i.scopes, v),
            t::Fact::ExpiresAtMs(v) => fill(&i.expires_at_ms, Some(v)),
            t::Fact::SkipPairing(v) => fill(&i.skip_pairing, v),
            t::Fact::Review(v) => review(v),
        }
    }
    attributes
}

/// Fills what asked-for facts may leave out: a remote address the host could not tell, a
/// device the peer did not prove.
fn settle(r: &RequestData, asked: RequestFields) {
    if asked.contains(RequestFields::REMOTE) {
        fill(&r.remote, None);
    }
    if asked.contains(RequestFields::DEVICE) {
        fill(&r.device, None);
    }
}

/// The same for the identity: no expiry is an answer, and so is an attribute not set.
fn settle_identity(i: &IdentityData, asked: IdentityFields) {
    if asked.contains(IdentityFields::EXPIRES_AT_MS) {
        fill(&i.expires_at_ms, None);
    }
}

fn socket_address(a: t::SocketAddress) -> SocketAddr {
    let ip = match a.ip {
        t::IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        t::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
        }
    };
    SocketAddr::new(ip, a.port)
}

fn to_review(r: t::Review, extra_keys: Rc<[String]>) -> Review {
    Review {
        authenticated: r.authenticated,
        audience_matched: r.audience_matched,
        error: r.error,
        username: r.username,
        expires_at_ms: r.expires_at_ms,
        uid: r.uid,
        groups: r.groups,
        audiences: r.audiences,
        cluster: r.cluster,
        extra_keys,
        extra_present: r.extra_present,
        extra_values: r.extra,
    }
}

fn review_error(e: t::ReviewError) -> ReviewError {
    match e {
        t::ReviewError::NotConfigured(m) => ReviewError::NotConfigured(m),
        t::ReviewError::Unavailable(m) => ReviewError::Unavailable(m),
        t::ReviewError::Forbidden(m) => ReviewError::Forbidden(m),
        t::ReviewError::Failed(m) => ReviewError::Failed(m),
    }
}

/// The gateway, for facts a call did not bring.
struct Gateway;

impl Source for Gateway {
    fn request(&self, data: &RequestData, _: RequestFields) {
        // Every fact still missing, in one crossing: a read of one is usually followed by more.
        let missing = data.missing();
        let identity = IdentityData::default();
        let facts = h::read_request(request_fields(missing));
        put(&facts_data(data, &identity), facts, &mut |_| {}, &mut false);
        settle(data, missing);
    }

    fn identity(&self, data: &IdentityData, _: IdentityFields) {
        // Asked whole: every missing fact and every attribute, in one crossing.
        let missing = data.missing() | IdentityFields::ATTRIBUTES;
        let request = RequestData::default();
        let facts = h::read_so_far(identity_fields(missing), &[]);
        let mut established = false;
        let attributes = put(
            &facts_data(&request, data),
            facts,
            &mut |_| {},
            &mut established,
        );
        if established {
            settle_identity(data, missing);
            fill(&data.attributes, attributes);
        }
    }

    fn credentials(&self) -> crate::Credentials {
        Credentials(h::presented_credentials())
    }

    fn review(&self, verification: &Verification) -> Result<Review, ReviewError> {
        let (answer, spec) = match verification {
            Verification::TokenReview(spec) => (h::token_review(&review_spec(spec)), spec),
            Verification::KubernetesJwt(spec) => (h::verify_jwt(&review_spec(spec)), spec),
        };
        answer
            .map(|r| to_review(r, spec.extra.clone().into()))
            .map_err(review_error)
    }
}

/// The credentials the peer presented, as an opaque handle valid during this call only.
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
        Decision::AllowReviewed(r) => t::Decision::AllowReviewed(t::Reviewed {
            attributes: r.attributes,
            roles: r.roles,
            scopes: r.scopes,
            skip_pairing: r.skip_pairing,
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
        Decision::Fail(m) => t::Decision::Fail(m),
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
