//! The audit log: one JSON line per authentication decision (connect, reauth, re-validation),
//! separate from the diagnostic log. It never contains a token or a key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// `[audit]`: where the audit log goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// `stdout`, `off`, or a file path (appended; relative to the config file).
    pub output: AuditOutput,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            output: AuditOutput::Off,
        }
    }
}

/// Where audit lines go. In TOML: `"off"`, `"stdout"` (or `"-"`), or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum AuditOutput {
    /// Nowhere.
    Off,
    /// Standard output (the diagnostic log is on standard error).
    Stdout,
    /// Appended to a file.
    File(PathBuf),
}

impl From<String> for AuditOutput {
    fn from(s: String) -> Self {
        match s.as_str() {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            _ => Self::File(PathBuf::from(s)),
        }
    }
}

/// One decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord<'a> {
    /// Unix milliseconds.
    pub ts: u64,
    /// `connect`, `reauth` or `revalidate`.
    pub event: &'a str,
    /// The connection.
    pub conn_id: &'a str,
    /// The peer's address.
    pub peer: String,
    /// The presented auth method.
    pub method: &'a str,
    /// The requested role.
    pub role: &'a str,
    /// The subject, when the peer was identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// The error code of a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    /// The stable reason of a denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The plugin that decided (denied, failed, or first allowed), or `gateway`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<&'a str>,
    /// How long the decision took.
    pub duration_ms: f64,
    /// Every plugin that ran, in order, with its verdict.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<AuditStep<'a>>,
}

/// One plugin's part in a decision, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditStep<'a> {
    /// The plugin.
    pub plugin: &'a str,
    /// `allow`, `permit`, `deny`, `abstain` or `failed`.
    pub verdict: &'static str,
    /// For a denial: the error code the client got from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// For a denial: its reason; for a failure: its cause.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// For a failure the plugin reported: where in its source and why (never a credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// How long the plugin took, in microseconds (to a tenth).
    pub us: f64,
}

/// The audit sink.
pub struct Audit {
    sink: Option<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.sink.is_some())
            .finish()
    }
}

impl Audit {
    /// Opens the sink.
    pub fn open(output: &AuditOutput) -> std::io::Result<Self> {
        let sink: Option<Box<dyn Write + Send>> = match output {
            AuditOutput::Off => None,
            AuditOutput::Stdout => Some(Box::new(std::io::stdout())),
            AuditOutput::File(path) => Some(Box::new(open_append(path)?)),
        };
        Ok(Self {
            sink: sink.map(Mutex::new),
        })
    }

    /// Whether records go anywhere (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// Writes one line (an [`AuditRecord`] or a
    /// [`LifecycleRecord`](crate::lifecycle::LifecycleRecord)). A failing sink is reported in
    /// the diagnostic log, never fatal.
    pub fn record(&self, record: &impl Serialize) {
        let Some(sink) = &self.sink else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        let mut w = sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = w.write_all(&line).and_then(|()| w.flush()) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}
