//! The contract, host side: the 0.2 resources and what stands behind them, the 0.1 records,
//! and the conversions between both contract versions and the runtime's own types. What a
//! plugin hands back is checked against the contract's limits (`bounds.rs`) before anything
//! else sees it.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::bindings::{v0_1, v0_2};
use crate::sandbox::{ReviewKind, StoreState};
use crate::types::{
    Decision, Denial, DenyCode, Identity, LogLevel, Narrowing, Request, Review, ReviewError,
};

/// Most handles (credentials, reviews) one call may create; a plugin asking for more traps.
pub(crate) const MAX_HANDLES_PER_CALL: usize = 64;

// === The handles behind the 0.2 resources ===

/// `request`: lent to the guest for one call.
pub struct RequestHandle(pub(crate) Arc<Request>);

/// `credentials`: the request's credentials, opaque unless the plugin holds the grant.
pub struct CredentialsHandle(pub(crate) Arc<Request>);

/// `identity`: the identity so far, lent to the guest for one call.
pub struct IdentityHandle(pub(crate) Arc<Identity>);

/// `review`: what a verification found, read on demand.
pub struct ReviewHandle(pub(crate) Arc<dyn Review>);

// === impl 0.2 `types` ===

use v0_2::trustgate::auth::types as t2;

impl t2::Host for StoreState {}

impl t2::HostRequest for StoreState {
    fn role(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.role.clone())
    }

    fn scopes(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.0.scopes.clone())
    }

    fn method(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.credentials.method.clone())
    }

    fn credentials(
        &mut self,
        this: Resource<RequestHandle>,
    ) -> wasmtime::Result<Resource<CredentialsHandle>> {
        let request = self.table.get(&this)?.0.clone();
        let handle = self.table.push(CredentialsHandle(request))?;
        self.track(handle.rep(), Tracked::Credentials)?;
        Ok(handle)
    }

    fn remote_addr(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.peer.remote_addr.clone())
    }

    fn tls(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.0.peer.tls)
    }

    fn client(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<t2::Client> {
        let peer = &self.table.get(&this)?.0.peer;
        Ok(t2::Client {
            id: peer.client_id.clone(),
            version: peer.client_version.clone(),
            platform: peer.platform.clone(),
            instance_id: peer.instance_id.clone(),
        })
    }

    fn conn_id(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.peer.conn_id.clone())
    }

    fn device(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<Option<t2::Device>> {
        Ok(self
            .table
            .get(&this)?
            .0
            .device
            .as_ref()
            .map(|d| t2::Device {
                id: d.id.clone(),
                public_key: d.public_key.clone(),
            }))
    }

    fn drop(&mut self, this: Resource<RequestHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl t2::HostCredentials for StoreState {
    fn method(&mut self, this: Resource<CredentialsHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.credentials.method.clone())
    }

    fn has_token(&mut self, this: Resource<CredentialsHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.0.credentials.token.is_some())
    }

    fn has_device_token(&mut self, this: Resource<CredentialsHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.0.credentials.device_token.is_some())
    }

    fn token(
        &mut self,
        this: Resource<CredentialsHandle>,
    ) -> wasmtime::Result<Result<String, t2::SecretError>> {
        let granted = self.grants.read_credentials;
        let c = &self.table.get(&this)?.0.credentials;
        Ok(secret(granted, c.token.as_ref()))
    }

    fn device_token(
        &mut self,
        this: Resource<CredentialsHandle>,
    ) -> wasmtime::Result<Result<String, t2::SecretError>> {
        let granted = self.grants.read_credentials;
        let c = &self.table.get(&this)?.0.credentials;
        Ok(secret(granted, c.device_token.as_ref()))
    }

    fn drop(&mut self, this: Resource<CredentialsHandle>) -> wasmtime::Result<()> {
        self.untrack(this.rep());
        self.table.delete(this)?;
        Ok(())
    }
}

