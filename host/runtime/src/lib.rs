//! trustgate's plugin host: loads WebAssembly components that implement the `auth-plugin`
//! world (`wit/auth.wit`, contract `0.2.0`; `0.1.0` components still load), runs them sandboxed (CPU deadline, memory cap, wall-clock bounds, a
//! WASI context with nothing in it) and composes them into a [`Chain`].
//!
//! The crate knows nothing of WebSockets, the gateway, Kubernetes or the wire protocol: it takes
//! [`Request`]s and gives [`Verdict`]s, and whatever a plugin may ask of the outside world
//! (TokenReview, JWT verification) reaches it through the [`HostServices`] the embedder passes
//! in. Another Rust server can embed it on its own:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use trustgate_runtime::{
//!     CachePolicy, Chain, Credentials, Grants, NoServices, Outcome, Peer, PluginSource,
//!     PluginSpec, Request, Runtime, RuntimeSettings,
//! };
//!
//! // One runtime per process: an engine, a linker, an epoch ticker.
//! let runtime = Runtime::new(RuntimeSettings::default(), Arc::new(NoServices::default()))?;
//! // A policy that refuses operators from outside 10.0.0.0/8 and lets everyone else
//! // through unchanged (here: trustgate's first-party `allowlist` component).
//! let policy = runtime
//!     .load(&PluginSpec {
//!         name: "policy".into(),
//!         source: PluginSource::bytes(
//!             "allowlist.wasm",
//!             trustgate_builtins::builtin("allowlist").expect("embedded"),
//!         ),
//!         config: serde_json::json!({"rules": [
//!             {"effect": "deny", "roles": ["operator"], "cidr": "0.0.0.0/0"},
//!         ]}),
//!         grants: Grants::default(), // no access to raw credentials
//!     })
//!     .await?;
//! let chain = Chain::new(vec![Arc::new(policy)]);
//!
//! let request = Arc::new(Request {
//!     credentials: Credentials { method: "none".into(), ..Credentials::default() },
//!     device: None,
//!     peer: Peer {
//!         remote_addr: "192.0.2.7:40000".into(),
//!         tls: true,
//!         client_id: "console".into(),
//!         client_version: "1.0.0".into(),
//!         conn_id: "c-1".into(),
//!         ..Peer::default()
//!     },
//!     role: "operator".into(),
//!     scopes: vec![],
//! });
//! let verdict = chain.evaluate(&request, None, CachePolicy::Use).await;
//! assert!(matches!(verdict.outcome, Outcome::Denied { ref plugin, .. } if plugin == "policy"));
//! # Ok(())
//! # }
//! ```

// The modules depend on each other in one direction, top to bottom of this list inverted:
// `lib.rs` composes `pool` (the instances and the path of a call), which runs the `contract`
// (each version's host side) over the `bindings`, in a `sandbox` whose `handles` and clocks
// (`call`) bound every call, on the `engine`; `chain`, `types`, `services`, `bounds`, `stats`
// and `settings` are the leaves. `tests/layering.rs` fails on an import cycle.
mod bindings;
mod bounds;
mod call;
mod chain;
mod compile_cache;
mod contract;
mod engine;
mod handles;
mod pool;
mod sandbox;
mod services;
mod settings;
mod stats;
mod types;
mod world;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

pub use bindings::ContractVersion;
pub use bounds::{clip, escape_text};
pub use chain::{
    AuthProvider, Call, Chain, Outcome, PluginFailure, Step, StepKind, Verdict, Witness, merge,
};
pub use compile_cache::{CacheOutcome, CompileCache};
pub use pool::WasmPlugin;
pub use sandbox::{Grants, LOG_LINE_FRAMING};
pub use services::{CachePolicy, HostServices, NoServices};
pub use settings::{RuntimeSettings, SettingsError};
pub use stats::PluginStats;
pub use types::{
    Credentials, Decision, Denial, DenyCode, Device, Identity, LogLevel, Narrowing, Peer, Request,
    Review, ReviewError,
};
pub use world::{BinaryKind, Item, binary_kind};

/// The contract's limits on what a plugin hands back, as documented in `wit/auth.wit`.
pub mod limits {
    pub use crate::bounds::{
        MAX_ATTRIBUTE_KEY, MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, MAX_CONFIGURE_ERROR, MAX_GROUP,
        MAX_GROUPS, MAX_LOG_LINE, MAX_LOG_PER_CALL, MAX_MESSAGE, MAX_METHOD, MAX_REASON, MAX_ROLE,
        MAX_ROLES, MAX_SCOPE, MAX_SCOPES, MAX_SUBJECT,
    };
    pub use crate::sandbox::LOG_LINE_FRAMING;
}

