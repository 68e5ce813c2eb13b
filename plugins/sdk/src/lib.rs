//! # Writing trustgate plugins in Rust
//!
//! A trustgate auth plugin is a WebAssembly component implementing the `auth-plugin` world of
//! `wit/auth.wit` (`trustgate:auth@0.2.0`). This crate binds that world for you, hides its
//! handles behind plain methods, and adds the few helpers most policies need: typed
//! configuration, glob and CIDR matching, decision constructors and logging.
//!
//! A complete policy plugin that only lets workers in during office hours:
//!
//! ```no_run
//! use serde::Deserialize;
//! use trustgate_plugin_sdk::{Decision, Identity, Plugin, Request, deny_forbidden, now_ms};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     /// First and last allowed UTC hour.
//!     from_hour: u64,
//!     to_hour: u64,
//! }
//!
//! struct OfficeHours(Config);
//!
//! impl Plugin for OfficeHours {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         if config.from_hour > 23 || config.to_hour > 23 {
//!             return Err("hours must be 0..=23".into());
//!         }
//!         Ok(Self(config))
//!     }
//!
//!     fn authenticate(&self, _request: &Request, so_far: Option<&Identity>) -> Decision {
//!         if so_far.is_none() {
//!             return Decision::Abstain; // nobody to let through yet
//!         }
//!         let hour = now_ms() / 3_600_000 % 24;
//!         if (self.0.from_hour..=self.0.to_hour).contains(&hour) {
//!             Decision::permit()
//!         } else {
//!             deny_forbidden("outside-hours", format!("hour {hour} is outside the window"))
//!         }
//!     }
//! }
//!
//! trustgate_plugin_sdk::plugin!(OfficeHours);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`); the
//! resulting `.wasm` is a component the gateway loads with `path = "..."` in its config.
//! `trustgate plugin test FILE --cases CASES.toml` runs it against a table of requests.
//!
//! The configuration is the plugin's TOML table from the gateway config, delivered as JSON and
//! deserialised into `Plugin::Config`; errors name the offending key (`rules[2].cidr: ...`)
//! and are shown to the operator.
//!
//! ## Contract versions
//!
//! By default the SDK targets `trustgate:auth@0.2.0`. The feature `contract-0-1` builds the
//! same plugin source against the deprecated `0.1.0` instead (for gateways that predate
//! 0.2); under 0.1 every plugin sees the raw credentials, so [`Credentials::token`] always
//! succeeds there.
//!
//! ## Verifying tokens without holding them
//!
//! [`Credentials::review`] and [`Credentials::verify_jwt`] ask the gateway to verify the
//! peer's bearer token; the token itself never enters the plugin. Reading it
//! ([`Credentials::token`]) needs the operator's grant, `credentials = "read"`.

extern crate self as trustgate_plugin_sdk;

use std::net::IpAddr;

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use wit_bindgen;

#[cfg(not(any(feature = "contract-0-1", feature = "contract-0-2")))]
#[path = "contract_v0_3.rs"]
mod contract;
#[cfg(feature = "contract-0-2")]
#[path = "contract_v0_2.rs"]
mod contract;
#[cfg(all(feature = "contract-0-1", not(feature = "contract-0-2")))]
#[path = "contract_v0_1.rs"]
mod contract;

mod facts;

#[doc(hidden)]
pub use contract::{__authenticate, __configured};
pub use contract::{Credentials, bindings};
pub use facts::{
    Identity, IdentityFields, IdentityTemplate, Request, RequestFields, ReviewSpec, Verification,
    Wants, testing,
};

/// What a plugin implements. The [`plugin!`] macro turns an implementation into the
/// component's exports.
pub trait Plugin: Sized + 'static {
    /// The plugin's configuration, deserialised from its TOML table.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration. An `Err` is shown to the operator and the
    /// gateway refuses to start (or to reload) with this configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What this plugin decides on: the auth methods it handles, the facts of the request and
    /// of the identity so far it reads, the verification of the bearer token it needs, and
    /// how [`Decision::AllowReviewed`] forms an identity. Under contract 0.3 each call
    /// receives exactly these with the call itself (the verification already made) and the
    /// plugin is not called for other auth methods; any other fact is fetched from the gateway
    /// when first read (one more crossing, for all of them at once). Declaring is about cost,
    /// never about correctness. The default declares nothing.
    fn wants(&self) -> Wants {
        Wants::default()
    }

    /// Decides on one request. `so_far` is the identity earlier plugins established.
    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision;
}

