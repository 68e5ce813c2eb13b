//! # Writing trustgate plugins in Rust
//!
//! A trustgate auth plugin is a WebAssembly component implementing the `auth-plugin` world of
//! `wit/auth.wit`. This crate binds that world for you and adds the few helpers most policies
//! need: typed configuration, glob and CIDR matching, decision constructors and logging.
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
//!         let Some(identity) = so_far else { return Decision::Abstain };
//!         let hour = now_ms() / 3_600_000 % 24;
//!         if (self.0.from_hour..=self.0.to_hour).contains(&hour) {
//!             Decision::Allow(identity.clone())
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
//! `trustgate plugin check FILE --config TABLE.toml` tries it with a configuration.
//!
//! The configuration is the plugin's TOML table from the gateway config, delivered as JSON and
//! deserialised into `Plugin::Config`; errors name the offending key (`rules[2].cidr: ...`)
//! and are shown to the operator verbatim.

extern crate self as trustgate_plugin_sdk;

use std::net::IpAddr;

use serde::de::DeserializeOwned;

#[doc(hidden)]
pub use wit_bindgen;

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

pub use bindings::trustgate::auth::host::{
    LogLevel, ReviewError, TokenReviewStatus, UserInfo, token_review, verify_jwt,
};
pub use bindings::trustgate::auth::types::{
    Credentials, Decision, Denial, DenyCode, Device, Identity, Peer, Request,
};

/// What a plugin implements. The [`plugin!`] macro turns an implementation into the
/// component's exports.
pub trait Plugin: Sized + 'static {
    /// The plugin's configuration, deserialised from its TOML table.
    type Config: DeserializeOwned;

    /// Builds the plugin from its configuration. An `Err` is shown to the operator verbatim
    /// and the gateway refuses to start (or to reload) with this configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

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
            static __TRUSTGATE_PLUGIN: ::std::cell::RefCell<::std::option::Option<$ty>> =
                const { ::std::cell::RefCell::new(::std::option::Option::None) };
        }

        impl $crate::bindings::exports::trustgate::auth::plugin::Guest for __TrustgatePluginExport {
            fn configure(
                config: ::std::string::String,
            ) -> ::std::result::Result<(), ::std::string::String> {
                let plugin = $crate::__configure::<$ty>(&config)?;
                __TRUSTGATE_PLUGIN
                    .with(|slot| *slot.borrow_mut() = ::std::option::Option::Some(plugin));
                ::std::result::Result::Ok(())
            }

            fn authenticate(
                request: $crate::Request,
                so_far: ::std::option::Option<$crate::Identity>,
            ) -> $crate::Decision {
                __TRUSTGATE_PLUGIN.with(|slot| match &*slot.borrow() {
                    ::std::option::Option::Some(plugin) => {
                        <$ty as $crate::Plugin>::authenticate(plugin, &request, so_far.as_ref())
                    }
                    ::std::option::Option::None => $crate::__not_configured(),
                })
            }
        }

        $crate::bindings::__export_bindings!(__TrustgatePluginExport);
    };
}

#[doc(hidden)]
pub fn __configure<P: Plugin>(json: &str) -> Result<P, String> {
    P::new(parse_config(json)?)
}

#[doc(hidden)]
pub fn __not_configured() -> Decision {
    Decision::Deny(Denial {
        code: DenyCode::Unavailable,
        reason: "plugin-not-configured".into(),
        message: "authenticate was called before configure".into(),
        retry_after_ms: None,
    })
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

impl Identity {
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

    /// The value of an attribute, if set.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Peer {
    /// The peer's IP address, parsed from `remote-addr`.
    pub fn ip(&self) -> Option<IpAddr> {
        self.remote_addr
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .ok()
            .or_else(|| self.remote_addr.parse().ok())
    }
}

/// Shell-style matching: `*` matches any run of characters (including none), `?` exactly one.
pub fn glob(pattern: &str, text: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(text)
}

/// An IP network such as `10.0.0.0/8` or `fd00::/8`.
pub use ipnet::IpNet as Cidr;

/// The gateway's wall-clock time in Unix milliseconds.
pub fn now_ms() -> u64 {
    bindings::trustgate::auth::host::now_ms()
}

/// Writes a line to the gateway's log, tagged with this plugin's name. Never log a token.
pub fn log(level: LogLevel, message: &str) {
    bindings::trustgate::auth::host::log(level, message);
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
    fn peer_ip_parses_v4_and_v6() {
        let mut p = Peer {
            remote_addr: "10.1.2.3:555".into(),
            tls: false,
            client_id: String::new(),
            client_version: String::new(),
            platform: None,
            conn_id: String::new(),
        };
        assert_eq!(p.ip(), Some("10.1.2.3".parse().unwrap()));
        p.remote_addr = "[fd00::1]:80".into();
        assert_eq!(p.ip(), Some("fd00::1".parse().unwrap()));
        let net: Cidr = "fd00::/8".parse().unwrap();
        assert!(net.contains(&p.ip().unwrap()));
    }
}