/// A secret, only with the grant. Without it the answer is `not-granted` whether or not the
/// peer presented one, so an ungranted plugin learns nothing from the error either (it can ask
/// `has-token` for that).
fn secret(granted: bool, value: Option<&String>) -> Result<String, t2::SecretError> {
    match (granted, value) {
        (false, _) => Err(t2::SecretError::NotGranted),
        (true, None) => Err(t2::SecretError::Absent),
        (true, Some(v)) => Ok(v.clone()),
    }
}

impl t2::HostIdentity for StoreState {
    fn subject(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.subject.clone())
    }

    fn method(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.method.clone())
    }

    fn groups(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.0.groups.clone())
    }

    fn in_group(
        &mut self,
        this: Resource<IdentityHandle>,
        group: String,
    ) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.0.groups.contains(&group))
    }

    fn attribute(
        &mut self,
        this: Resource<IdentityHandle>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&this)?.0.attribute(&key).map(str::to_string))
    }

    fn attributes(
        &mut self,
        this: Resource<IdentityHandle>,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.table.get(&this)?.0.attributes.clone())
    }

    fn roles(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.0.roles.clone())
    }

    fn scopes(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.0.scopes.clone())
    }

    fn expires_at_ms(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<Option<u64>> {
        Ok(self.table.get(&this)?.0.expires_at_ms)
    }

    fn skip_pairing(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.0.skip_pairing)
    }

    fn drop(&mut self, this: Resource<IdentityHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

// === impl 0.2 `host` ===

use v0_2::trustgate::auth::host as h2;

impl h2::Host for StoreState {
    fn log(&mut self, level: h2::LogLevel, message: String) -> wasmtime::Result<()> {
        let level = match level {
            h2::LogLevel::Trace => LogLevel::Trace,
            h2::LogLevel::Debug => LogLevel::Debug,
            h2::LogLevel::Info => LogLevel::Info,
            h2::LogLevel::Warn => LogLevel::Warn,
            h2::LogLevel::Error => LogLevel::Error,
        };
        self.plugin_log(level, &message);
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(StoreState::now_ms(self))
    }

    async fn token_review(
        &mut self,
        credentials: Resource<CredentialsHandle>,
        audiences: Vec<String>,
    ) -> wasmtime::Result<Result<Resource<ReviewHandle>, h2::ReviewError>> {
        self.review_v0_2(credentials, audiences, ReviewKind::TokenReview)
            .await
    }

    async fn verify_jwt(
        &mut self,
        credentials: Resource<CredentialsHandle>,
        audiences: Vec<String>,
    ) -> wasmtime::Result<Result<Resource<ReviewHandle>, h2::ReviewError>> {
        self.review_v0_2(credentials, audiences, ReviewKind::LocalJwt)
            .await
    }
}

impl StoreState {
    async fn review_v0_2(
        &mut self,
        credentials: Resource<CredentialsHandle>,
        audiences: Vec<String>,
        kind: ReviewKind,
    ) -> wasmtime::Result<Result<Resource<ReviewHandle>, h2::ReviewError>> {
        let request = self.table.get(&credentials)?.0.clone();
        let Some(token) = request.credentials.token.as_deref() else {
            return Ok(Err(h2::ReviewError::Failed(
                "the peer presented no bearer token".into(),
            )));
        };
        match self.review(kind, token, &audiences).await {
            Ok(review) => {
                let handle = self.table.push(ReviewHandle(review))?;
                self.track(handle.rep(), Tracked::Review)?;
                Ok(Ok(handle))
            }
            Err(e) => Ok(Err(match e {
                ReviewError::NotConfigured(m) => h2::ReviewError::NotConfigured(m),
                ReviewError::Unavailable(m) => h2::ReviewError::Unavailable(m),
                ReviewError::Forbidden(m) => h2::ReviewError::Forbidden(m),
                ReviewError::Failed(m) => h2::ReviewError::Failed(m),
            })),
        }
    }
}

impl h2::HostReview for StoreState {
    fn authenticated(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.0.authenticated())
    }

    fn error(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&this)?.0.error().map(str::to_string))
    }

    fn username(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.username().to_string())
    }

    fn uid(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.0.uid().to_string())
    }

    fn groups(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.0.groups().to_vec())
    }

    fn audiences(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.0.audiences().to_vec())
    }

    fn extra(
        &mut self,
        this: Resource<ReviewHandle>,
        key: String,
    ) -> wasmtime::Result<Option<Vec<String>>> {
        Ok(self.table.get(&this)?.0.extra(&key).map(<[String]>::to_vec))
    }

    fn expires_at_ms(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<Option<u64>> {
        Ok(self.table.get(&this)?.0.expires_at_ms())
    }

    fn drop(&mut self, this: Resource<ReviewHandle>) -> wasmtime::Result<()> {
        self.untrack(this.rep());
        self.table.delete(this)?;
        Ok(())
    }
}

