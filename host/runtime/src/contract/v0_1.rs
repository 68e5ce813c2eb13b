//! `trustgate:auth@0.1.0` (deprecated), host side: the request and the identity copied in as
//! records, tokens included (0.1 has no grant), reviews copied out.

use std::sync::Arc;

use wasmtime::Store;

use crate::bindings::v0_1::trustgate::auth::host as h;
use crate::bindings::v0_1::trustgate::auth::types as t;
use crate::bindings::v0_1::{AuthPlugin, AuthPluginPre};
use crate::chain::Call;
use crate::sandbox::{ReviewKind, StoreState};
use crate::types::{Decision, Denial, DenyCode, Identity, LogLevel, Request, Review, ReviewError};

/// One configured 0.1 instance.
pub(crate) struct Instance(AuthPlugin);

impl Instance {
    pub(crate) async fn instantiate(
        pre: &AuthPluginPre<StoreState>,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Self> {
        Ok(Self(pre.instantiate_async(store).await?))
    }

    pub(crate) async fn configure(
        &mut self,
        store: &mut Store<StoreState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        self.0
            .trustgate_auth_plugin()
            .call_configure(store, config)
            .await
    }

    pub(crate) async fn authenticate(
        &self,
        store: &mut Store<StoreState>,
        call: &Call,
    ) -> wasmtime::Result<Decision> {
        let request = request(&call.request);
        let so_far = call.so_far.as_deref().map(identity);
        let d = self
            .0
            .trustgate_auth_plugin()
            .call_authenticate(store, &request, so_far.as_ref())
            .await?;
        Ok(decision(d))
    }
}

impl t::Host for StoreState {}

impl h::Host for StoreState {
    async fn log(&mut self, level: h::LogLevel, message: String) {
        let level = match level {
            h::LogLevel::Trace => LogLevel::Trace,
            h::LogLevel::Debug => LogLevel::Debug,
            h::LogLevel::Info => LogLevel::Info,
            h::LogLevel::Warn => LogLevel::Warn,
            h::LogLevel::Error => LogLevel::Error,
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
    ) -> Result<h::TokenReviewStatus, h::ReviewError> {
        self.review_v0_1(ReviewKind::TokenReview, &token, &audiences)
            .await
    }

    async fn verify_jwt(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<h::TokenReviewStatus, h::ReviewError> {
        self.review_v0_1(ReviewKind::LocalJwt, &token, &audiences)
            .await
    }
}

impl StoreState {
    /// 0.1 has no trappable imports: audiences over the bound fail the review instead.
    async fn review_v0_1(
        &mut self,
        kind: ReviewKind,
        token: &str,
        audiences: &[String],
    ) -> Result<h::TokenReviewStatus, h::ReviewError> {
        if let Err(why) = super::keys("audiences", audiences, super::MAX_AUDIENCES) {
            return Err(h::ReviewError::Failed(why));
        }
        review(self.review(kind, token, audiences).await)
    }
}

fn review(r: Result<Arc<dyn Review>, ReviewError>) -> Result<h::TokenReviewStatus, h::ReviewError> {
    match r {
        Ok(r) => Ok(h::TokenReviewStatus {
            authenticated: r.authenticated(),
            user: h::UserInfo {
                username: r.username().to_string(),
                uid: r.uid().to_string(),
                groups: r.groups().to_vec(),
                extra: r.extras(),
            },
            audiences: r.audiences().to_vec(),
            error: r.error().map(str::to_string),
            expires_at_ms: r.expires_at_ms(),
        }),
        Err(ReviewError::NotConfigured(m)) => Err(h::ReviewError::NotConfigured(m)),
        Err(ReviewError::Unavailable(m)) => Err(h::ReviewError::Unavailable(m)),
        Err(ReviewError::Forbidden(m)) => Err(h::ReviewError::Forbidden(m)),
        Err(ReviewError::Failed(m)) => Err(h::ReviewError::Failed(m)),
    }
}

/// The 0.1 request record: everything copied, tokens included (0.1 has no grant).
fn request(r: &Request) -> t::Request {
    t::Request {
        credentials: t::Credentials {
            method: r.credentials.method.clone(),
            token: r.credentials.token.clone(),
            device_token: r.credentials.device_token.clone(),
        },
        device: r.device.as_ref().map(|d| t::Device {
            id: d.id.clone(),
            public_key: d.public_key.clone(),
        }),
        peer: t::Peer {
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
fn identity(i: &Identity) -> t::Identity {
    t::Identity {
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

/// A 0.1 decision in the runtime's terms. Under 0.1 a later `allow` repeats the identity; the
/// chain treats it as a narrowing allow, exactly as 0.1 specified.
fn decision(d: t::Decision) -> Decision {
    match d {
        t::Decision::Allow(i) => Decision::Allow(Identity {
            subject: i.subject,
            method: i.method,
            groups: i.groups,
            attributes: i.attributes,
            roles: i.roles,
            scopes: i.scopes,
            expires_at_ms: i.expires_at_ms,
            skip_pairing: i.skip_pairing,
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
        t::Decision::Abstain => Decision::Abstain,
    }
}
