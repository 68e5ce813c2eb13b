//! `trustgate:auth@0.3.0`, host side: the facts each call hands the plugin by value (as
//! declared by its `configure`), the host functions about the call in progress, and the
//! conversions of its decisions.

use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::Resource;

use crate::bindings::v0_3::trustgate::auth::host as h;
use crate::bindings::v0_3::trustgate::auth::types as t;
use crate::bindings::v0_3::{AuthPlugin, AuthPluginPre};
use crate::chain::Call;
use crate::handles::{Credentials, Handle, expect_handle};
use crate::sandbox::{ReviewKind, StoreState};
use crate::types::{
    Decision, Denial, DenyCode, Identity, LogLevel, Narrowing, Request, Review, ReviewError,
};

use super::{MAX_AUDIENCES, MAX_KEYS, SecretError, keys, secret};

/// What a configured instance decides on, as its `configure` declared.
#[derive(Clone)]
pub(crate) struct Wants {
    /// The auth methods it decides on (empty: all).
    methods: Vec<String>,
    request: t::RequestFields,
    so_far: t::IdentityFields,
    attributes: Vec<String>,
    verification: Option<(ReviewKind, t::ReviewSpec)>,
    template: Option<t::IdentityTemplate>,
}

impl Wants {
    /// Checks a declaration against the contract's limits (an error names the field, never
    /// the content).
    fn checked(w: t::Wants) -> Result<Self, String> {
        keys("wants.methods", &w.methods, MAX_AUDIENCES)?;
        keys("wants.attributes", &w.attributes, MAX_KEYS)?;
        let verification = match w.verification {
            None => None,
            Some(t::Verification::TokenReview(spec)) => Some((ReviewKind::TokenReview, spec)),
            Some(t::Verification::KubernetesJwt(spec)) => Some((ReviewKind::LocalJwt, spec)),
        };
        if let Some((_, spec)) = &verification {
            review_spec("wants.verification", spec)?;
        }
        if let Some(t) = &w.template {
            crate::bounds::template(
                &t.method,
                t.uid_attribute.as_deref(),
                &t.extra_attributes,
                t.cluster_attribute.as_deref(),
            )
            .map_err(|e| format!("wants.template: {e}"))?;
        }
        Ok(Self {
            methods: w.methods,
            request: w.request,
            so_far: w.so_far,
            attributes: w.attributes,
            verification,
            template: w.template,
        })
    }
}

fn review_spec(field: &str, spec: &t::ReviewSpec) -> Result<(), String> {
    keys(
        &format!("{field}.audiences"),
        &spec.audiences,
        MAX_AUDIENCES,
    )?;
    keys(&format!("{field}.extra"), &spec.extra, MAX_KEYS)
}

/// One configured 0.3 instance.
pub(crate) struct Instance {
    bindings: AuthPlugin,
    wants: Option<Wants>,
    /// The facts of the call in progress (kept for its capacity).
    facts: Vec<t::Fact>,
}

