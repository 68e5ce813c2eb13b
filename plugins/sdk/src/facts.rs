//! What a plugin reads, the same over every contract version: the request and the identity so
//! far as plain accessors over cells. Facts the call brought along (contract 0.3: those the
//! plugin declared in [`Wants`]; 0.1: all of them) are in their cells from the start; any
//! other is fetched from the gateway on first read by the contract's [`Source`] — under 0.3
//! every missing fact of the request (or of the identity) in one crossing, under 0.2 one fact
//! per crossing — and kept for the rest of the call.

use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};
use std::ops::BitOr;

use crate::{Client, Credentials, Device, Established, Review, ReviewError, Reviewed};

macro_rules! fields {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $flag:ident = $bit:expr,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name(u16);

        impl $name {
            $($(#[$fdoc])* pub const $flag: Self = Self(1 << $bit);)*
            /// No field.
            pub const NONE: Self = Self(0);
            /// Every field.
            pub const ALL: Self = Self(0 $(| (1 << $bit))*);

            /// Whether every field of `other` is in `self`.
            pub fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// The fields of `self` not in `other`.
            pub fn without(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }
        }

        impl BitOr for $name {
            type Output = Self;
            fn bitor(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }
        }

        impl std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, other: Self) {
                self.0 |= other.0;
            }
        }
    };
}

fields!(
    /// Facts of the request a plugin can declare (see [`Wants`]).
    RequestFields {
        /// [`Request::role`].
        ROLE = 0,
        /// [`Request::scopes`].
        SCOPES = 1,
        /// [`Request::method`].
        METHOD = 2,
        /// [`Request::remote_addr`] and [`Request::ip`].
        REMOTE = 3,
        /// [`Request::tls`].
        TLS = 4,
        /// [`Request::client`].
        CLIENT = 5,
        /// [`Request::conn_id`].
        CONN_ID = 6,
        /// [`Request::device`].
        DEVICE = 7,
        /// [`Request::has_token`] and [`Request::has_device_token`].
        PRESENTED = 8,
    }
);

fields!(
    /// Facts of the identity so far a plugin can declare (see [`Wants`]).
    IdentityFields {
        /// [`Identity::subject`].
        SUBJECT = 0,
        /// [`Identity::method`].
        METHOD = 1,
        /// [`Identity::groups`] and [`Identity::in_group`].
        GROUPS = 2,
        /// Every attribute ([`Identity::attributes`]); name single ones in
        /// [`Wants::attributes`] instead when only those are read.
        ATTRIBUTES = 3,
        /// [`Identity::roles`].
        ROLES = 4,
        /// [`Identity::scopes`].
        SCOPES = 5,
        /// [`Identity::expires_at_ms`].
        EXPIRES_AT_MS = 6,
        /// [`Identity::skip_pairing`].
        SKIP_PAIRING = 7,
    }
);

/// What a TokenReview or a JWT verification is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReviewSpec {
    /// The audiences the token must be valid for (one of them; at most 16).
    pub audiences: Vec<String>,
    /// The `extra` keys the plugin reads ([`Review::has_extra`]; at most 32).
    pub extra: Vec<String>,
    /// Whether the plugin reads their values too ([`Review::extra_first`]).
    pub extra_values: bool,
    /// Whether the plugin reads the review's uid.
    pub uid: bool,
    /// Whether the plugin reads the review's groups.
    pub groups: bool,
    /// Whether the plugin reads the audiences the token is valid for ([`Review::audiences`]).
    pub valid_audiences: bool,
    /// Whether the plugin reads the cluster that vouched for the token.
    pub cluster: bool,
}

/// A verification of the peer's bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A Kubernetes TokenReview (answered from the gateway's cache when possible).
    TokenReview(ReviewSpec),
    /// Local verification of a Kubernetes ServiceAccount JWT against its cluster's keys.
    KubernetesJwt(ReviewSpec),
}