/// What kind of handle a call created (so its leftovers can be removed after the call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tracked {
    Credentials,
    Review,
}

impl StoreState {
    /// Records a handle created during the current call; refuses past the per-call bound.
    fn track(&mut self, rep: u32, kind: Tracked) -> wasmtime::Result<()> {
        if self.handles.len() >= MAX_HANDLES_PER_CALL {
            wasmtime::bail!(
                "the plugin holds more than {MAX_HANDLES_PER_CALL} handles in one call"
            );
        }
        self.handles.push((rep, kind));
        Ok(())
    }

    fn untrack(&mut self, rep: u32) {
        self.handles.retain(|(r, _)| *r != rep);
    }

    /// Removes every handle the call created and the guest did not drop, so a plugin cannot
    /// grow the host's table (or keep a peer's credentials) across calls.
    pub(crate) fn release_handles(&mut self) {
        for (rep, kind) in std::mem::take(&mut self.handles) {
            let _ = match kind {
                Tracked::Credentials => self
                    .table
                    .delete(Resource::<CredentialsHandle>::new_own(rep))
                    .map(|_| ()),
                Tracked::Review => self
                    .table
                    .delete(Resource::<ReviewHandle>::new_own(rep))
                    .map(|_| ()),
            };
        }
    }
}

// === impl 0.1 `host` (records copied in and out) ===

use v0_1::trustgate::auth::host as h1;
use v0_1::trustgate::auth::types as t1;

impl t1::Host for StoreState {}

impl h1::Host for StoreState {
    async fn log(&mut self, level: h1::LogLevel, message: String) {
        let level = match level {
            h1::LogLevel::Trace => LogLevel::Trace,
            h1::LogLevel::Debug => LogLevel::Debug,
            h1::LogLevel::Info => LogLevel::Info,
            h1::LogLevel::Warn => LogLevel::Warn,
            h1::LogLevel::Error => LogLevel::Error,
        };
        self.plugin_log(level, &message);
    }

    async fn now_ms(&mut self) -> u64 {
        StoreState::now_ms(self)
    }

