//! The `trustgate` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use trustgate::config::{Config, DEFAULT_CONFIG};
use trustgate::plugin::{NoKubernetes, Runtime, RuntimeOptions, read_file};

#[derive(Parser)]
#[command(
    name = "trustgate",
    version,
    about = "WebSocket gateway with WebAssembly auth plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with gateway configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show a component's world, imports, exports, size and sha256.
    Inspect {
        /// The component file.
        file: PathBuf,
    },
    /// Load a component and run its `configure` with a configuration table.
    Check {
        /// The component file.
        file: PathBuf,
        /// A TOML file holding the plugin's configuration table.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and load its whole auth chain (the embedded default without FILE).
    Check {
        /// The configuration file.
        file: Option<PathBuf>,
    },
    /// Print the embedded default configuration.
    Default,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRUSTGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plugin(PluginCommand::Inspect { file }) => inspect(file),
        Command::Plugin(PluginCommand::Check { file, config }) => check_plugin(file, config).await,
        Command::Config(ConfigCommand::Check { file }) => check_config(file).await,
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
    }
}

fn plugin_runtime(options: RuntimeOptions) -> Result<Runtime> {
    Ok(Runtime::new(options, Arc::new(NoKubernetes))?)
}

fn inspect(file: PathBuf) -> Result<()> {
    let runtime = plugin_runtime(RuntimeOptions::default())?;
    let bytes = read_file(&file)?;
    let origin = file.display().to_string();
    let info = runtime.inspect(&origin, &bytes)?;
    println!("file:    {origin}");
    println!("size:    {} bytes", info.size);
    println!("sha256:  {}", info.sha256);
    match &info.world {
        Ok(world) => println!("world:   {world}"),
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

async fn check_plugin(file: PathBuf, config: Option<PathBuf>) -> Result<()> {
    let table = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            trustgate::config::toml_to_json(&toml::Value::Table(table))
        }
        None => serde_json::json!({}),
    };
    let runtime = plugin_runtime(RuntimeOptions::default())?;
    let bytes = read_file(&file)?;
    let origin = file.display().to_string();
    let compiled = runtime.compile(&origin, &bytes)?;
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    runtime.instantiate(&name, &compiled, &table).await?;
    println!(
        "ok: {origin} (sha256 {}) accepted its configuration",
        compiled.sha256()
    );
    Ok(())
}

async fn check_config(file: Option<PathBuf>) -> Result<()> {
    let config = match &file {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded_default()?,
    };
    let runtime = plugin_runtime(config.runtime_options())?;
    let (_, plugins) = config.load_chain(&runtime).await?;
    let origin = file.map_or("<embedded default>".to_string(), |p| {
        p.display().to_string()
    });
    println!("ok: {origin}");
    println!("auth chain:");
    for (i, p) in plugins.iter().enumerate() {
        println!("  {}. {} (sha256 {})", i + 1, p.name(), p.sha256());
    }
    Ok(())
}