/// How the gateway forms the identity of [`Decision::AllowReviewed`](crate::Decision) from
/// the call's review: its username is the subject and its expiry the identity's; the rest as
/// said here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityTemplate {
    /// The auth method the identity records.
    pub method: String,
    /// Whether the review's groups become the identity's groups.
    pub groups: bool,
    /// The attribute the review's uid becomes, if any.
    pub uid_attribute: Option<String>,
    /// `extra` keys whose first value becomes an attribute: (extra key, attribute).
    pub extra_attributes: Vec<(String, String)>,
    /// The attribute the review's cluster becomes, if any.
    pub cluster_attribute: Option<String>,
}

/// What a plugin decides on (see [`Plugin::wants`](crate::Plugin::wants)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// The auth methods the plugin decides on; other requests never reach it (at most 16;
    /// empty: all).
    pub methods: Vec<String>,
    /// Facts of the request.
    pub request: RequestFields,
    /// Facts of the identity so far.
    pub so_far: IdentityFields,
    /// Attributes of the identity so far read by key (at most 32).
    pub attributes: Vec<String>,
    /// The verification of the bearer token the gateway makes before each call.
    pub verification: Option<Verification>,
    /// How [`Decision::AllowReviewed`](crate::Decision) forms an identity.
    pub template: Option<IdentityTemplate>,
}

impl Wants {
    /// Decides only on requests with these auth methods.
    pub fn methods(mut self, methods: &[&str]) -> Self {
        self.methods = methods.iter().map(|m| m.to_string()).collect();
        self
    }

    /// Has the gateway verify the bearer token before each call.
    pub fn verify(mut self, verification: Verification) -> Self {
        self.verification = Some(verification);
        self
    }

    /// Declares how [`Decision::AllowReviewed`](crate::Decision) forms an identity.
    pub fn template(mut self, template: IdentityTemplate) -> Self {
        self.template = Some(template);
        self
    }

    /// Whether a request with auth method `method` reaches the plugin.
    #[cfg_attr(
        not(any(feature = "contract-0-1", feature = "contract-0-2")),
        allow(dead_code)
    )]
    pub(crate) fn decides_on(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Declares these request facts.
    pub fn request(fields: RequestFields) -> Self {
        Self {
            request: fields,
            ..Self::default()
        }
    }

    /// Adds these facts of the identity so far.
    pub fn so_far(mut self, fields: IdentityFields) -> Self {
        self.so_far |= fields;
        self
    }

    /// Adds an attribute of the identity so far, read by key.
    pub fn attribute(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        if !self.attributes.contains(&key) {
            self.attributes.push(key);
        }
        self
    }
}

/// Where the facts a call did not bring come from, and the calls about the request that go to
/// the gateway: one implementation per contract version.
pub(crate) trait Source {
    /// Fills the cell of `data` for `field`, which a read needs (and may fill more).
    fn request(&self, data: &RequestData, field: RequestFields);
    /// Fills the cell of `data` for `field`, which a read needs (and may fill more).
    fn identity(&self, data: &IdentityData, field: IdentityFields);
    /// The credentials, as a handle.
    fn credentials(&self) -> Credentials;
    /// A verification of the bearer token.
    fn review(&self, verification: &Verification) -> Result<Review, ReviewError>;
}

/// Sets `cell` if it is still empty (a source may fill what another read already filled).
pub(crate) fn fill<T>(cell: &OnceCell<T>, value: T) {
    let _ = cell.set(value);
}

/// The request's facts as far as known.
#[derive(Default)]
pub(crate) struct RequestData {
    pub role: OnceCell<&'static str>,
    pub scopes: OnceCell<Vec<String>>,
    pub method: OnceCell<String>,
    /// The remote address (`None`: unparsable).
    pub remote: OnceCell<Option<SocketAddr>>,
    /// The remote address as text, made when first asked for.
    pub remote_text: OnceCell<String>,
    pub tls: OnceCell<bool>,
    pub client: OnceCell<Client>,
    pub conn_id: OnceCell<String>,
    pub device: OnceCell<Option<Device>>,
    pub has_token: OnceCell<bool>,
    pub has_device_token: OnceCell<bool>,
}