/// Exports a [`Plugin`] implementation as the component's `trustgate:auth/plugin` interface.
#[macro_export]
macro_rules! plugin {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __TrustgatePluginExport;

        ::std::thread_local! {
            static __TRUSTGATE_PLUGIN: ::std::cell::RefCell<
                ::std::option::Option<($ty, $crate::__Declared)>,
            > = const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        $crate::__plugin_exports!($ty, __TrustgatePluginExport, __TRUSTGATE_PLUGIN);

        $crate::bindings::__export_bindings!(__TrustgatePluginExport);
    };
}

#[doc(hidden)]
pub fn __configure<P: Plugin>(json: &str) -> Result<P, String> {
    // A panic traps the instance; the hook says first where and why, in the gateway's log.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}: ", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        log(LogLevel::Error, &format!("{at}panicked: {what}"));
    }));
    P::new(parse_config(json)?)
}

/// What a configured plugin declared, prepared once for its calls.
#[doc(hidden)]
pub struct __Declared {
    pub(crate) wants: Wants,
    /// The declared verification's `extra` keys, shared by every call's review.
    #[cfg_attr(
        any(feature = "contract-0-1", feature = "contract-0-2"),
        allow(dead_code)
    )]
    pub(crate) extra_keys: std::rc::Rc<[String]>,
}

impl __Declared {
    #[doc(hidden)]
    pub fn new(wants: Wants) -> Self {
        let extra_keys = match &wants.verification {
            Some(Verification::TokenReview(s) | Verification::KubernetesJwt(s)) => {
                s.extra.clone().into()
            }
            None => std::rc::Rc::from([]),
        };
        Self { wants, extra_keys }
    }

    #[doc(hidden)]
    pub fn wants(&self) -> &Wants {
        &self.wants
    }
}

#[doc(hidden)]
pub fn __not_configured() -> Decision {
    Decision::Deny(__not_configured_denial())
}

#[doc(hidden)]
pub fn __not_configured_denial() -> Denial {
    Denial {
        code: DenyCode::Unavailable,
        reason: "plugin-not-configured".into(),
        message: "authenticate was called before configure".into(),
        retry_after_ms: None,
    }
}

/// Deserialises a configuration, naming the offending key in errors
/// (e.g. `rules[1].cidr: invalid IP network`).
pub fn parse_config<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends "at line 1 column 57", meaningless to someone editing TOML.
        let msg = inner.to_string();
        let msg = match msg.rfind(" at line ") {
            Some(i) => msg[..i].to_string(),
            None => msg,
        };
        if path == "." || path.is_empty() {
            msg
        } else {
            format!("{path}: {msg}")
        }
    })
}

// === What a plugin decides ===

/// A plugin's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The peer is this identity (the first allow), or the same subject again (narrowing).
    Allow(Established),
    /// The peer is who the call's review says, formed by the declared
    /// [`IdentityTemplate`] (subject, groups, expiry and the template's attributes come from
    /// the review, held by the gateway), with these additions.
    AllowReviewed(Reviewed),
    /// No objection: the identity so far, narrowed as said (counts as abstain if there is none).
    Permit(Narrowing),
    /// The peer is refused; the chain stops here.
    Deny(Denial),
    /// No opinion; the chain continues.
    Abstain,
    /// The plugin failed (a bug, an unexpected input): the peer is refused with
    /// `PLUGIN_FAILED` and the message — say where and why, never a secret — goes to the
    /// gateway's log and audit trace. (A panic traps instead, after its location is logged.)
    Fail(String),
}

