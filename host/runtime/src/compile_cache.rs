//! On-disk cache of compiled components, so a restart does not pay Cranelift again.
//!
//! An entry is keyed by the SHA-256 of the component bytes and the engine's compatibility
//! hash (wasmtime version and every setting that affects code generation), so a changed
//! plugin, a new gateway build or a new engine setting all miss. Next to each artifact a
//! checksum file guards against a truncated or damaged artifact: a mismatch is treated as a
//! miss and the entry is rewritten.
//!
//! A hit maps the artifact (`Component::deserialize_file`) instead of reading and copying it,
//! and the checksum is a CRC-32 (SIMD, ~10 GB/s) rather than a cryptographic hash: it guards
//! against accidents — the directory is written by this process only, and an attacker who
//! could write an artifact could write its checksum too. For an interpreter-sized component
//! (tens of MB compiled) this is the difference between ~100 ms and ~15 ms per load.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a half-written entry. No fsync: a cache entry lost in a crash is only a
/// recompilation, and the checksum file catches any other damage.
fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// CRC-32 of a file, read in chunks (no copy of the whole artifact in memory).
fn crc32_of_file(path: &Path) -> std::io::Result<u32> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// Whether a component came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded a previously compiled artifact.
    Hit,
    /// Compiled now (and stored, if the cache is writable).
    Miss,
    /// No cache configured.
    Disabled,
}

impl CompileCache {
    /// A cache in `dir` (created if missing) for components compiled by `engine`.
    pub fn new(dir: impl Into<PathBuf>, engine: &Engine) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, wasm_sha256: &str) -> (PathBuf, PathBuf) {
        let stem = format!("{wasm_sha256}-{}", self.engine_key);
        (
            self.dir.join(format!("{stem}.cwasm")),
            self.dir.join(format!("{stem}.cwasm.crc32")),
        )
    }

    /// Loads the compiled form of the component with this hash, if a sound entry exists.
    pub(crate) fn load(&self, engine: &Engine, wasm_sha256: &str) -> Option<Component> {
        let (artifact, sum) = self.paths(wasm_sha256);
        let expected = std::fs::read_to_string(&sum).ok()?;
        if format!("{:08x}", crc32_of_file(&artifact).ok()?) != expected.trim() {
            tracing::warn!(path = %artifact.display(), "compiled plugin cache entry is corrupt; recompiling");
            return None;
        }
        // SAFETY: `Component::deserialize_file` trusts that its input was produced by
        // `Component::serialize` on a compatible engine; arbitrary bytes could make wasmtime
        // execute attacker-chosen machine code. The file comes from this cache directory,
        // which only this process writes (created with the gateway's umask, entries written
        // atomically by rename, never modified in place), and matched the checksum written
        // with it, so it is what this engine serialised. wasmtime itself re-checks the engine
        // compatibility header and rejects a mismatch with an error.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize_file(engine, &artifact) };
        match component {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %artifact.display(), error = %e, "compiled plugin cache entry unusable; recompiling");
                None
            }
        }
    }

    /// Stores a compiled component. Failures are logged, not fatal: the cache is an
    /// optimisation.
    pub(crate) fn store(&self, wasm_sha256: &str, component: &Component) {
        let (artifact, sum) = self.paths(wasm_sha256);
        let result = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|bytes| {
                write_replace(&artifact, &bytes)?;
                write_replace(&sum, format!("{:08x}", crc32fast::hash(&bytes)).as_bytes())
            });
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the compiled plugin cache");
        }
    }
}
