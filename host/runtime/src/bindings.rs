//! The only place the host binds the WIT contract, once per supported version. Everything else
//! in the runtime works with the version-independent types of `types.rs`; `contract/` converts,
//! so a change to `wit/` shows up as compile errors there. This module depends on nothing of
//! the runtime but the handle markers its resources map to (`handles.rs`).

#![allow(missing_docs)] // generated code; the WIT files carry the documentation.

/// `trustgate:auth@0.3.0` (`wit/auth.wit`): facts by value, one crossing per verification.
pub(crate) mod v0_3 {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "auth-plugin",
        // Only the verifications wait on the outside world; everything else is a plain call.
        imports: {
            "trustgate:auth/host.token-review": async | trappable,
            "trustgate:auth/host.verify-jwt": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "trustgate:auth/types.credentials": crate::handles::Credentials,
        },
    });

    /// The package and version.
    pub const PACKAGE: &str = "trustgate:auth@0.3.0";
}

/// `trustgate:auth@0.2.0` (`wit/0.2.0/auth.wit`): resources read one fact per call. Still
/// loaded.
pub(crate) mod v0_2 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.2.0",
        world: "auth-plugin",
        imports: {
            "trustgate:auth/host.token-review": async | trappable,
            "trustgate:auth/host.verify-jwt": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "trustgate:auth/types.request": crate::handles::RequestRes,
            "trustgate:auth/types.credentials": crate::handles::Credentials,
            "trustgate:auth/types.identity": crate::handles::IdentityRes,
            "trustgate:auth/host.review": crate::handles::ReviewRes,
        },
    });

    /// The package and version.
    pub const PACKAGE: &str = "trustgate:auth@0.2.0";
}

/// `trustgate:auth@0.1.0` (`wit/0.1.0/auth.wit`): records copied in and out. Still loaded;
/// deprecated.
pub(crate) mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/0.1.0",
        world: "auth-plugin",
        imports: { default: async },
        exports: { default: async },
    });

    /// The package and version.
    pub const PACKAGE: &str = "trustgate:auth@0.1.0";
}

/// A contract version the host implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ContractVersion {
    /// `trustgate:auth@0.1.0` (deprecated).
    V0_1,
    /// `trustgate:auth@0.2.0`.
    V0_2,
    /// `trustgate:auth@0.3.0`.
    V0_3,
}

impl ContractVersion {
    /// Every version this host loads, newest first.
    pub const ALL: [Self; 3] = [Self::V0_3, Self::V0_2, Self::V0_1];

    /// The newest version, the one new plugins should target.
    pub const CURRENT: Self = Self::V0_3;

    /// `0.3.0`.
    pub fn semver(self) -> &'static str {
        match self {
            Self::V0_1 => "0.1.0",
            Self::V0_2 => "0.2.0",
            Self::V0_3 => "0.3.0",
        }
    }

    /// `trustgate:auth@0.3.0`.
    pub fn package(self) -> &'static str {
        match self {
            Self::V0_1 => v0_1::PACKAGE,
            Self::V0_2 => v0_2::PACKAGE,
            Self::V0_3 => v0_3::PACKAGE,
        }
    }

    /// The export every plugin provides, e.g. `trustgate:auth/plugin@0.3.0`.
    pub fn plugin_export(self) -> String {
        format!("trustgate:auth/plugin@{}", self.semver())
    }

    /// The host interface plugins may import, e.g. `trustgate:auth/host@0.3.0`.
    pub fn host_import(self) -> String {
        format!("trustgate:auth/host@{}", self.semver())
    }

    /// The world plugins target, e.g. `trustgate:auth/auth-plugin@0.3.0`.
    pub fn world(self) -> String {
        format!("trustgate:auth/auth-plugin@{}", self.semver())
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.package())
    }
}
