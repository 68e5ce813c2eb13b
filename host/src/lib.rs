//! trustgate: a WebSocket gateway whose authentication is a chain of sandboxed WebAssembly
//! plugins.
//!
//! - [`plugin`]: the plugin runtime (WIT bindings, sandbox, loader, chain). Knows nothing of
//!   the gateway.
//! - [`config`]: the TOML configuration with precise errors.

pub mod config;
pub mod fsutil;
pub mod gateway;
pub mod k8s;
pub mod plugin;
pub mod protocol;
pub mod time;
pub mod tls;
pub mod worker;