impl Decision {
    /// Lets the peer through with the identity so far, unchanged.
    pub fn permit() -> Self {
        Decision::Permit(Narrowing::default())
    }

    /// Lets the peer through with the identity so far, narrowed.
    pub fn permit_narrowed(narrowing: Narrowing) -> Self {
        Decision::Permit(narrowing)
    }

    /// Establishes an identity.
    pub fn allow(identity: Established) -> Self {
        Decision::Allow(identity)
    }
}

/// An identity a plugin establishes. The gateway enforces the contract's limits: subject
/// 1..=256 bytes, ≤ 64 groups, ≤ 32 attributes, ≤ 8 roles, ≤ 32 scopes (see `wit/auth.wit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// Stable subject, e.g. `system:serviceaccount:ns:sa`.
    pub subject: String,
    /// The auth method that established it (e.g. `k8s-sa-trust`).
    pub method: String,
    /// Groups the subject belongs to.
    pub groups: Vec<String>,
    /// Facts about the subject (e.g. `namespace`, `pod-name`, `pod-uid`, `node-name`).
    pub attributes: Vec<(String, String)>,
    /// Roles the subject may take; the requested role must be one of them.
    pub roles: Vec<String>,
    /// Scopes the subject may hold; an empty list grants none.
    pub scopes: Vec<String>,
    /// When the credentials behind this identity expire (Unix ms), if they do.
    pub expires_at_ms: Option<u64>,
    /// Whether this identity may skip interactive device pairing.
    pub skip_pairing: bool,
}

impl Established {
    /// A new identity with no groups, attributes, roles or scopes, that may not skip pairing.
    pub fn new(subject: impl Into<String>, method: impl Into<String>) -> Self {
        Self {
            subject: subject.into(),
            method: method.into(),
            groups: Vec::new(),
            attributes: Vec::new(),
            roles: Vec::new(),
            scopes: Vec::new(),
            expires_at_ms: None,
            skip_pairing: false,
        }
    }
}

/// What a plugin adds to an identity the gateway forms from the call's review (see
/// [`Decision::AllowReviewed`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reviewed {
    /// Attributes besides the template's (one the template sets keeps the template's value).
    pub attributes: Vec<(String, String)>,
    /// Roles the subject may take; the requested role must be one of them.
    pub roles: Vec<String>,
    /// Scopes the subject may hold.
    pub scopes: Vec<String>,
    /// Whether this identity may skip interactive device pairing.
    pub skip_pairing: bool,
}

/// How a policy that lets the peer through narrows the identity so far. The default keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// Keep only these of the roles granted so far (`None`: keep all).
    pub roles: Option<Vec<String>>,
    /// Keep only these of the scopes granted so far (`None`: keep all).
    pub scopes: Option<Vec<String>>,
    /// Attributes to add (an attribute already established keeps its value).
    pub attributes: Vec<(String, String)>,
    /// An expiry; only an earlier one than the current takes effect.
    pub expires_at_ms: Option<u64>,
    /// Forbid skipping device pairing.
    pub veto_skip_pairing: bool,
}

/// What the client sees as the error code of a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCode {
    /// Credentials missing, malformed, expired or rejected. Not retryable.
    Unauthenticated,
    /// Known but not allowed. Not retryable.
    Forbidden,
    /// A dependency is down; the client should retry.
    Unavailable,
    /// Throttled; the client should retry.
    RateLimited,
}

/// A refusal. `reason` (1..=64 bytes of `[a-z0-9._-]`) is what the client sees as
/// `details.reason`; `message` (≤ 1024 bytes) goes to the gateway's log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The error code.
    pub code: DenyCode,
    /// A stable reason, e.g. `audience-mismatch`.
    pub reason: String,
    /// An explanation for the log (never a secret).
    pub message: String,
    /// For `Unavailable` and `RateLimited`: how long the client should wait, if known.
    pub retry_after_ms: Option<u32>,
}

/// The client software, as the peer reports it (not verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// `client.id`.
    pub id: String,
    /// `client.version`.
    pub version: String,
    /// `client.platform`, if given.
    pub platform: Option<String>,
    /// `client.instanceId`, if given.
    pub instance_id: Option<String>,
}

