//! `trustgate plugin test`: runs a plugin against a table of cases — requests, the identity so
//! far, stubbed TokenReview / JWT answers — and compares each decision with the expected one,
//! printing a readable diff for every case that does not match.
//!
//! ```toml
//! [[case]]
//! name = "a prod worker is let through"
//! role = "worker"
//! remote_addr = "10.1.2.3:40000"
//! identity = { subject = "system:serviceaccount:prod-a:runner", attributes = { namespace = "prod-a" } }
//! expect = { decision = "allow" }
//!
//! [[case]]
//! name = "a dev worker is refused"
//! identity = { subject = "system:serviceaccount:dev:runner", attributes = { namespace = "dev" } }
//! expect = { decision = "deny", code = "forbidden", reason = "namespace-not-allowed" }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use async_trait::async_trait;
use serde::Deserialize;
use trustgate_runtime::{
    AuthProvider, CachePolicy, Call, Credentials, Decision, DenyCode, Device, HostServices,
    Identity, Peer, PluginFailure, Request, Review, ReviewError, WasmPlugin,
};

/// A file of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cases {
    /// The cases, in order.
    pub case: Vec<Case>,
}

/// One case: a request and what the plugin should answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case is about (shown in the report).
    pub name: String,
    /// The requested role (default `worker`).
    #[serde(default = "worker")]
    pub role: String,
    /// The requested scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The auth method (default `none`).
    #[serde(default = "none")]
    pub method: String,
    /// A bearer token.
    pub token: Option<String>,
    /// A device token.
    pub device_token: Option<String>,
    /// The peer's address (default `127.0.0.1:40000`).
    #[serde(default = "local")]
    pub remote_addr: String,
    /// Whether the connection is TLS.
    #[serde(default)]
    pub tls: bool,
    /// The client's id (default `test-client`).
    #[serde(default = "client")]
    pub client_id: String,
    /// A verified device id.
    pub device_id: Option<String>,
    /// The identity earlier plugins established.
    pub identity: Option<IdentityCase>,
    /// What the gateway's TokenReview answers.
    pub review: Option<ReviewCase>,
    /// What the gateway's local JWT verification answers.
    pub jwt: Option<ReviewCase>,
    /// The time the plugin sees (`now-ms`), e.g. `now = 2026-11-30T09:30:00Z`; default: the
    /// real clock.
    pub now: Option<toml::value::Datetime>,
    /// What the plugin should decide.
    pub expect: Expect,
}

fn worker() -> String {
    "worker".into()
}
fn none() -> String {
    "none".into()
}
fn local() -> String {
    "127.0.0.1:40000".into()
}
fn client() -> String {
    "test-client".into()
}

/// The identity so far.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityCase {
    /// Subject.
    pub subject: String,
    /// Method (default `test`).
    #[serde(default)]
    pub method: Option<String>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Roles (default: the requested role).
    pub roles: Option<Vec<String>>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Expiry.
    pub expires_at_ms: Option<u64>,
    /// Whether it may skip pairing.
    #[serde(default)]
    pub skip_pairing: bool,
}

/// A stubbed verification answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewCase {
    /// Fail the verification instead: `unavailable`, `forbidden`, `failed`, `not-configured`.
    pub fail: Option<String>,
    /// Whether the token is valid (default true).
    pub authenticated: Option<bool>,
    /// The rejection text.
    pub error: Option<String>,
    /// Username.
    #[serde(default)]
    pub username: String,
    /// UID.
    #[serde(default)]
    pub uid: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Extra attributes.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
    /// Expiry.
    pub expires_at_ms: Option<u64>,
}

/// The expected decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `allow` (an allow or a permit), `deny` or `abstain`.
    pub decision: String,
    /// For `deny`: the code (`unauthenticated`, `forbidden`, `unavailable`, `rate-limited`).
    pub code: Option<String>,
    /// For `deny`: the reason.
    pub reason: Option<String>,
    /// For `allow`: the subject of the resulting identity.
    pub subject: Option<String>,
    /// For `allow`: the roles of the resulting identity.
    pub roles: Option<Vec<String>>,
}

// === The stubbed verifications ===

struct StubReview(ReviewCase);