use contract::Pre;
use pool::{InstanceError, PoolParts};
use sandbox::{MemoryBudget, SandboxLimits, StoreState};

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// Component bytes the embedder already holds (e.g. a plugin compiled into its binary).
    Bytes {
        /// How messages name the component, e.g. "built-in plugin `allowlist`".
        origin: String,
        /// The component.
        bytes: Cow<'static, [u8]>,
    },
    /// A component file, optionally pinned to a SHA-256 (hex) that is enforced.
    File {
        /// The file.
        path: PathBuf,
        /// The expected SHA-256 of its bytes.
        sha256: Option<String>,
    },
}

impl PluginSource {
    /// Component bytes held by the embedder, named `origin` in messages.
    pub fn bytes(origin: impl Into<String>, bytes: impl Into<Cow<'static, [u8]>>) -> Self {
        Self::Bytes {
            origin: origin.into(),
            bytes: bytes.into(),
        }
    }
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes { origin, .. } => f.write_str(origin),
            Self::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// One entry of the chain to load.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// The plugin's name in the chain (logs, metrics, decisions).
    pub name: String,
    /// Its component.
    pub source: PluginSource,
    /// The operator's configuration table, handed to the plugin's `configure` as JSON.
    pub config: serde_json::Value,
    /// What the operator grants the plugin beyond the contract's defaults.
    pub grants: Grants,
}

