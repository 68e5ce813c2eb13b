//! Hot reload of the auth chain: the new configuration and every plugin are fully loaded
//! (pins checked, `configure` run) before one atomic swap; on any failure the running chain
//! keeps serving. Handshakes in flight finish on the chain they started with (they hold it);
//! live sessions are untouched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::StartError;
use crate::state::{GatewayState, LoadedChain, log_chain};
use trustgate_runtime::{HostServices, Runtime};

/// A handle that reloads a running gateway's chain.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) state: Arc<GatewayState>,
    pub(crate) services: Arc<dyn HostServices>,
    /// The compile cache the gateway started with: a reloaded file that names none keeps it,
    /// so a reload of an unchanged plugin loads its compiled artifact.
    pub(crate) cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// Loads the chain of `config` and swaps it in. Settings outside `[plugins]` and
    /// `[[auth.plugins]]` (listeners, limits, Kubernetes client) need a restart.
    pub async fn reload(&self, config: &Config) -> Result<usize, StartError> {
        let loaded = async {
            let mut settings = config.plugins.clone();
            if settings.cache_dir.is_none() {
                settings.cache_dir = self.cache_dir.clone();
            }
            let runtime = Runtime::new(settings, self.services.clone())?;
            let (chain, plugins) = config.load_chain(&runtime).await?;
            log_chain(&plugins);
            Ok::<_, StartError>(LoadedChain {
                chain: Arc::new(chain),
                plugins,
            })
        }
        .await;
        match loaded {
            Ok(loaded) => {
                let n = loaded.plugins.len();
                self.state.swap_chain(loaded);
                self.state.metrics.record_reload(true);
                tracing::info!(origin = config.origin(), plugins = n, "auth chain reloaded");
                Ok(n)
            }
            Err(e) => {
                self.state.metrics.record_reload(false);
                tracing::error!(error = %e, "reload refused; the previous auth chain keeps serving");
                Err(e)
            }
        }
    }

    /// Reads `path` and reloads from it.
    pub async fn reload_file(&self, path: &Path) -> Result<usize, StartError> {
        match Config::from_file(path) {
            Ok(config) => self.reload(&config).await,
            Err(e) => {
                self.state.metrics.record_reload(false);
                tracing::error!(error = %e, "reload refused; the previous auth chain keeps serving");
                Err(e.into())
            }
        }
    }

    /// Reloads on SIGHUP and whenever the file's content changes (checked every `poll`).
    pub async fn watch(self, path: PathBuf, poll: Duration) {
        let digest = |p: &Path| std::fs::read(p).ok().map(|b| Sha256::digest(b).to_vec());
        let mut last = digest(&path);
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut ticker = tokio::time::interval(poll);
        loop {
            #[cfg(unix)]
            let hup_fired = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup_fired = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = hup_fired => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    last = digest(&path);
                    let _ = self.reload_file(&path).await;
                }
                _ = ticker.tick() => {
                    let now = digest(&path);
                    if now.is_some() && now != last {
                        tracing::info!("{} changed: reloading", path.display());
                        last = now;
                        let _ = self.reload_file(&path).await;
                    }
                }
            }
        }
    }
}
