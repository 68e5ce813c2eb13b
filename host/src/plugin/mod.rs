//! The plugin runtime: loads WebAssembly components that implement the `auth-plugin` world
//! (`wit/auth.wit`), runs them sandboxed, and composes them into a [`Chain`].
//!
//! This module knows nothing of WebSockets or the gateway: it takes [`Request`]s and gives
//! [`Verdict`]s.

mod bindings;
mod builtin;
mod cache;
mod chain;
mod engine;
mod instance;
mod sandbox;
mod services;
mod world;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

pub use bindings::{
    Credentials, Decision, Denial, DenyCode, Device, HOST_IMPORT, Identity, LogLevel,
    PLUGIN_EXPORT, Peer, Request, ReviewError, TokenReviewStatus, UserInfo, WIT_PACKAGE, WORLD,
};
pub use builtin::{BUILTINS, builtin};
pub use cache::{CacheOutcome, CompileCache};
pub use chain::{AuthProvider, Chain, Outcome, PluginFailure, Step, StepKind, Verdict, merge};
pub use instance::{PluginStats, WasmPlugin};
pub use sandbox::Limits;
pub use services::{HostServices, NoKubernetes};
pub use world::{BinaryKind, Item, binary_kind};

use bindings::AuthPluginPre;
use instance::InstanceError;
use sandbox::StoreState;

/// Where a plugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// A first-party plugin embedded in the gateway binary, by name.
    Builtin(String),
    /// A component file, optionally pinned to a SHA-256 (hex) that is enforced.
    File {
        /// The file.
        path: PathBuf,
        /// The expected SHA-256 of its bytes.
        sha256: Option<String>,
    },
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "built-in plugin `{name}`"),
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
    /// No built-in plugin has this name.
    #[error("no built-in plugin named `{name}` (built-ins: {available})")]
    UnknownBuiltin {
        /// The requested name.
        name: String,
        /// The names there are.
        available: String,
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
    #[error("{origin}: invalid component: {detail}")]
    Invalid {
        /// The file.
        origin: String,
        /// wasmtime's explanation.
        detail: String,
    },
    /// The component does not implement `trustgate:auth/auth-plugin@0.1.0`.
    #[error("{origin}: does not implement {WORLD}: {detail}")]
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
    #[error("plugin `{plugin}`: configuration cannot be passed to the plugin: {detail}")]
    Config {
        /// The plugin's name.
        plugin: String,
        /// Why.
        detail: String,
    },
}

/// Settings of a [`Runtime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Limits applied to every plugin call.
    pub limits: Limits,
    /// Where compiled components are cached; `None` compiles on every start.
    pub cache_dir: Option<PathBuf>,
    /// How many configured idle instances each plugin keeps for reuse.
    pub max_idle_instances: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            cache_dir: None,
            max_idle_instances: std::thread::available_parallelism()
                .map(|n| n.get() * 4)
                .unwrap_or(8),
        }
    }
}

/// A component compiled and checked against the world, not yet configured.
#[derive(Clone)]
pub struct Compiled {
    origin: String,
    sha256: String,
    size: usize,
    component: Component,
    cache: CacheOutcome,
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
    /// `Ok(world)` if it implements the plugin world, else why not.
    pub world: Result<&'static str, String>,
}

/// One engine, one linker, one epoch ticker: everything needed to load and run plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StoreState>,
    options: RuntimeOptions,
    cache: Option<CompileCache>,
    services: Arc<dyn HostServices>,
    ticker: Arc<engine::EpochTicker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a runtime could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Engine(String),
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
    Ticker(std::io::Error),
}

impl Runtime {
    /// Creates a runtime whose plugins reach the outside world only through `services`.
    pub fn new(
        options: RuntimeOptions,
        services: Arc<dyn HostServices>,
    ) -> Result<Self, RuntimeError> {
        let engine = engine::new_engine().map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker =
            engine::new_linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let cache = match &options.cache_dir {
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
            options,
            cache,
            services,
            ticker: Arc::new(ticker),
        })
    }

    /// The runtime's options.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Reads a plugin's bytes, enforcing a sha256 pin.
    pub fn read_source(&self, source: &PluginSource) -> Result<(String, Vec<u8>), LoadError> {
        let origin = source.to_string();
        match source {
            PluginSource::Builtin(name) => builtin(name)
                .map(|bytes| (origin, bytes.to_vec()))
                .ok_or_else(|| LoadError::UnknownBuiltin {
                    name: name.clone(),
                    available: BUILTINS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
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
                Ok((origin, bytes))
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
        let cached = self
            .cache
            .as_ref()
            .and_then(|c| c.load(&self.engine, &sha256));
        let (component, cache) = match cached {
            Some(c) => (c, CacheOutcome::Hit),
            None => {
                let started = Instant::now();
                let component =
                    Component::new(&self.engine, bytes).map_err(|e| LoadError::Invalid {
                        origin: origin.into(),
                        detail: format!("{e:#}"),
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
        Ok(Compiled {
            origin: origin.into(),
            sha256,
            size: bytes.len(),
            component,
            cache,
        })
    }

    /// Compiles `bytes` and checks that they implement the plugin world.
    pub fn compile(&self, origin: &str, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let compiled = self.component(origin, bytes)?;
        let (imports, exports) = world::items(&self.engine, &compiled.component);
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
        let world = world::check(&imports, &exports).and_then(|()| {
            self.prepare(&compiled)
                .map(|_| WORLD)
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

    fn prepare(&self, compiled: &Compiled) -> Result<AuthPluginPre<StoreState>, LoadError> {
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            origin: compiled.origin.clone(),
            detail: format!("{e:#}"),
        };
        let pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(wrong)?;
        AuthPluginPre::new(pre).map_err(wrong)
    }

    /// Loads a compiled component as plugin `name` with `config`, running `configure` once so
    /// a bad configuration is reported now rather than on the first connection.
    pub async fn instantiate(
        &self,
        name: &str,
        compiled: &Compiled,
        config: &serde_json::Value,
    ) -> Result<WasmPlugin, LoadError> {
        let pre = self.prepare(compiled)?;
        let config_json = serde_json::to_string(config).map_err(|e| LoadError::Config {
            plugin: name.into(),
            detail: e.to_string(),
        })?;
        let plugin = WasmPlugin::new(
            Arc::from(name),
            compiled.sha256.clone(),
            config_json,
            pre,
            self.services.clone(),
            self.options.limits,
            self.options.max_idle_instances,
            self.ticker.clone(),
        );
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
        self.instantiate(&spec.name, &compiled, &spec.config).await
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