impl RequestData {
    /// The fields not known yet.
    #[cfg_attr(
        any(feature = "contract-0-1", feature = "contract-0-2"),
        allow(dead_code)
    )]
    pub(crate) fn missing(&self) -> RequestFields {
        let mut m = RequestFields::NONE;
        for (known, field) in [
            (self.role.get().is_some(), RequestFields::ROLE),
            (self.scopes.get().is_some(), RequestFields::SCOPES),
            (self.method.get().is_some(), RequestFields::METHOD),
            (self.remote.get().is_some(), RequestFields::REMOTE),
            (self.tls.get().is_some(), RequestFields::TLS),
            (self.client.get().is_some(), RequestFields::CLIENT),
            (self.conn_id.get().is_some(), RequestFields::CONN_ID),
            (self.device.get().is_some(), RequestFields::DEVICE),
            (self.has_token.get().is_some(), RequestFields::PRESENTED),
        ] {
            if !known {
                m |= field;
            }
        }
        m
    }
}

/// The identity's facts as far as known.
#[derive(Default)]
pub(crate) struct IdentityData {
    pub subject: OnceCell<String>,
    pub method: OnceCell<String>,
    pub groups: OnceCell<Vec<String>>,
    /// Every attribute.
    pub attributes: OnceCell<Vec<(String, String)>>,
    /// The attributes declared by key, with their values (only while `attributes` is unknown).
    pub named: Vec<(String, Option<String>)>,
    pub roles: OnceCell<Vec<String>>,
    pub scopes: OnceCell<Vec<String>>,
    pub expires_at_ms: OnceCell<Option<u64>>,
    pub skip_pairing: OnceCell<bool>,
}

impl IdentityData {
    /// The fields not known yet.
    #[cfg_attr(
        any(feature = "contract-0-1", feature = "contract-0-2"),
        allow(dead_code)
    )]
    pub(crate) fn missing(&self) -> IdentityFields {
        let mut m = IdentityFields::NONE;
        for (known, field) in [
            (self.subject.get().is_some(), IdentityFields::SUBJECT),
            (self.method.get().is_some(), IdentityFields::METHOD),
            (self.groups.get().is_some(), IdentityFields::GROUPS),
            (self.attributes.get().is_some(), IdentityFields::ATTRIBUTES),
            (self.roles.get().is_some(), IdentityFields::ROLES),
            (self.scopes.get().is_some(), IdentityFields::SCOPES),
            (
                self.expires_at_ms.get().is_some(),
                IdentityFields::EXPIRES_AT_MS,
            ),
            (
                self.skip_pairing.get().is_some(),
                IdentityFields::SKIP_PAIRING,
            ),
        ] {
            if !known {
                m |= field;
            }
        }
        m
    }
}

/// The request being decided on.
pub struct Request<'a> {
    pub(crate) data: RequestData,
    pub(crate) source: &'a dyn Source,
    /// The declared verification's outcome, once made (contract 0.3: with the call).
    pub(crate) review: OnceCell<Option<Result<Review, ReviewError>>>,
    /// The declared verification.
    pub(crate) verification: Option<&'a Verification>,
}