/// A device whose signature over the connection's challenge the gateway verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Lowercase hex SHA-256 of the raw Ed25519 public key.
    pub id: String,
    /// The public key, base64url without padding.
    pub public_key: String,
}

/// Why a credential accessor gave no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    /// The operator did not grant this plugin `credentials = "read"`.
    NotGranted,
    /// The peer presented no such credential.
    Absent,
}

/// What a verification (a TokenReview, or a local JWT verification) found behind the peer's
/// bearer token: what every plugin decides on, and the rest as asked in its [`ReviewSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Review {
    /// Whether the token is valid.
    pub authenticated: bool,
    /// Whether the review names one of the requested audiences (an authenticated review
    /// without one comes from an authority that ignores audiences: do not trust it).
    pub audience_matched: bool,
    /// The authority's error text when the token was rejected.
    pub error: Option<String>,
    /// The Kubernetes username, e.g. `system:serviceaccount:ns:sa`.
    pub username: String,
    /// When the token expires (Unix ms), if the gateway could tell.
    pub expires_at_ms: Option<u64>,
    /// The user's UID, if asked for (for a ServiceAccount: the ServiceAccount's, not a pod's).
    pub uid: Option<String>,
    /// Groups, if asked for, e.g. `system:serviceaccounts:ns`.
    pub groups: Option<Vec<String>>,
    /// The audiences the token is valid for among the requested ones, if asked for.
    pub audiences: Option<Vec<String>>,
    /// The cluster (trust source) that vouched for the token, if asked for: `default` for
    /// the gateway's own.
    pub cluster: Option<String>,
    /// The `extra` keys asked for.
    pub(crate) extra_keys: std::rc::Rc<[String]>,
    /// Bit `i`: the `i`-th key has a value.
    pub(crate) extra_present: u32,
    /// The first value of each key, if asked for.
    pub(crate) extra_values: Option<Vec<Option<String>>>,
}

impl Review {
    fn position(&self, key: &str) -> Option<usize> {
        self.extra_keys.iter().position(|k| k == key)
    }

    /// Whether the review has a value for an `extra` key asked for.
    pub fn has_extra(&self, key: &str) -> bool {
        self.position(key)
            .is_some_and(|i| i < 32 && self.extra_present & (1 << i) != 0)
    }

    /// The first value of an `extra` key asked for, if the values were asked for
    /// ([`ReviewSpec::extra_values`]).
    pub fn extra_first(&self, key: &str) -> Option<&str> {
        let i = self.position(key)?;
        self.extra_values.as_ref()?.get(i)?.as_deref()
    }
}

/// Why the gateway could not complete a verification. None of these says anything about the
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewError {
    /// The gateway has no Kubernetes client configured.
    NotConfigured(String),
    /// The API server could not be reached, timed out, or answered 5xx/429.
    Unavailable(String),
    /// The API server refused the gateway's own credentials.
    Forbidden(String),
    /// Anything else.
    Failed(String),
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// Something failed.
    Error,
}

/// A denial with code `unauthenticated` (bad or missing credentials; not retryable).
pub fn deny_unauthenticated(reason: &str, message: impl Into<String>) -> Decision {
    deny(DenyCode::Unauthenticated, reason, message)
}

/// A denial with code `forbidden` (known peer, not allowed; not retryable).
pub fn deny_forbidden(reason: &str, message: impl Into<String>) -> Decision {
    deny(DenyCode::Forbidden, reason, message)
}

/// A denial with code `unavailable` (a dependency is down; the client should retry).
pub fn deny_unavailable(reason: &str, message: impl Into<String>) -> Decision {
    deny(DenyCode::Unavailable, reason, message)
}

/// A denial with any code.
pub fn deny(code: DenyCode, reason: &str, message: impl Into<String>) -> Decision {
    Decision::Deny(Denial {
        code,
        reason: reason.into(),
        message: message.into(),
        retry_after_ms: None,
    })
}