impl Review for StubReview {
    fn authenticated(&self) -> bool {
        self.0.authenticated.unwrap_or(true)
    }
    fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    fn username(&self) -> &str {
        &self.0.username
    }
    fn uid(&self) -> &str {
        &self.0.uid
    }
    fn groups(&self) -> &[String] {
        &self.0.groups
    }
    fn audiences(&self) -> &[String] {
        &self.0.audiences
    }
    fn extra(&self, key: &str) -> Option<&[String]> {
        self.0.extra.get(key).map(Vec::as_slice)
    }
    fn extras(&self) -> Vec<(String, Vec<String>)> {
        self.0
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn expires_at_ms(&self) -> Option<u64> {
        self.0.expires_at_ms
    }
}

/// Answers verifications (and the clock) with the current case's stubs.
#[derive(Default)]
pub struct Stubs {
    current: Mutex<(Option<ReviewCase>, Option<ReviewCase>)>,
    now_ms: Mutex<Option<u64>>,
}

/// A TOML date-time with an offset, in milliseconds since the Unix epoch.
fn epoch_ms(at: &toml::value::Datetime) -> Result<u64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(&at.to_string()).map_err(|_| {
        anyhow::anyhow!(
            "`now = {at}`: give a full date-time with an offset, e.g. 2026-11-30T09:30:00Z"
        )
    })?;
    u64::try_from(parsed.timestamp_millis())
        .map_err(|_| anyhow::anyhow!("`now = {at}`: before 1970"))
}

fn answer(stub: Option<ReviewCase>, what: &str) -> Result<Arc<dyn Review>, ReviewError> {
    let Some(stub) = stub else {
        return Err(ReviewError::NotConfigured(format!(
            "the case gives no `{what}` answer"
        )));
    };
    match stub.fail.as_deref() {
        None => Ok(Arc::new(StubReview(stub))),
        Some("unavailable") => Err(ReviewError::Unavailable("stubbed".into())),
        Some("forbidden") => Err(ReviewError::Forbidden("stubbed".into())),
        Some("not-configured") => Err(ReviewError::NotConfigured("stubbed".into())),
        Some(_) => Err(ReviewError::Failed("stubbed".into())),
    }
}

#[async_trait]
impl HostServices for Stubs {
    async fn token_review(
        &self,
        _token: &str,
        _audiences: &[String],
        _cache: CachePolicy,
    ) -> Result<Arc<dyn Review>, ReviewError> {
        let stub = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        answer(stub, "review")
    }

    async fn verify_jwt(
        &self,
        _token: &str,
        _audiences: &[String],
    ) -> Result<Arc<dyn Review>, ReviewError> {
        let stub = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        answer(stub, "jwt")
    }

    fn now_ms(&self) -> u64 {
        (*self.now_ms.lock().unwrap_or_else(|p| p.into_inner()))
            .unwrap_or_else(trustgate_protocol::now_ms)
    }
}

/// Reads a case file, naming the file and the problem.
pub fn read_cases(path: &Path) -> Result<Cases> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let cases: Cases =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    for c in &cases.case {
        if let Some(at) = &c.now {
            epoch_ms(at).with_context(|| format!("{}: case `{}`", path.display(), c.name))?;
        }
    }
    Ok(cases)
}

fn request(c: &Case) -> Arc<Request> {
    Arc::new(Request {
        credentials: Credentials {
            method: c.method.clone(),
            token: c.token.clone(),
            device_token: c.device_token.clone(),
        },
        device: c.device_id.as_ref().map(|id| Device {
            id: id.clone(),
            public_key: String::new(),
        }),
        peer: Peer {
            remote_addr: c.remote_addr.clone(),
            tls: c.tls,
            client_id: c.client_id.clone(),
            client_version: "1.0.0".into(),
            conn_id: "c-test".into(),
            ..Peer::default()
        },
        role: c.role.clone(),
        scopes: c.scopes.clone(),
    })
}

fn identity(c: &Case) -> Option<Identity> {
    c.identity.as_ref().map(|i| Identity {
        subject: i.subject.clone(),
        method: i.method.clone().unwrap_or_else(|| "test".into()),
        groups: i.groups.clone(),
        attributes: i.attributes.clone().into_iter().collect(),
        roles: i.roles.clone().unwrap_or_else(|| vec![c.role.clone()]),
        scopes: i.scopes.clone(),
        expires_at_ms: i.expires_at_ms,
        skip_pairing: i.skip_pairing,
    })
}

fn code(c: DenyCode) -> &'static str {
    c.as_str()
}