impl Request<'_> {
    /// The cell of `field` (picked by `get`), fetched first if unknown.
    fn fact<T>(
        &self,
        field: RequestFields,
        get: impl Fn(&RequestData) -> &OnceCell<T>,
    ) -> Option<&T> {
        if get(&self.data).get().is_none() {
            self.source.request(&self.data, field);
        }
        get(&self.data).get()
    }

    /// The role the peer asked for: `worker` or `operator`.
    pub fn role(&self) -> &str {
        self.fact(RequestFields::ROLE, |d| &d.role)
            .copied()
            .unwrap_or("")
    }

    /// The auth method the peer asked for, e.g. `k8s-sa-trust`, `device-token`, `none`.
    pub fn method(&self) -> &str {
        self.fact(RequestFields::METHOD, |d| &d.method)
            .map_or("", String::as_str)
    }

    /// The scopes the peer asked for.
    pub fn scopes(&self) -> &[String] {
        self.fact(RequestFields::SCOPES, |d| &d.scopes)
            .map_or(&[], Vec::as_slice)
    }

    /// The remote socket address.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.fact(RequestFields::REMOTE, |d| &d.remote)
            .copied()
            .flatten()
    }

    /// The remote socket address as text, `ip:port` (`[ip]:port` for IPv6).
    pub fn remote_addr(&self) -> &str {
        if let Some(text) = self.data.remote_text.get() {
            return text;
        }
        let text = self.remote().map(|a| a.to_string()).unwrap_or_default();
        self.data.remote_text.get_or_init(|| text)
    }

    /// The peer's IP address.
    pub fn ip(&self) -> Option<IpAddr> {
        self.remote().map(|a| a.ip())
    }

    /// Whether the connection is TLS-protected end to end to the gateway.
    pub fn tls(&self) -> bool {
        self.fact(RequestFields::TLS, |d| &d.tls)
            .copied()
            .unwrap_or(false)
    }

    /// The client software, as the peer reports it (not verified).
    pub fn client(&self) -> &Client {
        static UNKNOWN: Client = Client {
            id: String::new(),
            version: String::new(),
            platform: None,
            instance_id: None,
        };
        self.fact(RequestFields::CLIENT, |d| &d.client)
            .unwrap_or(&UNKNOWN)
    }

    /// The gateway's id for this connection, for correlating logs.
    pub fn conn_id(&self) -> &str {
        self.fact(RequestFields::CONN_ID, |d| &d.conn_id)
            .map_or("", String::as_str)
    }

    /// The verified device identity, if the peer proved one.
    pub fn device(&self) -> Option<&Device> {
        self.fact(RequestFields::DEVICE, |d| &d.device)
            .and_then(Option::as_ref)
    }

    /// Whether the peer presented a bearer token.
    pub fn has_token(&self) -> bool {
        self.fact(RequestFields::PRESENTED, |d| &d.has_token)
            .copied()
            .unwrap_or(false)
    }

    /// Whether the peer presented a device token.
    pub fn has_device_token(&self) -> bool {
        self.fact(RequestFields::PRESENTED, |d| &d.has_device_token)
            .copied()
            .unwrap_or(false)
    }

    /// The presented credentials, as an opaque handle: reading the tokens themselves needs the
    /// operator's grant (`credentials = "read"`).
    pub fn credentials(&self) -> Credentials {
        self.source.credentials()
    }

    /// The outcome of the verification declared in [`Wants::verification`]: `None` if none
    /// was declared or the peer presented no bearer token. (Contract 0.3: it came with the
    /// call; earlier contracts: made on first read.)
    pub fn review(&self) -> Option<&Result<Review, ReviewError>> {
        self.review
            .get_or_init(|| {
                let v = self.verification?;
                self.has_token().then(|| self.source.review(v))
            })
            .as_ref()
    }

    /// Asks the gateway for a verification of the peer's bearer token now (a TokenReview is
    /// answered from its cache when possible). The token never enters the plugin. A plugin
    /// that always verifies declares it in [`Wants::verification`] instead.
    pub fn verify(&self, verification: &Verification) -> Result<Review, ReviewError> {
        self.source.review(verification)
    }
}

/// The identity earlier plugins established.
pub struct Identity<'a> {
    pub(crate) data: IdentityData,
    pub(crate) source: &'a dyn Source,
}