/// Why a plugin could not be loaded. Every variant names the plugin's file (or built-in name)
/// and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{origin}: cannot read: {source}")]
    Read {
        /// The file.
        origin: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's SHA-256 differs from the pinned one.
    #[error(
        "{origin}: sha256 mismatch: the configuration pins {expected} but the file is {actual}"
    )]
    HashMismatch {
        /// The file.
        origin: String,
        /// The pinned hash.
        expected: String,
        /// The file's hash.
        actual: String,
    },
    /// Not WebAssembly at all.
    #[error(
        "{origin}: not a WebAssembly component (the file does not start with the `\\0asm` magic)"
    )]
    NotWasm {
        /// The file.
        origin: String,
    },
    /// A core module where a component is needed.
    #[error(
        "{origin}: is a core WebAssembly module, not a component; build the plugin for `wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule {
        /// The file.
        origin: String,
    },
    /// A binary version this runtime does not support.
    #[error("{origin}: unsupported WebAssembly binary version (header {header})")]
    UnknownVersion {
        /// The file.
        origin: String,
        /// The header bytes, hex.
        header: String,
    },
    /// The component is malformed or uses features the engine does not enable.
    #[error("{origin}: invalid component: {source:#}")]
    Invalid {
        /// The file.
        origin: String,
        /// wasmtime's explanation.
        #[source]
        source: wasmtime::Error,
    },
    /// The component does not implement the `auth-plugin` world of a supported version.
    #[error("{origin}: does not implement trustgate:auth/auth-plugin: {detail}")]
    WrongWorld {
        /// The file.
        origin: String,
        /// What is missing or different.
        detail: String,
    },
    /// The plugin's `configure` rejected its configuration (the plugin's message, verbatim).
    #[error("plugin `{plugin}` ({origin}) rejected its configuration: {message}")]
    Configure {
        /// The plugin's name.
        plugin: String,
        /// The file.
        origin: String,
        /// The plugin's own message.
        message: String,
    },
    /// The plugin failed in the sandbox while being instantiated or configured.
    #[error("plugin `{plugin}` ({origin}) failed while loading: {failure}")]
    Failed {
        /// The plugin's name.
        plugin: String,
        /// The file.
        origin: String,
        /// What happened.
        failure: PluginFailure,
    },
    /// The plugin's configuration could not be serialised for `configure`.
    #[error("plugin `{plugin}`: configuration cannot be passed to the plugin: {source}")]
    Config {
        /// The plugin's name.
        plugin: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A component compiled and checked against the world, not yet configured.
#[derive(Clone)]
pub struct Compiled {
    origin: String,
    sha256: String,
    size: usize,
    component: Component,
    cache: CacheOutcome,
    version: ContractVersion,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("origin", &self.origin)
            .field("sha256", &self.sha256)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Compiled {
    /// SHA-256 (hex) of the component bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
    /// Whether compilation was served from the cache.
    pub fn cache(&self) -> CacheOutcome {
        self.cache
    }
    /// The contract version the component targets.
    pub fn contract(&self) -> ContractVersion {
        self.version
    }
}

/// What `trustgate plugin inspect` reports about a component.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Size in bytes.
    pub size: usize,
    /// SHA-256, hex.
    pub sha256: String,
    /// Top-level imports.
    pub imports: Vec<Item>,
    /// Top-level exports.
    pub exports: Vec<Item>,
    /// `Ok(version)` if it implements the plugin world of a supported contract version, else
    /// why not.
    pub world: Result<ContractVersion, String>,
}

/// One engine, one linker, one epoch ticker: everything needed to load and run plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    settings: RuntimeSettings,
    limits: SandboxLimits,
    cache: Option<CompileCache>,
    services: Arc<dyn HostServices>,
    ticker: Arc<engine::EpochTicker>,
    budget: Arc<MemoryBudget>,
    /// Components compiled by this runtime, by SHA-256 of their bytes.
    compiled: std::sync::Mutex<std::collections::HashMap<String, Component>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a runtime could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("cannot create the WebAssembly engine: {0:#}")]
    Engine(#[source] wasmtime::Error),
    /// The compile cache directory could not be created.
    #[error("cannot use plugin cache directory {dir}: {source}")]
    Cache {
        /// The directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The epoch ticker thread could not be started.
    #[error("cannot start the deadline ticker: {0}")]
    Ticker(#[source] std::io::Error),
}

impl Runtime {
    /// Creates a runtime whose plugins reach the outside world only through `services`.
    pub fn new(
        settings: RuntimeSettings,
        services: Arc<dyn HostServices>,
    ) -> Result<Self, RuntimeError> {
        let engine = engine::new_engine().map_err(RuntimeError::Engine)?;
        let linker = contract::linker(&engine).map_err(RuntimeError::Engine)?;
        let cache = match &settings.cache_dir {
            Some(dir) => {
                Some(
                    CompileCache::new(dir, &engine).map_err(|source| RuntimeError::Cache {
                        dir: dir.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let ticker = engine::EpochTicker::start(&engine).map_err(RuntimeError::Ticker)?;
        Ok(Self {
            engine,
            linker,
            limits: SandboxLimits::from(&settings),
            budget: Arc::new(MemoryBudget::new(settings.memory_budget_bytes())),
            compiled: Default::default(),
            settings,
            cache,
            services,
            ticker: Arc::new(ticker),
        })
    }

    /// The runtime's settings.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.settings
    }

    /// The wasmtime engine every plugin of this runtime is compiled for and runs on, for
    /// embedders that measure or run their own components on the same settings (the bench
    /// binary's floor).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads a plugin's bytes, enforcing a sha256 pin.
    pub fn read_source(
        &self,
        source: &PluginSource,
    ) -> Result<(String, Cow<'static, [u8]>), LoadError> {
        let origin = source.to_string();
        match source {
            PluginSource::Bytes { bytes, .. } => Ok((origin, bytes.clone())),
            PluginSource::File { path, sha256 } => {
                let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
                    origin: origin.clone(),
                    source,
                })?;
                if let Some(expected) = sha256 {
                    let actual = sha256_hex(&bytes);
                    if !actual.eq_ignore_ascii_case(expected.trim()) {
                        return Err(LoadError::HashMismatch {
                            origin,
                            expected: expected.clone(),
                            actual,
                        });
                    }
                }
                Ok((origin, Cow::Owned(bytes)))
            }
        }
    }

    fn component(&self, origin: &str, bytes: &[u8]) -> Result<Compiled, LoadError> {
        match binary_kind(bytes) {
            BinaryKind::Component => {}
            BinaryKind::NotWasm => {
                return Err(LoadError::NotWasm {
                    origin: origin.into(),
                });
            }
            BinaryKind::CoreModule => {
                return Err(LoadError::CoreModule {
                    origin: origin.into(),
                });
            }
            BinaryKind::UnknownVersion => {
                return Err(LoadError::UnknownVersion {
                    origin: origin.into(),
                    header: hex::encode(&bytes[..8.min(bytes.len())]),
                });
            }
        }
        let sha256 = sha256_hex(bytes);
        // The same component twice in one chain (or one test) is compiled once.
        let known = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sha256)
            .cloned();
        let cached = known.map(|c| (c, CacheOutcome::Hit)).or_else(|| {
            self.cache
                .as_ref()
                .and_then(|c| c.load(&self.engine, &sha256))
                .map(|c| (c, CacheOutcome::Hit))
        });
        let (component, cache) = match cached {
            Some(hit) => hit,
            None => {
                let started = Instant::now();
                let component =
                    Component::new(&self.engine, bytes).map_err(|source| LoadError::Invalid {
                        origin: origin.into(),
                        source,
                    })?;
                tracing::debug!(
                    origin,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "compiled plugin"
                );
                match &self.cache {
                    Some(c) => {
                        c.store(&sha256, &component);
                        (component, CacheOutcome::Miss)
                    }
                    None => (component, CacheOutcome::Disabled),
                }
            }
        };
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha256.clone(), component.clone());
        Ok(Compiled {
            origin: origin.into(),
            sha256,
            size: bytes.len(),
            component,
            cache,
            version: ContractVersion::CURRENT,
        })
    }

    /// Compiles `bytes` and checks that they implement the plugin world.
    pub fn compile(&self, origin: &str, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let mut compiled = self.component(origin, bytes)?;
        let (imports, exports) = world::items(&self.engine, &compiled.component);
        compiled.version =
            world::check(&imports, &exports).map_err(|detail| LoadError::WrongWorld {
                origin: origin.into(),
                detail,
            })?;
        Ok(compiled)
    }

    /// Describes a component without requiring it to be a valid plugin.
    pub fn inspect(&self, origin: &str, bytes: &[u8]) -> Result<Inspection, LoadError> {
        let compiled = self.component(origin, bytes)?;
        let (imports, exports) = world::items(&self.engine, &compiled.component);
        let world = world::check(&imports, &exports).and_then(|version| {
            let compiled = Compiled {
                version,
                ..compiled.clone()
            };
            self.prepare(&compiled)
                .map(|_| version)
                .map_err(|e| e.to_string())
        });
        Ok(Inspection {
            size: compiled.size,
            sha256: compiled.sha256,
            imports,
            exports,
            world,
        })
    }

    fn prepare(&self, compiled: &Compiled) -> Result<Pre, LoadError> {
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            origin: compiled.origin.clone(),
            detail: format!("{e:#}"),
        };
        let pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(wrong)?;
        Pre::new(compiled.version, pre).map_err(wrong)
    }

    /// Loads a compiled component as plugin `name` with `config`, running `configure` once so
    /// a bad configuration is reported now rather than on the first connection.
    pub async fn instantiate(
        &self,
        name: &str,
        compiled: &Compiled,
        config: &serde_json::Value,
        grants: Grants,
    ) -> Result<WasmPlugin, LoadError> {
        let pre = self.prepare(compiled)?;
        let config_json = serde_json::to_string(config).map_err(|source| LoadError::Config {
            plugin: name.into(),
            source,
        })?;
        let plugin = WasmPlugin::new(PoolParts {
            name: Arc::from(name),
            sha256: compiled.sha256.clone(),
            config_json,
            pre,
            services: self.services.clone(),
            limits: self.limits,
            grants,
            max_idle: self.settings.max_idle_instances,
            max_instances: self.settings.max_instances,
            instance_wait: self.settings.instance_wait(),
            budget: self.budget.clone(),
            stats: Arc::default(),
            ticker: self.ticker.clone(),
        });
        if compiled.version == ContractVersion::V0_1 {
            tracing::warn!(
                plugin = name,
                origin = compiled.origin,
                "built against trustgate:auth@0.1.0, which is deprecated: rebuild it against trustgate:auth@0.2.0 (0.1.0 copies the raw credentials into every plugin)"
            );
        }
        plugin.warm_up().await.map_err(|e| match e {
            InstanceError::Configure(message) => LoadError::Configure {
                plugin: name.into(),
                origin: compiled.origin.clone(),
                message,
            },
            InstanceError::Failed(failure) => LoadError::Failed {
                plugin: name.into(),
                origin: compiled.origin.clone(),
                failure,
            },
        })?;
        Ok(plugin)
    }

    /// Reads, verifies, compiles and configures one plugin.
    pub async fn load(&self, spec: &PluginSpec) -> Result<WasmPlugin, LoadError> {
        let (origin, bytes) = self.read_source(&spec.source)?;
        let compiled = self.compile(&origin, &bytes)?;
        self.instantiate(&spec.name, &compiled, &spec.config, spec.grants)
            .await
    }

    /// Loads every plugin of a chain, in order; the first failure aborts the whole chain and
    /// comes back with the index of the spec that failed.
    pub async fn load_chain(
        &self,
        specs: &[PluginSpec],
    ) -> Result<(Chain, Vec<Arc<WasmPlugin>>), (usize, LoadError)> {
        let mut plugins = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            plugins.push(Arc::new(self.load(spec).await.map_err(|e| (i, e))?));
        }
        let providers = plugins
            .iter()
            .map(|p| p.clone() as Arc<dyn AuthProvider>)
            .collect();
        Ok((Chain::new(providers), plugins))
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads a file for `inspect`/`check`, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        origin: path.display().to_string(),
        source,
    })
}
