//! `trustgate:auth@0.2.0`, host side: the request and the identity so far lent as handles for
//! each call, credentials and reviews as handles the plugin creates, one fact per crossing.

use wasmtime::Store;
use wasmtime::component::Resource;

use crate::bindings::v0_2::trustgate::auth::host as h;
use crate::bindings::v0_2::trustgate::auth::types as t;
use crate::bindings::v0_2::{AuthPlugin, AuthPluginPre};
use crate::chain::Call;
use crate::handles::{Credentials, Handle, IdentityRes, RequestRes, ReviewRes, expect_handle};
use crate::sandbox::{ReviewKind, StoreState};
use crate::types::{Decision, Denial, DenyCode, Identity, LogLevel, Narrowing, ReviewError};

use super::{SecretError, secret};

/// One configured 0.2 instance.
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

    /// Lends the request (and the identity so far) for the call; the handles go when the call
    /// ends (`StoreState::end_call`).
    pub(crate) async fn authenticate(
        &self,
        store: &mut Store<StoreState>,
        call: &Call,
    ) -> wasmtime::Result<Decision> {
        let handles = &mut store.data_mut().handles;
        let request = handles.push(Handle::Request(call.request.clone()))?;
        let so_far = match &call.so_far {
            Some(id) => Some(handles.push(Handle::Identity(id.clone()))?),
            None => None,
        };
        let d = self
            .0
            .trustgate_auth_plugin()
            .call_authenticate(
                store,
                Resource::new_borrow(request),
                so_far.map(Resource::new_borrow),
            )
            .await?;
        Ok(decision(d))
    }
}

// === impl `types` ===

impl t::Host for StoreState {}

impl t::HostRequest for StoreState {
    fn role(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Request)
            .role
            .clone())
    }

    fn scopes(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<Vec<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Request)
            .scopes
            .clone())
    }

    fn method(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Request)
            .credentials
            .method
            .clone())
    }

    fn credentials(
        &mut self,
        this: Resource<RequestRes>,
    ) -> wasmtime::Result<Resource<Credentials>> {
        let request = expect_handle!(self.handles, this.rep(), Request).clone();
        let rep = self.handles.push(Handle::Credentials(request))?;
        Ok(Resource::new_own(rep))
    }

    fn remote_addr(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Request)
            .peer
            .remote_addr
            .clone())
    }

    fn tls(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<bool> {
        Ok(expect_handle!(self.handles, this.rep(), Request).peer.tls)
    }

    fn client(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<t::Client> {
        let peer = &expect_handle!(self.handles, this.rep(), Request).peer;
        Ok(t::Client {
            id: peer.client_id.clone(),
            version: peer.client_version.clone(),
            platform: peer.platform.clone(),
            instance_id: peer.instance_id.clone(),
        })
    }

    fn conn_id(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Request)
            .peer
            .conn_id
            .clone())
    }

    fn device(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<Option<t::Device>> {
        Ok(expect_handle!(self.handles, this.rep(), Request)
            .device
            .as_ref()
            .map(|d| t::Device {
                id: d.id.clone(),
                public_key: d.public_key.clone(),
            }))
    }

    fn drop(&mut self, this: Resource<RequestRes>) -> wasmtime::Result<()> {
        self.handles.remove(this.rep())?;
        Ok(())
    }
}