impl Identity<'_> {
    fn fact<T>(
        &self,
        field: IdentityFields,
        get: impl Fn(&IdentityData) -> &OnceCell<T>,
    ) -> Option<&T> {
        if get(&self.data).get().is_none() {
            self.source.identity(&self.data, field);
        }
        get(&self.data).get()
    }

    /// The subject, e.g. `system:serviceaccount:ns:sa` or `device:<id>`.
    pub fn subject(&self) -> &str {
        self.fact(IdentityFields::SUBJECT, |d| &d.subject)
            .map_or("", String::as_str)
    }

    /// The auth method that established it.
    pub fn method(&self) -> &str {
        self.fact(IdentityFields::METHOD, |d| &d.method)
            .map_or("", String::as_str)
    }

    /// Groups.
    pub fn groups(&self) -> &[String] {
        self.fact(IdentityFields::GROUPS, |d| &d.groups)
            .map_or(&[], Vec::as_slice)
    }

    /// Whether the subject belongs to `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups().iter().any(|g| g == group)
    }

    /// One attribute (`namespace`, `pod-name`, ...), if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        if self.data.attributes.get().is_none()
            && let Some((_, value)) = self.data.named.iter().find(|(k, _)| k == key)
        {
            return value.as_deref();
        }
        self.attributes()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every attribute.
    pub fn attributes(&self) -> &[(String, String)] {
        self.fact(IdentityFields::ATTRIBUTES, |d| &d.attributes)
            .map_or(&[], Vec::as_slice)
    }

    /// Roles the subject may take.
    pub fn roles(&self) -> &[String] {
        self.fact(IdentityFields::ROLES, |d| &d.roles)
            .map_or(&[], Vec::as_slice)
    }

    /// Scopes the subject may hold.
    pub fn scopes(&self) -> &[String] {
        self.fact(IdentityFields::SCOPES, |d| &d.scopes)
            .map_or(&[], Vec::as_slice)
    }

    /// When the credentials behind it expire (Unix ms), if they do.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.fact(IdentityFields::EXPIRES_AT_MS, |d| &d.expires_at_ms)
            .copied()
            .flatten()
    }

    /// Whether it may skip device pairing so far.
    pub fn skip_pairing(&self) -> bool {
        self.fact(IdentityFields::SKIP_PAIRING, |d| &d.skip_pairing)
            .copied()
            .unwrap_or(false)
    }
}

/// The identity [`Decision::AllowReviewed`](crate::Decision) stands for, formed guest-side from
/// the call's last review as the gateway forms it under contract 0.3 (earlier contracts have
/// no `allow-reviewed`). Misuse is the plugin's bug and traps, as the gateway fails it.
#[cfg_attr(
    not(any(feature = "contract-0-1", feature = "contract-0-2")),
    allow(dead_code)
)]
pub(crate) fn from_review(wants: &Wants, review: Option<Review>, r: Reviewed) -> Established {
    let Some(template) = &wants.template else {
        panic!("AllowReviewed without an identity template in the plugin's wants");
    };
    let Some(review) = review.filter(|r| r.authenticated) else {
        panic!("AllowReviewed without an authenticated review in this call");
    };
    let mut attributes = Vec::new();
    if let Some(attr) = &template.uid_attribute {
        attributes.push((attr.clone(), review.uid.clone().unwrap_or_default()));
    }
    for (key, attr) in &template.extra_attributes {
        if let Some(v) = review.extra_first(key) {
            attributes.push((attr.clone(), v.to_string()));
        }
    }
    if let Some(attr) = &template.cluster_attribute {
        attributes.push((attr.clone(), review.cluster.clone().unwrap_or_default()));
    }
    for (k, v) in r.attributes {
        if !attributes.iter().any(|(have, _)| *have == k) {
            attributes.push((k, v));
        }
    }
    Established {
        subject: review.username,
        method: template.method.clone(),
        groups: if template.groups {
            review.groups.unwrap_or_default()
        } else {
            Vec::new()
        },
        attributes,
        roles: r.roles,
        scopes: r.scopes,
        expires_at_ms: review.expires_at_ms,
        skip_pairing: r.skip_pairing,
    }
}

/// A review as an earlier contract's SDK face makes it: `extra` values for `keys` (presence
/// from them), everything else as read.
#[cfg_attr(
    not(any(feature = "contract-0-1", feature = "contract-0-2")),
    allow(dead_code)
)]
pub(crate) struct LegacyReview {
    pub authenticated: bool,
    pub error: Option<String>,
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub audiences: Vec<String>,
    pub expires_at_ms: Option<u64>,
}