    async fn token_review(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<h1::TokenReviewStatus, h1::ReviewError> {
        review_v0_1(
            self.review(ReviewKind::TokenReview, &token, &audiences)
                .await,
        )
    }

    async fn verify_jwt(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<h1::TokenReviewStatus, h1::ReviewError> {
        review_v0_1(self.review(ReviewKind::LocalJwt, &token, &audiences).await)
    }
}

fn review_v0_1(
    r: Result<Arc<dyn Review>, ReviewError>,
) -> Result<h1::TokenReviewStatus, h1::ReviewError> {
    match r {
        Ok(r) => Ok(h1::TokenReviewStatus {
            authenticated: r.authenticated(),
            user: h1::UserInfo {
                username: r.username().to_string(),
                uid: r.uid().to_string(),
                groups: r.groups().to_vec(),
                extra: r.extras(),
            },
            audiences: r.audiences().to_vec(),
            error: r.error().map(str::to_string),
            expires_at_ms: r.expires_at_ms(),
        }),
        Err(ReviewError::NotConfigured(m)) => Err(h1::ReviewError::NotConfigured(m)),
        Err(ReviewError::Unavailable(m)) => Err(h1::ReviewError::Unavailable(m)),
        Err(ReviewError::Forbidden(m)) => Err(h1::ReviewError::Forbidden(m)),
        Err(ReviewError::Failed(m)) => Err(h1::ReviewError::Failed(m)),
    }
}

/// The 0.1 request record: everything copied, tokens included (0.1 has no grant).
pub(crate) fn request_v0_1(r: &Request) -> t1::Request {
    t1::Request {
        credentials: t1::Credentials {
            method: r.credentials.method.clone(),
            token: r.credentials.token.clone(),
            device_token: r.credentials.device_token.clone(),
        },
        device: r.device.as_ref().map(|d| t1::Device {
            id: d.id.clone(),
            public_key: d.public_key.clone(),
        }),
        peer: t1::Peer {
            remote_addr: r.peer.remote_addr.clone(),
            tls: r.peer.tls,
            client_id: r.peer.client_id.clone(),
            client_version: r.peer.client_version.clone(),
            platform: r.peer.platform.clone(),
            conn_id: r.peer.conn_id.clone(),
        },
        role: r.role.clone(),
        scopes: r.scopes.clone(),
    }
}

/// The 0.1 identity record.
pub(crate) fn identity_v0_1(i: &Identity) -> t1::Identity {
    t1::Identity {
        subject: i.subject.clone(),
        method: i.method.clone(),
        groups: i.groups.clone(),
        attributes: i.attributes.clone(),
        roles: i.roles.clone(),
        scopes: i.scopes.clone(),
        expires_at_ms: i.expires_at_ms,
        skip_pairing: i.skip_pairing,
    }
}

// === Decisions, from either version ===

/// A 0.1 decision in the runtime's terms. Under 0.1 a later `allow` repeats the identity; the
/// chain treats it as a narrowing allow, exactly as 0.1 specified.
pub(crate) fn decision_v0_1(d: t1::Decision) -> Decision {
    match d {
        t1::Decision::Allow(i) => Decision::Allow(Identity {
            subject: i.subject,
            method: i.method,
            groups: i.groups,
            attributes: i.attributes,
            roles: i.roles,
            scopes: i.scopes,
            expires_at_ms: i.expires_at_ms,
            skip_pairing: i.skip_pairing,
        }),
        t1::Decision::Deny(d) => Decision::Deny(Denial {
            code: match d.code {
                t1::DenyCode::Unauthenticated => DenyCode::Unauthenticated,
                t1::DenyCode::Forbidden => DenyCode::Forbidden,
                t1::DenyCode::Unavailable => DenyCode::Unavailable,
                t1::DenyCode::RateLimited => DenyCode::RateLimited,
            },
            reason: d.reason,
            message: d.message,
            retry_after_ms: d.retry_after_ms,
        }),
        t1::Decision::Abstain => Decision::Abstain,
    }
}

/// A 0.2 decision in the runtime's terms.
pub(crate) fn decision_v0_2(d: t2::Decision) -> Decision {
    match d {
        t2::Decision::Allow(e) => Decision::Allow(Identity {
            subject: e.subject,
            method: e.method,
            groups: e.groups,
            attributes: e.attributes,
            roles: e.roles,
            scopes: e.scopes,
            expires_at_ms: e.expires_at_ms,
            skip_pairing: e.skip_pairing,
        }),
        t2::Decision::Permit(n) => Decision::Permit(Narrowing {
            roles: n.roles,
            scopes: n.scopes,
            attributes: n.attributes,
            expires_at_ms: n.expires_at_ms,
            veto_skip_pairing: n.veto_skip_pairing,
        }),
        t2::Decision::Deny(d) => Decision::Deny(Denial {
            code: match d.code {
                t2::DenyCode::Unauthenticated => DenyCode::Unauthenticated,
                t2::DenyCode::Forbidden => DenyCode::Forbidden,
                t2::DenyCode::Unavailable => DenyCode::Unavailable,
                t2::DenyCode::RateLimited => DenyCode::RateLimited,
            },
            reason: d.reason,
            message: d.message,
            retry_after_ms: d.retry_after_ms,
        }),
        t2::Decision::Abstain => Decision::Abstain,
    }
}