impl Instance {
    pub(crate) async fn instantiate(
        pre: &AuthPluginPre<StoreState>,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Self> {
        Ok(Self {
            bindings: pre.instantiate_async(store).await?,
            wants: None,
            facts: Vec::new(),
        })
    }

    pub(crate) async fn configure(
        &mut self,
        store: &mut Store<StoreState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        let answer = self
            .bindings
            .trustgate_auth_plugin()
            .call_configure(store, config)
            .await?;
        Ok(answer.and_then(|w| {
            self.wants = Some(Wants::checked(w)?);
            Ok(())
        }))
    }

    /// The auth methods the plugin decides on (empty: all).
    pub(crate) fn methods(&self) -> &[String] {
        self.wants.as_ref().map_or(&[], |w| &w.methods)
    }

    pub(crate) async fn authenticate(
        &mut self,
        store: &mut Store<StoreState>,
        call: &Call,
    ) -> wasmtime::Result<super::Answer> {
        let Some(wants) = &self.wants else {
            wasmtime::bail!("authenticate before configure");
        };
        let facts = &mut self.facts;
        facts.clear();
        request_facts(&call.request, wants.request, facts)?;
        if let Some(id) = call.so_far.as_deref() {
            identity_facts(id, wants.so_far, &wants.attributes, facts);
        }
        // The declared verification, made by the host before the call: its result arrives
        // with the facts, one crossing instead of two.
        if let Some((kind, spec)) = &wants.verification
            && call.request.credentials.token.is_some()
        {
            // Boxed: the review's future would otherwise widen every layer above it.
            let review = Box::pin(store.data_mut().review_v0_3(*kind, spec)).await?;
            facts.push(t::Fact::Review(review));
        }
        let d = self
            .bindings
            .trustgate_auth_plugin()
            .call_authenticate(&mut *store, facts)
            .await?;
        if let t::Decision::Fail(message) = d {
            return Ok(super::Answer::Failed(message));
        }
        decision(d, wants.template.as_ref(), store.data()).map(super::Answer::Decided)
    }
}

// === Facts ===

/// The facts of `r` named by `fields`, appended to `out`.
fn request_facts(
    r: &Request,
    fields: t::RequestFields,
    out: &mut Vec<t::Fact>,
) -> wasmtime::Result<()> {
    use t::{Fact, RequestFields as F};
    let has = |f: F| fields.contains(f);
    if has(F::ROLE) {
        out.push(Fact::Role(match r.role.as_str() {
            "worker" => t::Role::Worker,
            "operator" => t::Role::Operator,
            // The embedder's bug, never the peer's: the protocol knows these two roles only.
            other => wasmtime::bail!(
                "the request's role `{}` is neither `worker` nor `operator`",
                crate::bounds::escape_text(crate::bounds::clip(other, 32))
            ),
        }));
    }
    if has(F::SCOPES) {
        out.push(Fact::Scopes(r.scopes.clone()));
    }
    if has(F::METHOD) {
        out.push(Fact::Method(r.credentials.method.clone()));
    }
    if has(F::REMOTE)
        && let Some(a) = socket_address(&r.peer.remote_addr)
    {
        out.push(Fact::Remote(a));
    }
    if has(F::TLS) {
        out.push(Fact::Tls(r.peer.tls));
    }
    if has(F::CLIENT) {
        out.push(Fact::Client(t::Client {
            id: r.peer.client_id.clone(),
            version: r.peer.client_version.clone(),
            platform: r.peer.platform.clone(),
            instance_id: r.peer.instance_id.clone(),
        }));
    }
    if has(F::CONN_ID) {
        out.push(Fact::ConnId(r.peer.conn_id.clone()));
    }
    if has(F::DEVICE) {
        out.push(Fact::Device(r.device.as_ref().map(|d| t::Device {
            id: d.id.clone(),
            public_key: d.public_key.clone(),
        })));
    }
    if has(F::PRESENTED) {
        let mut p = t::Presented::empty();
        if r.credentials.token.is_some() {
            p |= t::Presented::TOKEN;
        }
        if r.credentials.device_token.is_some() {
            p |= t::Presented::DEVICE_TOKEN;
        }
        out.push(Fact::Presented(p));
    }
    Ok(())
}

/// `ip:port` or `[ip]:port` as the contract's socket address (`None` if it is neither).
fn socket_address(addr: &str) -> Option<t::SocketAddress> {
    let a: std::net::SocketAddr = addr.parse().ok()?;
    let ip = match a.ip() {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            t::IpAddress::Ipv4((a, b, c, d))
        }
        std::net::IpAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.segments();
            t::IpAddress::Ipv6((a, b, c, d, e, f, g, h))
        }
    };
    Some(t::SocketAddress { ip, port: a.port() })
}

/// `identity`, then the facts of `i` named by `fields` and the attributes named by `keys`,
/// appended to `out`.
fn identity_facts(
    i: &Identity,
    fields: t::IdentityFields,
    keys: &[String],
    out: &mut Vec<t::Fact>,
) {
    use t::{Fact, IdentityFields as F};
    let has = |f: F| fields.contains(f);
    out.push(Fact::Identity);
    if has(F::SUBJECT) {
        out.push(Fact::Subject(i.subject.clone()));
    }
    if has(F::METHOD) {
        out.push(Fact::IdentityMethod(i.method.clone()));
    }
    if has(F::GROUPS) {
        out.push(Fact::Groups(i.groups.clone()));
    }
    if has(F::ATTRIBUTES) {
        out.extend(i.attributes.iter().cloned().map(Fact::Attribute));
    } else {
        for k in keys {
            if let Some(v) = i.attribute(k) {
                out.push(Fact::Attribute((k.clone(), v.to_string())));
            }
        }
    }
    if has(F::ROLES) {
        out.push(Fact::Roles(i.roles.clone()));
    }
    if has(F::SCOPES) {
        out.push(Fact::IdentityScopes(i.scopes.clone()));
    }
    if has(F::EXPIRES_AT_MS)
        && let Some(at) = i.expires_at_ms
    {
        out.push(Fact::ExpiresAtMs(at));
    }
    if has(F::SKIP_PAIRING) {
        out.push(Fact::SkipPairing(i.skip_pairing));
    }
}