#[cfg_attr(
    not(any(feature = "contract-0-1", feature = "contract-0-2")),
    allow(dead_code)
)]
impl LegacyReview {
    /// The review `spec` asks for; `extra` gives the first value of a key.
    pub(crate) fn asked(
        &self,
        spec: &ReviewSpec,
        keys: &[String],
        extra: &dyn Fn(&str) -> Option<String>,
    ) -> Review {
        let values: Vec<Option<String>> = keys.iter().map(|k| extra(k)).collect();
        let mut present = 0u32;
        for (i, v) in values.iter().enumerate().take(32) {
            if v.is_some() {
                present |= 1 << i;
            }
        }
        Review {
            authenticated: self.authenticated,
            audience_matched: !self.audiences.is_empty(),
            error: self.error.clone(),
            username: self.username.clone(),
            expires_at_ms: self.expires_at_ms,
            uid: spec.uid.then(|| self.uid.clone()),
            groups: spec.groups.then(|| self.groups.clone()),
            audiences: spec.valid_audiences.then(|| self.audiences.clone()),
            cluster: spec.cluster.then(|| "default".to_string()),
            extra_keys: keys.to_vec().into(),
            extra_present: present,
            extra_values: spec.extra_values.then_some(values),
        }
    }

    /// Everything, for `AllowReviewed` formed guest-side (the template's keys' values).
    pub(crate) fn full(
        &self,
        template: &IdentityTemplate,
        extra: &dyn Fn(&str) -> Option<String>,
    ) -> Review {
        let keys: Vec<String> = template
            .extra_attributes
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        let spec = ReviewSpec {
            extra_values: true,
            uid: true,
            groups: true,
            valid_audiences: true,
            cluster: true,
            ..ReviewSpec::default()
        };
        self.asked(&spec, &keys, extra)
    }
}

/// `Decision::Fail` under a contract without `fail`: the message in the log, then a trap.
#[cfg_attr(
    not(any(feature = "contract-0-1", feature = "contract-0-2")),
    allow(dead_code)
)]
pub(crate) fn fail_by_trap(message: &str) -> ! {
    crate::log(crate::LogLevel::Error, message);
    std::process::abort()
}

/// Requests and identities for a plugin's own native unit tests: every fact given, nothing
/// fetched from a gateway.
pub mod testing {
    use super::*;

    struct Given;

    impl Source for Given {
        fn request(&self, _: &RequestData, _: RequestFields) {}
        fn identity(&self, _: &IdentityData, _: IdentityFields) {}
        fn credentials(&self) -> Credentials {
            panic!("testing requests carry no credentials handle")
        }
        fn review(&self, _: &Verification) -> Result<Review, ReviewError> {
            Err(ReviewError::NotConfigured(
                "a testing request has no gateway".into(),
            ))
        }
    }

    static GIVEN: Given = Given;

    /// A request of `role` and auth `method` from `remote` (`ip:port`).
    pub fn request(role: &'static str, method: &str, remote: &str, tls: bool) -> Request<'static> {
        let data = RequestData::default();
        fill(&data.role, role);
        fill(&data.method, method.to_string());
        fill(&data.scopes, Vec::new());
        fill(&data.remote, remote.parse().ok());
        fill(&data.tls, tls);
        fill(
            &data.client,
            Client {
                id: "test".into(),
                version: "1".into(),
                platform: None,
                instance_id: None,
            },
        );
        fill(&data.conn_id, "c-test".to_string());
        fill(&data.device, None);
        fill(&data.has_token, false);
        fill(&data.has_device_token, false);
        Request {
            data,
            source: &GIVEN,
            review: OnceCell::new(),
            verification: None,
        }
    }

    /// An identity with these groups and attributes.
    pub fn identity(
        subject: &str,
        groups: &[&str],
        attributes: &[(&str, &str)],
    ) -> Identity<'static> {
        let data = IdentityData::default();
        fill(&data.subject, subject.to_string());
        fill(&data.method, "test".to_string());
        fill(&data.groups, groups.iter().map(|g| g.to_string()).collect());
        fill(
            &data.attributes,
            attributes
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        fill(&data.roles, vec!["worker".to_string()]);
        fill(&data.scopes, Vec::new());
        fill(&data.expires_at_ms, None);
        fill(&data.skip_pairing, false);
        Identity {
            data,
            source: &GIVEN,
        }
    }
}