/// A decision in the words of a case file.
fn describe(result: &Result<Decision, PluginFailure>, so_far: Option<&Identity>) -> String {
    match result {
        Ok(Decision::Allow(id)) => format!("allow subject={} roles={:?}", id.subject, id.roles),
        Ok(Decision::Permit(n)) => match so_far {
            Some(id) => {
                let roles: Vec<&String> = match &n.roles {
                    Some(keep) => id.roles.iter().filter(|r| keep.contains(r)).collect(),
                    None => id.roles.iter().collect(),
                };
                format!("allow (permit) subject={} roles={roles:?}", id.subject)
            }
            None => "abstain (a permit with no identity so far)".into(),
        },
        Ok(Decision::Deny(d)) => format!("deny code={} reason={}", code(d.code), d.reason),
        Ok(Decision::Abstain) => "abstain".into(),
        Err(f) => format!("plugin failed ({}): {f}", f.cause()),
    }
}

/// Whether `result` meets `expect`.
fn matches(
    expect: &Expect,
    result: &Result<Decision, PluginFailure>,
    so_far: Option<&Identity>,
) -> bool {
    let permit_identity = |n: &trustgate_runtime::Narrowing| {
        so_far.map(|id| {
            let roles: Vec<String> = match &n.roles {
                Some(keep) => id
                    .roles
                    .iter()
                    .filter(|r| keep.contains(r))
                    .cloned()
                    .collect(),
                None => id.roles.clone(),
            };
            (id.subject.clone(), roles)
        })
    };
    match (expect.decision.as_str(), result) {
        ("allow", Ok(Decision::Allow(id))) => {
            expect.subject.as_ref().is_none_or(|s| *s == id.subject)
                && expect.roles.as_ref().is_none_or(|r| *r == id.roles)
        }
        ("allow", Ok(Decision::Permit(n))) => match permit_identity(n) {
            Some((subject, roles)) => {
                expect.subject.as_ref().is_none_or(|s| *s == subject)
                    && expect.roles.as_ref().is_none_or(|r| *r == roles)
            }
            None => false,
        },
        ("deny", Ok(Decision::Deny(d))) => {
            expect.code.as_deref().is_none_or(|c| c == code(d.code))
                && expect.reason.as_ref().is_none_or(|r| *r == d.reason)
        }
        ("abstain", Ok(Decision::Abstain)) => true,
        ("abstain", Ok(Decision::Permit(_))) => so_far.is_none(),
        _ => false,
    }
}

fn expected(e: &Expect) -> String {
    let mut s = e.decision.clone();
    for (k, v) in [
        ("subject", e.subject.clone()),
        ("roles", e.roles.as_ref().map(|r| format!("{r:?}"))),
        ("code", e.code.clone()),
        ("reason", e.reason.clone()),
    ] {
        if let Some(v) = v {
            let _ = write!(s, " {k}={v}");
        }
    }
    s
}

/// Runs every case against `plugin` (whose runtime answers verifications from `stubs`);
/// returns the report and whether every case passed.
pub async fn run(plugin: &WasmPlugin, stubs: &Stubs, cases: &Cases) -> (String, bool) {
    let mut report = String::new();
    let mut failed = 0;
    let mut times = Vec::with_capacity(cases.case.len());
    for c in &cases.case {
        *stubs.current.lock().unwrap_or_else(|p| p.into_inner()) =
            (c.review.clone(), c.jwt.clone());
        *stubs.now_ms.lock().unwrap_or_else(|p| p.into_inner()) =
            c.now.as_ref().and_then(|at| epoch_ms(at).ok());
        let so_far = identity(c);
        let call = Call {
            request: request(c),
            so_far: so_far.clone().map(Arc::new),
            cache: CachePolicy::Use,
            witness: Default::default(),
        };
        let started = std::time::Instant::now();
        let result = plugin.authenticate(&call).await;
        let took = started.elapsed();
        times.push(took);
        if matches(&c.expect, &result, so_far.as_ref()) {
            let _ = writeln!(report, "ok    {}  ({})", c.name, micros(took));
        } else {
            failed += 1;
            let _ = writeln!(report, "FAIL  {}  ({})", c.name, micros(took));
            let _ = writeln!(report, "      - expected: {}", expected(&c.expect));
            let _ = writeln!(
                report,
                "      + actual:   {}",
                describe(&result, so_far.as_ref())
            );
        }
    }
    let total = cases.case.len();
    times.sort();
    let median = times
        .get(times.len() / 2)
        .map(|t| format!("; median call {}", micros(*t)))
        .unwrap_or_default();
    let _ = writeln!(
        report,
        "\n{} of {total} cases passed{}{median}",
        total - failed,
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    (report, failed == 0)
}

/// A call's time as the report prints it.
fn micros(d: std::time::Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