// === impl `types` ===

impl t::Host for StoreState {}

impl t::HostCredentials for StoreState {
    fn method(&mut self, this: Resource<Credentials>) -> wasmtime::Result<String> {
        let r = expect_handle!(self.handles, this.rep(), Credentials);
        Ok(r.credentials.method.clone())
    }

    fn token(
        &mut self,
        this: Resource<Credentials>,
    ) -> wasmtime::Result<Result<String, t::SecretError>> {
        let granted = self.grants.read_credentials;
        let r = expect_handle!(self.handles, this.rep(), Credentials);
        Ok(secret(granted, r.credentials.token.as_ref()).map_err(secret_error))
    }

    fn device_token(
        &mut self,
        this: Resource<Credentials>,
    ) -> wasmtime::Result<Result<String, t::SecretError>> {
        let granted = self.grants.read_credentials;
        let r = expect_handle!(self.handles, this.rep(), Credentials);
        Ok(secret(granted, r.credentials.device_token.as_ref()).map_err(secret_error))
    }

    fn drop(&mut self, this: Resource<Credentials>) -> wasmtime::Result<()> {
        self.handles.remove(this.rep())?;
        Ok(())
    }
}

fn secret_error(e: SecretError) -> t::SecretError {
    match e {
        SecretError::NotGranted => t::SecretError::NotGranted,
        SecretError::Absent => t::SecretError::Absent,
    }
}

// === impl `host` ===

impl h::Host for StoreState {
    fn log(&mut self, level: h::LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            h::LogLevel::Trace => LogLevel::Trace,
            h::LogLevel::Debug => LogLevel::Debug,
            h::LogLevel::Info => LogLevel::Info,
            h::LogLevel::Warn => LogLevel::Warn,
            h::LogLevel::Error => LogLevel::Error,
        };
        self.plugin_log(level, &message);
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(StoreState::now_ms(self))
    }

    fn read_request(&mut self, fields: t::RequestFields) -> wasmtime::Result<Vec<t::Fact>> {
        let mut out = Vec::new();
        request_facts(&self.call()?.request, fields, &mut out)?;
        Ok(out)
    }

    fn read_so_far(
        &mut self,
        fields: t::IdentityFields,
        attributes: Vec<String>,
    ) -> wasmtime::Result<Vec<t::Fact>> {
        keys("read-so-far attributes", &attributes, MAX_KEYS).map_err(wasmtime::Error::msg)?;
        let mut out = Vec::new();
        if let Some(id) = self.call()?.so_far.as_deref() {
            identity_facts(id, fields, &attributes, &mut out);
        }
        Ok(out)
    }

    fn presented_credentials(&mut self) -> wasmtime::Result<Resource<Credentials>> {
        let request = self.call()?.request.clone();
        let rep = self.handles.push(Handle::Credentials(request))?;
        Ok(Resource::new_own(rep))
    }

    async fn token_review(
        &mut self,
        spec: t::ReviewSpec,
    ) -> wasmtime::Result<Result<t::Review, t::ReviewError>> {
        review_spec("token-review", &spec).map_err(wasmtime::Error::msg)?;
        self.review_v0_3(ReviewKind::TokenReview, &spec).await
    }

    async fn verify_jwt(
        &mut self,
        spec: t::ReviewSpec,
    ) -> wasmtime::Result<Result<t::Review, t::ReviewError>> {
        review_spec("verify-jwt", &spec).map_err(wasmtime::Error::msg)?;
        self.review_v0_3(ReviewKind::LocalJwt, &spec).await
    }
}

impl StoreState {
    /// A review of the current call's bearer token for a 0.3 plugin; the review is kept as
    /// the call's last (for `allow-reviewed`).
    async fn review_v0_3(
        &mut self,
        kind: ReviewKind,
        spec: &t::ReviewSpec,
    ) -> wasmtime::Result<Result<t::Review, t::ReviewError>> {
        let request: Arc<Request> = self.call()?.request.clone();
        let Some(token) = request.credentials.token.as_deref() else {
            return Ok(Err(t::ReviewError::Failed(
                "the peer presented no bearer token".into(),
            )));
        };
        Ok(match self.review(kind, token, &spec.audiences).await {
            Ok(review) => Ok(review_record(&*review, spec)),
            Err(e) => Err(match e {
                ReviewError::NotConfigured(m) => t::ReviewError::NotConfigured(m),
                ReviewError::Unavailable(m) => t::ReviewError::Unavailable(m),
                ReviewError::Forbidden(m) => t::ReviewError::Forbidden(m),
                ReviewError::Failed(m) => t::ReviewError::Failed(m),
            }),
        })
    }
}

