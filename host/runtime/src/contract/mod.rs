//! The contract, host side: one module per version with what its imports do and how its types
//! convert to the runtime's own (`types.rs`); here, what they share — the linker, the version
//! dispatch of instantiate, configure and authenticate, and the rules every version applies
//! (the credentials grant, bounds on what a plugin asks the host for).
//!
//! Depends on the bindings, the sandbox and the handle table; nothing below it depends on it.

mod v0_1;
mod v0_2;
mod v0_3;

use wasmtime::component::{InstancePre, Linker};
use wasmtime::{Engine, Store};

use crate::bindings::{ContractVersion, v0_1 as b1, v0_2 as b2, v0_3 as b3};
use crate::chain::Call;
use crate::sandbox::StoreState;
use crate::types::Decision;

/// Audiences one verification may name.
pub(crate) const MAX_AUDIENCES: usize = 16;
/// Keys (attributes, `extra`) one declaration or verification may name.
pub(crate) const MAX_KEYS: usize = 32;
/// Bytes of one such key or audience.
pub(crate) const MAX_KEY: usize = 256;

/// The linker every plugin is instantiated with: WASI (whose context grants nothing) and every
/// contract version, so a component links against the one it was built for.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    // WASI is linked because Rust (and most languages') std imports it; the context in
    // `StoreState` grants nothing, so the interfaces exist but reach nothing.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    b3::AuthPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    b2::AuthPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    b1::AuthPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// A component prepared (`InstancePre`) against one contract version.
pub(crate) enum Pre {
    V0_1(b1::AuthPluginPre<StoreState>),
    V0_2(b2::AuthPluginPre<StoreState>),
    V0_3(b3::AuthPluginPre<StoreState>),
}

impl Pre {
    /// Checks that `pre` exports the plugin interface of `version` with the right types.
    pub(crate) fn new(
        version: ContractVersion,
        pre: InstancePre<StoreState>,
    ) -> wasmtime::Result<Self> {
        Ok(match version {
            ContractVersion::V0_1 => Self::V0_1(b1::AuthPluginPre::new(pre)?),
            ContractVersion::V0_2 => Self::V0_2(b2::AuthPluginPre::new(pre)?),
            ContractVersion::V0_3 => Self::V0_3(b3::AuthPluginPre::new(pre)?),
        })
    }

    pub(crate) fn version(&self) -> ContractVersion {
        match self {
            Self::V0_1(_) => ContractVersion::V0_1,
            Self::V0_2(_) => ContractVersion::V0_2,
            Self::V0_3(_) => ContractVersion::V0_3,
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        match self {
            Self::V0_1(p) => p.engine(),
            Self::V0_2(p) => p.engine(),
            Self::V0_3(p) => p.engine(),
        }
    }

    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<StoreState>,
    ) -> wasmtime::Result<Instance> {
        Ok(match self {
            Self::V0_1(p) => Instance::V0_1(v0_1::Instance::instantiate(p, store).await?),
            Self::V0_2(p) => Instance::V0_2(v0_2::Instance::instantiate(p, store).await?),
            Self::V0_3(p) => Instance::V0_3(v0_3::Instance::instantiate(p, store).await?),
        })
    }
}

/// One instantiated plugin, bound to its contract version.
// Variants differ in size, but an instance is built once and then lives in a
// boxed pool slot; it is never moved on the per-call path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Instance {
    V0_1(v0_1::Instance),
    V0_2(v0_2::Instance),
    V0_3(v0_3::Instance),
}

impl Instance {
    /// Runs `configure`; the plugin's own refusal is the inner `Err`.
    pub(crate) async fn configure(
        &mut self,
        store: &mut Store<StoreState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1(i) => i.configure(store, config).await,
            Self::V0_2(i) => i.configure(store, config).await,
            Self::V0_3(i) => i.configure(store, config).await,
        }
    }

    /// The auth methods the plugin decides on (contract 0.3; empty: all).
    pub(crate) fn methods(&self) -> &[String] {
        match self {
            Self::V0_3(i) => i.methods(),
            Self::V0_1(_) | Self::V0_2(_) => &[],
        }
    }

    /// Runs `authenticate` on `call`.
    pub(crate) async fn authenticate(
        &mut self,
        store: &mut Store<StoreState>,
        call: &Call,
    ) -> wasmtime::Result<Answer> {
        match self {
            Self::V0_1(i) => i.authenticate(store, call).await.map(Answer::Decided),
            Self::V0_2(i) => i.authenticate(store, call).await.map(Answer::Decided),
            Self::V0_3(i) => i.authenticate(store, call).await,
        }
    }
}

/// What a plugin answered.
pub(crate) enum Answer {
    /// A decision.
    Decided(Decision),
    /// Its own failure (contract 0.3's `fail`), with its message as the plugin wrote it.
    Failed(String),
}

/// Why a secret was not given.
pub(crate) enum SecretError {
    NotGranted,
    Absent,
}

/// A secret, only with the grant. Without it the answer is `not-granted` whether or not the
/// peer presented one, so an ungranted plugin learns nothing from the error either.
pub(crate) fn secret(granted: bool, value: Option<&String>) -> Result<String, SecretError> {
    match (granted, value) {
        (false, _) => Err(SecretError::NotGranted),
        (true, None) => Err(SecretError::Absent),
        (true, Some(v)) => Ok(v.clone()),
    }
}

/// Checks a list of keys or audiences a plugin hands the host against the contract's bounds
/// (an error names the field and the size, never the content).
pub(crate) fn keys(field: &str, keys: &[String], max: usize) -> Result<(), String> {
    if keys.len() > max {
        return Err(format!(
            "{field} has {} entries, over the limit of {max}",
            keys.len()
        ));
    }
    match keys.iter().position(|k| k.is_empty() || k.len() > MAX_KEY) {
        Some(i) => Err(format!(
            "{field}[{i}] is {} bytes, outside 1..={MAX_KEY}",
            keys[i].len()
        )),
        None => Ok(()),
    }
}
