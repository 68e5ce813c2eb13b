//! The on-disk compile cache every command shares by default, so the second `config check`,
//! `auth explain`, `plugin inspect|check|test`, `serve` or hot reload of an unchanged plugin
//! loads its compiled artifact instead of compiling it again (seconds for a Python or
//! JavaScript policy).

use std::path::PathBuf;

/// The cache directory to use: `explicit` (`--cache-dir`, `[plugins] cache_dir`) if given;
/// else `$TRUSTGATE_CACHE_DIR`; else `$XDG_CACHE_HOME/trustgate/compiled`; else
/// `$HOME/.cache/trustgate/compiled`. `None` — compile in memory, as before — when there is no
/// such directory and it cannot be created (a read-only filesystem, no home): a cache is an
/// optimisation, never a reason to fail.
pub(crate) fn dir(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("TRUSTGATE_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("trustgate/compiled")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/trustgate/compiled")))?;
    match std::fs::create_dir_all(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "no compile cache: compiling in memory");
            None
        }
    }
}