/// A review as the record a 0.3 plugin reads: what every plugin decides on, and what `spec`
/// asks for besides.
fn review_record(r: &dyn Review, spec: &t::ReviewSpec) -> t::Review {
    use t::ReviewFields as F;
    let asked = |f: F| spec.fields.contains(f);
    let mut present = 0u32;
    for (i, k) in spec.extra.iter().enumerate() {
        if r.extra(k).is_some_and(|v| !v.is_empty()) {
            present |= 1 << i;
        }
    }
    t::Review {
        authenticated: r.authenticated(),
        audience_matched: !r.audiences().is_empty(),
        error: r.error().map(str::to_string),
        username: r.username().to_string(),
        extra_present: present,
        expires_at_ms: r.expires_at_ms(),
        uid: asked(F::UID).then(|| r.uid().to_string()),
        groups: asked(F::GROUPS).then(|| r.groups().to_vec()),
        audiences: asked(F::AUDIENCES).then(|| r.audiences().to_vec()),
        extra: asked(F::EXTRA_VALUES).then(|| {
            spec.extra
                .iter()
                .map(|k| r.extra(k).and_then(<[String]>::first).cloned())
                .collect()
        }),
        cluster: asked(F::CLUSTER).then(|| r.cluster().to_string()),
    }
}

// === Decisions ===

fn decision(
    d: t::Decision,
    template: Option<&t::IdentityTemplate>,
    state: &StoreState,
) -> wasmtime::Result<Decision> {
    Ok(match d {
        t::Decision::Allow(e) => Decision::Allow(Identity {
            subject: e.subject,
            method: e.method,
            groups: e.groups,
            attributes: e.attributes,
            roles: e.roles,
            scopes: e.scopes,
            expires_at_ms: e.expires_at_ms,
            skip_pairing: e.skip_pairing,
        }),
        t::Decision::AllowReviewed(r) => Decision::Allow(reviewed(r, template, state)?),
        t::Decision::Permit(n) => Decision::Permit(Narrowing {
            roles: n.roles,
            scopes: n.scopes,
            attributes: n.attributes,
            expires_at_ms: n.expires_at_ms,
            veto_skip_pairing: n.veto_skip_pairing,
        }),
        t::Decision::Deny(d) => Decision::Deny(Denial {
            code: match d.code {
                t::DenyCode::Unauthenticated => DenyCode::Unauthenticated,
                t::DenyCode::Forbidden => DenyCode::Forbidden,
                t::DenyCode::Unavailable => DenyCode::Unavailable,
                t::DenyCode::RateLimited => DenyCode::RateLimited,
            },
            reason: d.reason,
            message: d.message,
            retry_after_ms: d.retry_after_ms,
        }),
        t::Decision::Abstain | t::Decision::Fail(_) => Decision::Abstain,
    })
}

/// The identity of `allow-reviewed`, formed from the call's last review by the template,
/// natively: what the plugin did not decide on never crossed the boundary twice.
fn reviewed(
    r: t::Reviewed,
    template: Option<&t::IdentityTemplate>,
    state: &StoreState,
) -> wasmtime::Result<Identity> {
    let Some(template) = template else {
        wasmtime::bail!("allow-reviewed without an identity template in `wants`");
    };
    let review = match state.last_review() {
        Some(review) if review.authenticated() => review,
        _ => wasmtime::bail!("allow-reviewed without an authenticated review in this call"),
    };
    let mut attributes =
        Vec::with_capacity(r.attributes.len() + template.extra_attributes.len() + 2);
    if let Some(attr) = &template.uid_attribute {
        attributes.push((attr.clone(), review.uid().to_string()));
    }
    for (key, attr) in &template.extra_attributes {
        if let Some(v) = review.extra(key).and_then(<[String]>::first) {
            attributes.push((attr.clone(), v.clone()));
        }
    }
    if let Some(attr) = &template.cluster_attribute {
        attributes.push((attr.clone(), review.cluster().to_string()));
    }
    for (k, v) in r.attributes {
        if !attributes.iter().any(|(have, _)| *have == k) {
            attributes.push((k, v));
        }
    }
    Ok(Identity {
        subject: review.username().to_string(),
        method: template.method.clone(),
        groups: if template.groups {
            review.groups().to_vec()
        } else {
            Vec::new()
        },
        attributes,
        roles: r.roles,
        scopes: r.scopes,
        expires_at_ms: review.expires_at_ms(),
        skip_pairing: r.skip_pairing,
    })
}