impl t::HostCredentials for StoreState {
    fn method(&mut self, this: Resource<Credentials>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Credentials)
            .credentials
            .method
            .clone())
    }

    fn has_token(&mut self, this: Resource<Credentials>) -> wasmtime::Result<bool> {
        Ok(expect_handle!(self.handles, this.rep(), Credentials)
            .credentials
            .token
            .is_some())
    }

    fn has_device_token(&mut self, this: Resource<Credentials>) -> wasmtime::Result<bool> {
        Ok(expect_handle!(self.handles, this.rep(), Credentials)
            .credentials
            .device_token
            .is_some())
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

impl t::HostIdentity for StoreState {
    fn subject(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .subject
            .clone())
    }

    fn method(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .method
            .clone())
    }

    fn groups(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<Vec<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .groups
            .clone())
    }

    fn in_group(&mut self, this: Resource<IdentityRes>, group: String) -> wasmtime::Result<bool> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .groups
            .contains(&group))
    }

    fn attribute(
        &mut self,
        this: Resource<IdentityRes>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .attribute(&key)
            .map(str::to_string))
    }

    fn attributes(
        &mut self,
        this: Resource<IdentityRes>,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .attributes
            .clone())
    }

    fn roles(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<Vec<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .roles
            .clone())
    }

    fn scopes(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<Vec<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Identity)
            .scopes
            .clone())
    }

    fn expires_at_ms(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<Option<u64>> {
        Ok(expect_handle!(self.handles, this.rep(), Identity).expires_at_ms)
    }

    fn skip_pairing(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<bool> {
        Ok(expect_handle!(self.handles, this.rep(), Identity).skip_pairing)
    }

    fn drop(&mut self, this: Resource<IdentityRes>) -> wasmtime::Result<()> {
        self.handles.remove(this.rep())?;
        Ok(())
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

    async fn token_review(
        &mut self,
        credentials: Resource<Credentials>,
        audiences: Vec<String>,
    ) -> wasmtime::Result<Result<Resource<ReviewRes>, h::ReviewError>> {
        self.review_v0_2(credentials, audiences, ReviewKind::TokenReview)
            .await
    }

    async fn verify_jwt(
        &mut self,
        credentials: Resource<Credentials>,
        audiences: Vec<String>,
    ) -> wasmtime::Result<Result<Resource<ReviewRes>, h::ReviewError>> {
        self.review_v0_2(credentials, audiences, ReviewKind::LocalJwt)
            .await
    }
}

impl StoreState {
    async fn review_v0_2(
        &mut self,
        credentials: Resource<Credentials>,
        audiences: Vec<String>,
        kind: ReviewKind,
    ) -> wasmtime::Result<Result<Resource<ReviewRes>, h::ReviewError>> {
        super::keys("audiences", &audiences, super::MAX_AUDIENCES).map_err(wasmtime::Error::msg)?;
        let request = expect_handle!(self.handles, credentials.rep(), Credentials).clone();
        let Some(token) = request.credentials.token.as_deref() else {
            return Ok(Err(h::ReviewError::Failed(
                "the peer presented no bearer token".into(),
            )));
        };
        match self.review(kind, token, &audiences).await {
            Ok(review) => {
                let rep = self.handles.push(Handle::Review(review))?;
                Ok(Ok(Resource::new_own(rep)))
            }
            Err(e) => Ok(Err(match e {
                ReviewError::NotConfigured(m) => h::ReviewError::NotConfigured(m),
                ReviewError::Unavailable(m) => h::ReviewError::Unavailable(m),
                ReviewError::Forbidden(m) => h::ReviewError::Forbidden(m),
                ReviewError::Failed(m) => h::ReviewError::Failed(m),
            })),
        }
    }
}

impl h::HostReview for StoreState {
    fn authenticated(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<bool> {
        Ok(expect_handle!(self.handles, this.rep(), Review).authenticated())
    }

    fn error(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<Option<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Review)
            .error()
            .map(str::to_string))
    }

    fn username(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Review)
            .username()
            .to_string())
    }

    fn uid(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<String> {
        Ok(expect_handle!(self.handles, this.rep(), Review)
            .uid()
            .to_string())
    }

    fn groups(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<Vec<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Review)
            .groups()
            .to_vec())
    }

    fn audiences(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<Vec<String>> {
        Ok(expect_handle!(self.handles, this.rep(), Review)
            .audiences()
            .to_vec())
    }

    fn extra(
        &mut self,
        this: Resource<ReviewRes>,
        key: String,
    ) -> wasmtime::Result<Option<Vec<String>>> {
        Ok(expect_handle!(self.handles, this.rep(), Review)
            .extra(&key)
            .map(<[String]>::to_vec))
    }

    fn expires_at_ms(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<Option<u64>> {
        Ok(expect_handle!(self.handles, this.rep(), Review).expires_at_ms())
    }

    fn drop(&mut self, this: Resource<ReviewRes>) -> wasmtime::Result<()> {
        self.handles.remove(this.rep())?;
        Ok(())
    }
}

// === Decisions ===

fn decision(d: t::Decision) -> Decision {
    match d {
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
        t::Decision::Abstain => Decision::Abstain,
    }
}
