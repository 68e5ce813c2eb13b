//! The top of trustgate: what the `trustgate` binary offers besides the gateway itself.
//!
//! - [`cli`]: the command line (`trustgate serve`, `plugin`, `auth explain`, `devices`, ...).
//! - [`worker`]: the worker client (`trustgate worker`), a client of the public protocol only.
//!
//! The layers below are crates of their own: `trustgate-protocol` (wire types),
//! `trustgate-runtime` (the plugin host), `trustgate-k8s` (the Kubernetes client),
//! `trustgate-gateway` (the server that composes them) and, for `trustgate demo` and
//! `trustgate dev`, `trustgate-devcluster`.

pub mod cli;
mod commands;
#[cfg(feature = "dev-cluster")]
mod demo;
mod plugin_test;
pub mod worker;
