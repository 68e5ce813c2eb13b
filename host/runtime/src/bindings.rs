//! The only place the host binds the WIT contract. Everything else in the runtime uses the
//! types re-exported from here, so a change to `wit/` shows up as compile errors in one spot.

#![allow(missing_docs)] // generated code; the WIT file carries the documentation.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "auth-plugin",
    imports: { default: async },
    exports: { default: async },
});

pub use self::trustgate::auth::host::{
    Host as HostImports, LogLevel, ReviewError, TokenReviewStatus, UserInfo,
};
pub use self::trustgate::auth::types::{
    Credentials, Decision, Denial, DenyCode, Device, Identity, Peer, Request,
};

/// The WIT package and version this host implements.
pub const WIT_PACKAGE: &str = "trustgate:auth@0.1.0";
/// The export every plugin must provide.
pub const PLUGIN_EXPORT: &str = "trustgate:auth/plugin@0.1.0";
/// The host interface plugins may import.
pub const HOST_IMPORT: &str = "trustgate:auth/host@0.1.0";
/// The world plugins target.
pub const WORLD: &str = "trustgate:auth/auth-plugin@0.1.0";
