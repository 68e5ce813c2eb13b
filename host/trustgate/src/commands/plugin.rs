//! `trustgate plugin ...`: look at, try and test plugin components without a gateway.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use trustgate_gateway::NO_KUBERNETES;
use trustgate_runtime::{
    ContractVersion, Grants, PluginSource, PluginSpec, Runtime, RuntimeSettings, read_file,
};

use crate::plugin_test::{Stubs, read_cases};

/// Which plugin `plugin test` runs.
pub(crate) enum Source {
    /// A component file.
    File(PathBuf),
    /// A first-party plugin.
    Builtin(String),
}

/// A runtime whose host calls answer `not-configured` (no Kubernetes).
pub(crate) fn runtime(settings: RuntimeSettings) -> Result<Runtime> {
    Ok(Runtime::new(settings, Arc::new(NO_KUBERNETES))?)
}

/// `trustgate plugin inspect FILE`.
pub(crate) fn inspect(file: PathBuf) -> Result<()> {
    let runtime = runtime(RuntimeSettings {
        cache_dir: super::cache::dir(None),
        ..RuntimeSettings::default()
    })?;
    let bytes = read_file(&file)?;
    let origin = file.display().to_string();
    let info = runtime.inspect(&origin, &bytes)?;
    println!("file:    {origin}");
    println!("size:    {} bytes", info.size);
    println!("sha256:  {}", info.sha256);
    match &info.world {
        Ok(version) => {
            println!("world:   {}", version.world());
            println!("contract: {}", version.package());
            match version {
                ContractVersion::V0_1 => println!(
                    "credentials: always readable (0.1.0 copies them into every request; deprecated, rebuild against {})",
                    ContractVersion::CURRENT.package()
                ),
                ContractVersion::V0_2 | ContractVersion::V0_3 => println!(
                    "credentials: opaque; readable only with `credentials = \"read\"` in its [[auth.plugins]] entry"
                ),
            }
        }
        Err(_) => println!("world:   (none: not a trustgate auth plugin)"),
    }
    println!("imports:");
    for item in &info.imports {
        println!("  {:<9} {}", item.kind, item.name);
    }
    println!("exports:");
    for item in &info.exports {
        println!("  {:<9} {}", item.kind, item.name);
    }
    if let Err(why) = info.world {
        bail!("{why}");
    }
    Ok(())
}

/// A plugin's configuration table from a TOML file, as its `configure` gets it.
fn config_table(config: Option<&PathBuf>) -> Result<serde_json::Value> {
    Ok(match config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            trustgate_gateway::config::toml_to_json(&toml::Value::Table(table))
        }
        None => serde_json::json!({}),
    })
}

/// `trustgate plugin check FILE`.
pub(crate) async fn check(
    source: Source,
    config: Option<PathBuf>,
    read_credentials: bool,
) -> Result<()> {
    let table = config_table(config.as_ref())?;
    let runtime = runtime(RuntimeSettings {
        cache_dir: super::cache::dir(None),
        ..RuntimeSettings::default()
    })?;
    let (name, origin, bytes) = match source {
        Source::File(file) => (
            file.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into()),
            file.display().to_string(),
            read_file(&file)?,
        ),
        Source::Builtin(name) => {
            let bytes = builtin_bytes(&name)?;
            (name.clone(), format!("builtin:{name}"), bytes.to_vec())
        }
    };
    let compiled = runtime.compile(&origin, &bytes)?;
    let grants = Grants { read_credentials };
    runtime
        .instantiate(&name, &compiled, &table, grants)
        .await?;
    println!(
        "ok: {origin} (sha256 {}) accepted its configuration",
        compiled.sha256()
    );
    Ok(())
}

/// `trustgate plugin test`: every case against the plugin, a diff for each that fails.
pub(crate) async fn test(
    source: Source,
    config: Option<PathBuf>,
    cases: PathBuf,
    read_credentials: bool,
    cache_dir: Option<PathBuf>,
) -> Result<()> {
    let cases = read_cases(&cases)?;
    let table = config_table(config.as_ref())?;
    let stubs = Arc::new(Stubs::default());
    let settings = RuntimeSettings {
        cache_dir: super::cache::dir(cache_dir),
        ..RuntimeSettings::default()
    };
    let runtime = Runtime::new(settings, stubs.clone())?;
    let (name, source) = match source {
        Source::File(path) => (
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "plugin".into()),
            PluginSource::File { path, sha256: None },
        ),
        Source::Builtin(name) => {
            let bytes = builtin_bytes(&name)?;
            (
                name.clone(),
                PluginSource::bytes(format!("built-in plugin `{name}`"), bytes),
            )
        }
    };
    let plugin = runtime
        .load(&PluginSpec {
            name,
            source,
            config: table,
            grants: Grants { read_credentials },
        })
        .await?;
    let (report, passed) = crate::plugin_test::run(&plugin, &stubs, &cases).await;
    print!("{report}");
    if !passed {
        bail!("some cases failed");
    }
    Ok(())
}

/// A first-party plugin's component, or an error listing the ones there are.
fn builtin_bytes(name: &str) -> Result<&'static [u8]> {
    match trustgate_builtins::builtin(name) {
        Some(bytes) => Ok(bytes),
        None => {
            let names: Vec<&str> = trustgate_builtins::BUILTINS
                .iter()
                .map(|(n, _)| *n)
                .collect();
            bail!(
                "no built-in plugin named `{name}` (built-ins: {})",
                names.join(", ")
            )
        }
    }
}