// === Helpers ===

/// An IP address from `ip:port`, `[ip]:port` or a bare address.
pub fn parse_ip(addr: &str) -> Option<IpAddr> {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .ok()
        .or_else(|| addr.parse().ok())
}

/// Shell-style matching: `*` matches any run of characters (including none), `?` exactly one.
/// Compiles the pattern on every call; keep a [`Glob`] for patterns used repeatedly.
pub fn glob(pattern: &str, text: &str) -> bool {
    Glob::new(pattern).matches(text)
}

/// A shell-style pattern (`*`, `?`), compiled once (e.g. at `configure`) and matched often.
/// The shapes rules are mostly written in — a literal, `prefix*`, `*suffix`, `*` — match
/// without the general matcher.
#[derive(Debug, Clone)]
pub struct Glob(GlobKind);

#[derive(Debug, Clone)]
enum GlobKind {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Wild(wildmatch::WildMatch),
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Self {
        let plain = |s: &str| !s.contains(['*', '?']);
        let kind = if pattern == "*" {
            GlobKind::Any
        } else if plain(pattern) {
            GlobKind::Exact(pattern.into())
        } else if let Some(p) = pattern.strip_suffix('*').filter(|p| plain(p)) {
            GlobKind::Prefix(p.into())
        } else if let Some(s) = pattern.strip_prefix('*').filter(|s| plain(s)) {
            GlobKind::Suffix(s.into())
        } else {
            GlobKind::Wild(wildmatch::WildMatch::new(pattern))
        };
        Self(kind)
    }

    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match &self.0 {
            GlobKind::Any => true,
            GlobKind::Exact(p) => text == p,
            GlobKind::Prefix(p) => text.starts_with(p.as_str()),
            GlobKind::Suffix(s) => text.ends_with(s.as_str()),
            GlobKind::Wild(w) => w.matches(text),
        }
    }
}

/// An IP network such as `10.0.0.0/8` or `fd00::/8`.
pub use ipnet::IpNet as Cidr;

/// The gateway's wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    contract::now_ms()
}

/// Writes a line to the gateway's log, tagged with this plugin's name. Never log a token.
pub fn log(level: LogLevel, message: &str) {
    contract::log(level, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        rules: Vec<Rule>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Rule {
        cidr: Option<String>,
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = parse_config::<Cfg>(r#"{"rules":[{"cidr":"x"},{"cdir":"y"}]}"#).unwrap_err();
        assert!(e.starts_with("rules[1].cdir: unknown field `cdir`"), "{e}");
        assert!(!e.contains("line"), "{e}");
        let e = parse_config::<Cfg>("{}").unwrap_err();
        assert_eq!(e, "missing field `rules`");
    }

    #[test]
    fn every_glob_shape_matches_as_the_general_matcher_does() {
        let patterns = [
            "*", "prod", "prod-*", "*-eu", "p?od", "*od*", "a*b", "", "**",
        ];
        let texts = [
            "", "prod", "prod-eu", "p-eu", "pxod", "food", "ab", "axb", "a", "-eu",
        ];
        for p in patterns {
            let fast = Glob::new(p);
            let slow = wildmatch::WildMatch::new(p);
            for t in texts {
                assert_eq!(fast.matches(t), slow.matches(t), "{p:?} on {t:?}");
            }
        }
    }

    #[test]
    fn globs() {
        assert!(glob(
            "system:serviceaccount:prod-*:*",
            "system:serviceaccount:prod-eu:worker"
        ));
        assert!(glob("w?rker", "worker"));
        assert!(!glob("w?rker", "wrker"));
        assert!(!glob("prod", "prod-eu"));
    }

    #[test]
    fn ips_parse_v4_and_v6() {
        assert_eq!(parse_ip("10.1.2.3:555"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(parse_ip("[fd00::1]:80"), Some("fd00::1".parse().unwrap()));
        let net: Cidr = "fd00::/8".parse().unwrap();
        assert!(net.contains(&parse_ip("[fd00::1]:80").unwrap()));
    }
}
