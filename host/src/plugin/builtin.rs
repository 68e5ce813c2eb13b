//! First-party plugins compiled from `plugins/` by the build script and embedded in the
//! binary, so a gateway needs no plugin files for its standard chain.

include!(concat!(env!("OUT_DIR"), "/builtins.rs"));

/// The component bytes of a built-in plugin.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}
