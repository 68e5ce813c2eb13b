//! `trustgate auth explain`: the trace and the outcome of one request, offline.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use trustgate_gateway::config::Config;
use trustgate_gateway::{ExplainInput, ExplainOutcome, explain};
use trustgate_protocol::Role;
use trustgate_runtime::StepKind;

/// The arguments of `trustgate auth explain`.
#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    /// The gateway configuration.
    #[arg(long)]
    config: PathBuf,
    /// The requested role.
    #[arg(long, value_enum)]
    role: RoleArg,
    /// A file holding the bearer token (e.g. a projected ServiceAccount token).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The auth method (default: `k8s-sa-trust` with a token, `none` without).
    #[arg(long)]
    method: Option<String>,
    /// Where the client connects from.
    #[arg(long, default_value = "127.0.0.1")]
    remote_addr: IpAddr,
    /// A device key file (as `trustgate worker --device-key` keeps it): the client proves it.
    /// Created if it does not exist. Operators need one: they sign in with a paired device.
    #[arg(long)]
    device_key: Option<PathBuf>,
    /// Requested scopes.
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// The client id.
    #[arg(long, default_value = "trustgate-explain")]
    client_id: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Worker,
    Operator,
}

/// The device a `--device-key` file proves: created if the file does not exist yet (the same
/// file `trustgate worker --device-key` keeps), so an operator's first explanation needs no
/// other tool.
fn device(path: &std::path::Path) -> Result<(String, String)> {
    let existed = path.exists();
    let key = crate::worker::load_or_create_key(path)?;
    if !existed {
        eprintln!(
            "created a new device key in {} (device {}); keep it to sign in as this device",
            path.display(),
            key.id()
        );
    }
    Ok((key.id(), key.public_key()))
}

/// Runs the explanation and prints it.
pub(crate) async fn run(args: ExplainArgs) -> Result<()> {
    let has_device = args.device_key.is_some();
    let mut config = Config::from_file(&args.config)?;
    config.plugins.cache_dir = super::cache::dir(config.plugins.cache_dir.take());
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let method = args.method.clone().unwrap_or_else(|| {
        if token.is_some() {
            "k8s-sa-trust".into()
        } else {
            "none".into()
        }
    });
    let input = ExplainInput {
        role: match args.role {
            RoleArg::Worker => Role::Worker,
            RoleArg::Operator => Role::Operator,
        },
        scopes: args.scopes,
        method,
        token,
        device_token: None,
        device: args.device_key.as_deref().map(device).transpose()?,
        remote_addr: SocketAddr::new(args.remote_addr, 40000),
        tls: false,
        client_id: args.client_id,
    };
    let e = explain(&config, &input).await?;
    println!("chain:");
    if e.steps.is_empty() {
        println!("  (no plugin ran)");
    }
    for (i, s) in e.steps.iter().enumerate() {
        let detail = match (s.kind, &s.code, &s.reason) {
            (StepKind::Deny, Some(code), Some(reason)) => format!(" {}/{reason}", code.as_str()),
            (StepKind::Failed, _, Some(cause)) => format!(" ({cause})"),
            _ => String::new(),
        };
        println!(
            "  {}. {:<16} {:<8}{detail}  {:.3} ms",
            i + 1,
            s.plugin,
            s.kind.as_str(),
            s.elapsed.as_secs_f64() * 1000.0
        );
    }
    println!(
        "subject: {}",
        e.subject.as_deref().unwrap_or("(none established)")
    );
    match e.outcome {
        ExplainOutcome::Connected {
            subject,
            method,
            role,
            pairing,
            expires_at_ms,
        } => {
            println!(
                "outcome: hello-ok as `{subject}` (method {method}, role {}, pairing {pairing:?}{})",
                role.as_str(),
                expires_at_ms
                    .map(|ms| format!(", expires at {ms}"))
                    .unwrap_or_default()
            );
        }
        ExplainOutcome::Refused { error, cause } => {
            let reason = error
                .details
                .as_ref()
                .and_then(|d| d.get("reason"))
                .and_then(|r| r.as_str())
                .unwrap_or("-");
            println!(
                "outcome: {} (retryable: {}), reason `{reason}`: {}",
                error.code, error.retryable, error.message
            );
            println!("log:     {cause}");
            if matches!(reason, "device-required" | "no-credentials") && !has_device {
                println!(
                    "hint:    present a device with --device-key FILE (created if missing; the key `trustgate worker --device-key FILE` uses)"
                );
            }
        }
        ExplainOutcome::NotPaired { message, cause } => {
            println!("outcome: NOT_PAIRED: {message} (a connect would file a pairing request)");
            println!("log:     {cause}");
        }
    }
    Ok(())
}
