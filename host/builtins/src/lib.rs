//! trustgate's first-party plugins, compiled from `plugins/` for `wasm32-wasip2` by this crate's
//! build script and embedded as bytes, so a gateway needs no plugin files for its standard
//! chain. Nothing here runs them: hand the bytes to `trustgate-runtime`.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component bytes of a built-in plugin.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
