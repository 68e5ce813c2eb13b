//! The `trustgate` command line: argument parsing, logging setup and the subcommands. The
//! binary is only [`main`]; keeping it here lets the test suite build the very same command
//! line as a binary of its own.

use crate::commands;
#[cfg(feature = "dev-cluster")]
use crate::demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use trustgate_gateway::config::{Config, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(
    name = "trustgate",
    version,
    about = "WebSocket gateway with WebAssembly auth plugins"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (on the embedded default configuration without --config).
    Serve {
        /// The configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a worker that connects to a gateway and serves invocations.
    Worker(WorkerArgs),
    /// Manage device pairing through the gateway's admin API.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Run a local demonstration: a development cluster issuer, a gateway, Kubernetes workers,
    /// a denied intruder, and a device paired by an automatic operator. Exits 0 on success.
    #[cfg(feature = "dev-cluster")]
    Demo {
        /// Where the local issuer keeps its signing key.
        #[arg(long, default_value = "trustgate-dev")]
        dir: PathBuf,
    },
    /// Development helpers around the local cluster issuer.
    #[cfg(feature = "dev-cluster")]
    #[command(subcommand)]
    Dev(DevCommand),
    /// Work with plugin components.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Work with gateway configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Understand authentication decisions.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `credentials` of an `[[auth.plugins]]` entry, on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CredentialsArg {
    None,
    Read,
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
        /// The component file (or use --builtin).
        #[arg(required_unless_present = "builtin")]
        file: Option<PathBuf>,
        /// A first-party plugin instead of a file (`cel`, `allowlist`, `k8s-sa-trust`).
        #[arg(long, conflicts_with = "file")]
        builtin: Option<String>,
        /// A TOML file holding the plugin's configuration table.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Grant the plugin reading the raw credentials, as `credentials = "read"` would.
        #[arg(long, value_enum, default_value_t = CredentialsArg::None)]
        credentials: CredentialsArg,
    },
    /// Scaffold a plugin project that builds as is: a sample policy, its configuration, a
    /// case table, a build script, and its own copies of the contract and the SDK.
    New {
        /// The plugin's name (lowercase letters, digits, `-`); also its directory.
        name: String,
        /// The language.
        #[arg(long, value_enum)]
        lang: commands::new::Lang,
        /// Where to create the directory (default: here).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run a plugin against a table of cases and report every decision that differs from the
    /// expected one. Exits non-zero if any case fails.
    Test {
        /// The component file (or use --builtin).
        #[arg(required_unless_present = "builtin")]
        file: Option<PathBuf>,
        /// A first-party plugin instead of a file (`cel`, `allowlist`, `k8s-sa-trust`).
        #[arg(long, conflicts_with = "file")]
        builtin: Option<String>,
        /// A TOML file holding the plugin's configuration table.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cases (TOML, `[[case]]` tables).
        #[arg(long)]
        cases: PathBuf,
        /// Grant the plugin reading the raw credentials, as `credentials = "read"` would.
        #[arg(long, value_enum, default_value_t = CredentialsArg::None)]
        credentials: CredentialsArg,
        /// Keep compiled components in this directory (as `[plugins] cache_dir` does), so a
        /// second run skips the compile.
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

#[cfg(feature = "dev-cluster")]
#[derive(Subcommand)]
enum DevCommand {
    /// Mint a ServiceAccount token from the local issuer (the one `demo` and `dev cluster` use).
    Token {
        /// Namespace.
        #[arg(long)]
        namespace: String,
        /// ServiceAccount name.
        #[arg(long)]
        service_account: String,
        /// Audience.
        #[arg(long, default_value = demo::AUDIENCE)]
        audience: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The pod the token is bound to (default: `<service-account>-<random>`), as a
        /// projected token names it (`kubernetes.io.pod.name`).
        #[arg(long)]
        pod: Option<String>,
        /// The bound pod's UID (default: one made up for that pod name).
        #[arg(long)]
        pod_uid: Option<String>,
        /// The node the bound pod runs on.
        #[arg(long, default_value = "node-1")]
        node: String,
        /// The issuer's directory.
        #[arg(long, default_value = "trustgate-dev")]
        dir: PathBuf,
    },
    /// Run the local cluster issuer (TokenReview, OIDC discovery, JWKS) and write a kubeconfig.
    Cluster {
        /// The issuer's directory (signing key, kubeconfig).
        #[arg(long, default_value = "trustgate-dev")]
        dir: PathBuf,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
    },
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// The gateway's WebSocket URL, e.g. ws://127.0.0.1:7400 or wss://gateway.example:443.
    #[arg(long)]
    gateway: String,
    /// Authenticate with the pod's projected ServiceAccount token.
    #[arg(long)]
    k8s_trust: bool,
    /// The projected token file (re-read on every connect and reauth).
    #[arg(long, default_value = crate::worker::DEFAULT_TOKEN_PATH)]
    token_path: PathBuf,
    /// A device key file (created if missing) for device pairing.
    #[arg(long)]
    device_key: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for wss://.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The client id to present.
    #[arg(long, default_value = "trustgate-worker")]
    client_id: String,
}

#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway configuration, to find the admin address and token file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The admin API base URL (overrides the configuration).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// The admin token file (overrides the configuration; or set TRUSTGATE_ADMIN_TOKEN).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// List pending pairing requests and approved devices.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve a pending pairing request.
    Approve {
        /// The request id (from `devices list` or the client's NOT_PAIRED error).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reject a pending pairing request.
    Reject {
        /// The request id.
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke an approved device: its tokens stop working and its live sessions are closed
    /// (4401) at once; its next connect is a new pairing request.
    Revoke {
        /// The device id (from `devices list`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Run a gateway configuration's chain offline on one request (with its Kubernetes client,
    /// if any) and print every plugin's step and the answer a client would get. Writes
    /// nothing: no pairing request, no device token.
    Explain(commands::explain::ExplainArgs),
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

/// Runs the command line on the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve { .. } | Command::Worker(_) => "info",
        #[cfg(feature = "dev-cluster")]
        Command::Demo { .. } => "error",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRUSTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only for a person at a terminal: escape codes in a log file or a collector are
    // noise at best.
    use std::io::IsTerminal as _;
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
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
        Command::Serve { config } => serve(config).await,
        Command::Worker(args) => worker(args).await,
        Command::Devices(cmd) => devices(cmd).await,
        #[cfg(feature = "dev-cluster")]
        Command::Demo { dir } => demo::run(&dir).await,
        #[cfg(feature = "dev-cluster")]
        Command::Dev(DevCommand::Token {
            namespace,
            service_account,
            audience,
            ttl,
            pod,
            pod_uid,
            node,
            dir,
        }) => {
            let binding = demo::PodBinding { pod, pod_uid, node };
            println!(
                "{}",
                demo::token(&dir, &namespace, &service_account, &audience, ttl, binding)?
            );
            Ok(())
        }
        #[cfg(feature = "dev-cluster")]
        Command::Dev(DevCommand::Cluster { dir, listen }) => demo::cluster(&dir, listen).await,
        Command::Plugin(PluginCommand::Inspect { file }) => commands::plugin::inspect(file),
        Command::Plugin(PluginCommand::Check {
            file,
            builtin,
            config,
            credentials,
        }) => {
            commands::plugin::check(
                source(file, builtin)?,
                config,
                credentials == CredentialsArg::Read,
            )
            .await
        }
        Command::Plugin(PluginCommand::New { name, lang, dir }) => {
            let dir = commands::new::run(&name, lang, dir)?;
            println!(
                "created {}: see its README.md to build and test it",
                dir.display()
            );
            Ok(())
        }
        Command::Plugin(PluginCommand::Test {
            file,
            builtin,
            config,
            cases,
            credentials,
            cache_dir,
        }) => {
            commands::plugin::test(
                source(file, builtin)?,
                config,
                cases,
                credentials == CredentialsArg::Read,
                cache_dir,
            )
            .await
        }
        Command::Config(ConfigCommand::Check { file }) => check_config(file).await,
        Command::Auth(AuthCommand::Explain(args)) => commands::explain::run(args).await,
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
    }
}

/// A plugin named by file or by `--builtin`.
fn source(file: Option<PathBuf>, builtin: Option<String>) -> Result<commands::plugin::Source> {
    Ok(match (file, builtin) {
        (Some(f), _) => commands::plugin::Source::File(f),
        (None, Some(b)) => commands::plugin::Source::Builtin(b),
        (None, None) => bail!("give a component file or --builtin NAME"),
    })
}

/// The configuration, with the shared compile cache unless it names its own.
fn load_config(file: Option<&PathBuf>) -> Result<Config> {
    let mut config = match file {
        Some(path) => Config::from_file(path)?,
        None => Config::embedded_default()?,
    };
    config.plugins.cache_dir = commands::cache::dir(config.plugins.cache_dir.take());
    Ok(config)
}

async fn serve(config_path: Option<PathBuf>) -> Result<()> {
    let config = load_config(config_path.as_ref())?;
    let running = trustgate_gateway::start(&config).await?;
    if let Some(path) = config_path {
        // SIGHUP or a change of the file reloads the auth chain.
        tokio::spawn(
            running
                .reloader()
                .watch(path, std::time::Duration::from_secs(2)),
        );
    }
    let scheme = if running.tls { "wss" } else { "ws" };
    eprintln!(
        "trustgate {} serving {scheme}://{} (admin http://{}) with {} ({} plugins)",
        env!("CARGO_PKG_VERSION"),
        running.ws_addr,
        running.admin_addr,
        config.origin(),
        running.state.plugins().len(),
    );
    shutdown_signal().await;
    let drain = std::time::Duration::from_millis(config.gateway.drain_timeout_ms);
    eprintln!(
        "shutting down: sessions closed with 1012, up to {} ms to drain",
        drain.as_millis()
    );
    running.drain(drain).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let mut options = crate::worker::WorkerOptions::new(args.gateway);
    options.k8s_trust = args.k8s_trust;
    options.token_path = args.token_path;
    options.device_key = args.device_key;
    options.ca_file = args.ca;
    options.client_id = args.client_id;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    crate::worker::run(options, stop, None).await?;
    Ok(())
}

async fn devices(cmd: DevicesCommand) -> Result<()> {
    let (admin, call) = match &cmd {
        DevicesCommand::List { admin } => (admin, None),
        DevicesCommand::Approve { id, admin } => (admin, Some(("approve", id))),
        DevicesCommand::Reject { id, admin } => (admin, Some(("reject", id))),
        DevicesCommand::Revoke { id, admin } => (admin, Some(("revoke", id))),
    };
    // Ids go into the URL path: refuse anything that is not an id rather than encode it.
    if let Some((_, id)) = call
        && (id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        bail!("`{id}` is not a request or device id (letters, digits, `-` and `_` only)");
    }
    let config = load_config(admin.config.as_ref())?;
    let base = admin
        .admin
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.admin.listen));
    let token = match std::env::var("TRUSTGATE_ADMIN_TOKEN") {
        Ok(t) if admin.token_file.is_none() => t,
        _ => {
            let path = admin
                .token_file
                .clone()
                .unwrap_or_else(|| config.admin_token_file());
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?
                .trim()
                .to_string()
        }
    };
    let client = reqwest::Client::new();
    let request = match call {
        None => client.get(format!("{base}/api/pairing")),
        Some(("revoke", id)) => client.post(format!("{base}/api/devices/{id}/revoke")),
        Some((verb, id)) => client.post(format!("{base}/api/pairing/{id}/{verb}")),
    };
    let response = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("the admin API at {base} answered {status} without JSON"))?;
    if !status.is_success() {
        let message = body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown error");
        bail!("admin API: {status}: {message}");
    }
    match call {
        Some(("approve", id)) => println!("approved {id}"),
        Some(("revoke", id)) => println!(
            "revoked {id} ({} live sessions closed)",
            body["sessionsClosed"].as_u64().unwrap_or(0)
        ),
        Some((_, id)) => println!("rejected {id}"),
        None => print_devices(&body),
    }
    Ok(())
}

fn print_devices(body: &serde_json::Value) {
    let empty = Vec::new();
    let pending = body
        .get("pending")
        .and_then(|p| p.as_array())
        .unwrap_or(&empty);
    println!("pending requests: {}", pending.len());
    for p in pending {
        println!(
            "  {}  device {}  role {}  client {}  from {}",
            p["requestId"].as_str().unwrap_or("?"),
            p["deviceId"].as_str().unwrap_or("?"),
            p["role"].as_str().unwrap_or("?"),
            p["clientId"].as_str().unwrap_or("?"),
            p["remoteAddr"].as_str().unwrap_or("?"),
        );
    }
    let devices = body
        .get("devices")
        .and_then(|p| p.as_array())
        .unwrap_or(&empty);
    println!("approved devices: {}", devices.len());
    for d in devices {
        let roles: Vec<&str> = d["roles"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let seen = d["lastSeenMs"].as_u64().map_or("never".to_string(), utc);
        println!(
            "  {}  client {}  roles {}  approved {} by {}  last seen {}  live sessions {}  tokens {}",
            d["id"].as_str().unwrap_or("?"),
            d["clientId"].as_str().unwrap_or("?"),
            roles.join(","),
            d["approvedAtMs"].as_u64().map_or("?".to_string(), utc),
            d["approvedBy"].as_str().unwrap_or("?"),
            seen,
            d["liveSessions"].as_u64().unwrap_or(0),
            d["tokens"].as_array().map_or(0, Vec::len),
        );
    }
}

/// Unix milliseconds as an RFC 3339 UTC time, to the second.
fn utc(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
}

async fn check_config(file: Option<PathBuf>) -> Result<()> {
    let config = load_config(file.as_ref())?;
    // The check compiles into the cache a server (and the next check) loads from.
    let runtime = commands::plugin::runtime(config.plugins.clone())?;
    let (_, plugins) = config.load_chain(&runtime).await?;
    let origin = file.map_or("<embedded default>".to_string(), |p| {
        p.display().to_string()
    });
    println!("ok: {origin}");
    println!("auth chain:");
    for (i, p) in plugins.iter().enumerate() {
        let grant = if p.reads_credentials() {
            ", reads credentials"
        } else {
            ""
        };
        println!(
            "  {}. {} (sha256 {}, {}{grant})",
            i + 1,
            p.name(),
            p.sha256(),
            p.contract()
        );
    }
    Ok(())
}
