//! The implementations of the `trustgate` subcommands whose arguments `main.rs` declares.

pub(crate) mod cache;
pub(crate) mod explain;
pub(crate) mod new;
pub(crate) mod plugin;
