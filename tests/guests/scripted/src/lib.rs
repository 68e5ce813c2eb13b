//! Test guest whose decision is scripted by its configuration; built with the plugin SDK
//! (contract 0.3, and again against 0.2 and 0.1 for the compatibility tests).

use serde::Deserialize;
use trustgate_plugin_sdk::{
    Decision, Denial, DenyCode, Established, Identity, LogLevel, Narrowing, Plugin, Request,
    ReviewError, ReviewSpec, SecretError, Verification, log,
};

/// A TokenReview for the `trustgate` audience with the `extra` keys named.
fn review_of(extra: &[&str]) -> Verification {
    Verification::TokenReview(ReviewSpec {
        audiences: vec!["trustgate".into()],
        extra: extra.iter().map(|k| k.to_string()).collect(),
        extra_values: true,
        ..ReviewSpec::default()
    })
}

/// A local JWT verification for the `trustgate` audience.
fn jwt() -> Verification {
    Verification::KubernetesJwt(ReviewSpec {
        audiences: vec!["trustgate".into()],
        ..ReviewSpec::default()
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `allow`, `deny`, `abstain`, `review` (ask the host for a TokenReview), `echo-so-far`
    /// (allow the identity so far again with this config's roles, scopes, groups),
    /// `permit` (a narrowing permit), `probe` (report what every accessor and host call gives
    /// as attributes of an allow), `oversize` (return something over a contract limit) or
    /// `from-token` (return the decision the presented token spells as JSON: the fuzz
    /// harness's arbitrary decisions; needs the credentials grant).
    decision: String,
    #[serde(default = "default_subject")]
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    skip_pairing: bool,
    /// For `allow`: attributes of the identity, besides `client-id`.
    #[serde(default)]
    attributes: std::collections::BTreeMap<String, String>,
    expires_at_ms: Option<u64>,
    #[serde(default = "default_reason")]
    reason: String,
    /// If set, `configure` fails with this message.
    reject: Option<String>,
    /// Only decide for this auth method; abstain for others.
    method: Option<String>,
    /// Only allow when the presented token equals this (needs the credentials grant); deny
    /// `unauthenticated` otherwise.
    token: Option<String>,
    /// Identity expiry relative to now (overrides `expires_at_ms`).
    expires_in_ms: Option<u64>,
    /// Code of the denial when `token` does not match (`unauthenticated` by default).
    mismatch_code: Option<String>,
    /// Use `token:<presented token>` as the subject (needs the credentials grant).
    #[serde(default)]
    subject_from_token: bool,
    /// The code of a `deny` decision.
    #[serde(default = "default_code")]
    code: String,
    /// For `deny`: a retry hint.
    retry_after_ms: Option<u32>,
    /// For `permit`: roles to keep.
    keep_roles: Option<Vec<String>>,
    /// For `permit`: veto skipping pairing.
    #[serde(default)]
    veto_skip_pairing: bool,
    /// For `oversize`: which limit to exceed (`subject`, `method`, `groups`, `group`,
    /// `attributes`, `attribute-key`, `attribute-value`, `roles`, `role`, `scopes`, `scope`,
    /// `reason`, `message`, `log`, `forged-log`, `tiny-logs`, `control-log`, `long-stdout`) and
    /// `size`: the item count or byte length.
    /// For `calls` (a micro-benchmark): `reason` names the accessor, `size` the count.
    oversize: Option<String>,
    #[serde(default)]
    size: usize,
}

fn default_code() -> String {
    "forbidden".into()
}

fn default_subject() -> String {
    "test:subject".into()
}
fn default_reason() -> String {
    "scripted".into()
}

struct Scripted(Config);

/// What `probe` reports for a secret accessor.
fn probe_secret(r: Result<String, SecretError>) -> String {
    match r {
        Ok(v) => format!("value:{v}"),
        Err(SecretError::NotGranted) => "not-granted".into(),
        Err(SecretError::Absent) => "absent".into(),
    }
}

impl Scripted {
    fn presented_token(&self, request: &Request) -> Option<String> {
        request.credentials().token().ok()
    }

    fn oversize(&self) -> Decision {
        let n = self.0.size;
        let big = |len: usize| "x".repeat(len);
        let mut id = Established::new("test:subject", "test");
        id.roles = vec!["worker".into()];
        id.skip_pairing = true;
        match self.0.oversize.as_deref() {
            Some("subject") => id.subject = big(n),
            Some("method") => id.method = big(n),
            Some("groups") => id.groups = (0..n).map(|i| format!("g{i}")).collect(),
            Some("group") => id.groups = vec![big(n)],
            Some("attributes") => {
                id.attributes = (0..n).map(|i| (format!("k{i}"), "v".into())).collect()
            }
            Some("attribute-value") => id.attributes = vec![("k".into(), big(n))],
            Some("attribute-key") => id.attributes = vec![(big(n), "v".into())],
            Some("roles") => {
                id.roles = (0..n).map(|i| format!("r{i}")).collect();
                id.roles[0] = "worker".into();
            }
            Some("role") => id.roles = vec!["worker".into(), big(n)],
            Some("scopes") => id.scopes = (0..n).map(|i| format!("s{i}")).collect(),
            Some("scope") => id.scopes = vec![big(n)],
            Some("reason") => {
                return trustgate_plugin_sdk::deny(DenyCode::Forbidden, &big(n), "m");
            }
            Some("message") => {
                return trustgate_plugin_sdk::deny(DenyCode::Forbidden, "r", big(n));
            }
            Some("log") => {
                let line = big(1000);
                for _ in 0..n {
                    log(LogLevel::Info, &line);
                    println!("{line}");
                    eprintln!("{line}");
                }
            }
            Some("forged-log") => log(LogLevel::Warn, "innocent\nERROR forged line\u{1b}[31m"),
            // `size` one-byte log lines.
            Some("tiny-logs") => {
                for _ in 0..n {
                    log(LogLevel::Info, "z");
                }
            }
            // One log line of `size` control characters (each escapes to several bytes).
            Some("control-log") => log(LogLevel::Info, &"\u{1}".repeat(n)),
            // One stdout line of `size` bytes.
            Some("long-stdout") => println!("{}", "y".repeat(n)),
            _ => {}
        }
        Decision::allow(id)
    }
}

impl Plugin for Scripted {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if let Some(msg) = config.reject {
            return Err(msg);
        }
        if ![
            "allow",
            "deny",
            "abstain",
            "review",
            "echo-so-far",
            "permit",
            "probe",
            "oversize",
            "noop",
            "calls",
            "from-token",
        ]
        .contains(&config.decision.as_str())
        {
            return Err(format!("decision: unknown `{}`", config.decision));
        }
        Ok(Self(config))
    }

    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision {
        let c = &self.0;
        // `noop`: the cheapest possible decision, to measure the cost of a call itself.
        if c.decision == "noop" {
            return Decision::Abstain;
        }
        // `calls`: `size` calls of one accessor (`reason` names it), to measure host calls.
        if c.decision == "calls" {
            for _ in 0..c.size {
                match c.reason.as_str() {
                    "tls" => {
                        std::hint::black_box(request.tls());
                    }
                    "conn-id" => {
                        std::hint::black_box(request.conn_id());
                    }
                    "credentials" => {
                        std::hint::black_box(request.credentials());
                    }
                    "review" => {
                        let r = request.verify(&review_of(&[]));
                        std::hint::black_box(r.map(|r| r.authenticated).ok());
                    }
                    "extra" => {
                        let keys = ["a/pod-name", "a/pod-uid", "a/node-name"];
                        let r = request.verify(&review_of(&keys)).ok();
                        if let Some(r) = r {
                            for k in keys {
                                std::hint::black_box(r.extra_first(k));
                            }
                        }
                    }
                    _ => {
                        std::hint::black_box(request.scopes());
                    }
                }
            }
            if c.decision == "calls" && c.subject == "establish" {
                let mut id =
                    Established::new("system:serviceaccount:workers:runner", "k8s-sa-trust");
                id.groups = vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:workers".into(),
                    "system:authenticated".into(),
                ];
                id.attributes = [
                    "namespace",
                    "service-account",
                    "service-account-uid",
                    "pod-name",
                    "pod-uid",
                    "node-name",
                ]
                .iter()
                .map(|k| (k.to_string(), format!("value-of-{k}")))
                .collect();
                id.roles = vec!["worker".into()];
                return Decision::allow(id);
            }
            return Decision::Abstain;
        }
        log(
            LogLevel::Debug,
            &format!("scripted plugin deciding for {}", request.conn_id()),
        );
        if let Some(m) = &c.method
            && m != request.method()
        {
            return Decision::Abstain;
        }
        if let Some(t) = &c.token
            && self.presented_token(request).as_ref() != Some(t)
        {
            let code = match c.mismatch_code.as_deref() {
                Some("unavailable") => DenyCode::Unavailable,
                _ => DenyCode::Unauthenticated,
            };
            return trustgate_plugin_sdk::deny(code, "token-rejected", "wrong token");
        }
        let expires_at_ms = match c.expires_in_ms {
            Some(ms) => Some(trustgate_plugin_sdk::now_ms() + ms),
            None => c.expires_at_ms,
        };
        match c.decision.as_str() {
            "from-token" => from_token(&self.presented_token(request).unwrap_or_default()),
            "allow" => Decision::allow(Established {
                subject: if c.subject_from_token {
                    format!(
                        "token:{}",
                        self.presented_token(request).unwrap_or_default()
                    )
                } else {
                    c.subject.clone()
                },
                method: request.method().to_string(),
                groups: c.groups.clone(),
                attributes: std::iter::once(("client-id".into(), request.client().id.clone()))
                    .chain(c.attributes.clone())
                    .collect(),
                roles: c.roles.clone(),
                scopes: c.scopes.clone(),
                expires_at_ms,
                skip_pairing: c.skip_pairing,
            }),
            "deny" => Decision::Deny(Denial {
                code: match c.code.as_str() {
                    "unauthenticated" => DenyCode::Unauthenticated,
                    "unavailable" => DenyCode::Unavailable,
                    "rate-limited" => DenyCode::RateLimited,
                    _ => DenyCode::Forbidden,
                },
                reason: c.reason.clone(),
                message: "scripted denial".into(),
                retry_after_ms: c.retry_after_ms,
            }),
            "review" => match request.verify(&review_of(&[])) {
                Ok(_) => Decision::Abstain,
                Err(ReviewError::NotConfigured(m)) => {
                    trustgate_plugin_sdk::deny_unavailable("not-configured", m)
                }
                Err(e) => trustgate_plugin_sdk::deny_unavailable("review-failed", format!("{e:?}")),
            },
            "echo-so-far" => match so_far {
                Some(id) => Decision::allow(Established {
                    subject: id.subject().to_string(),
                    method: id.method().to_string(),
                    groups: id
                        .groups()
                        .iter()
                        .cloned()
                        .chain(c.groups.clone())
                        .collect(),
                    attributes: id.attributes().to_vec(),
                    roles: c.roles.clone(),
                    scopes: c.scopes.clone(),
                    expires_at_ms: id.expires_at_ms(),
                    skip_pairing: c.skip_pairing,
                }),
                None => Decision::Abstain,
            },
            "permit" => Decision::permit_narrowed(Narrowing {
                roles: c.keep_roles.clone(),
                scopes: None,
                attributes: vec![("permitted-by".into(), "scripted".into())],
                expires_at_ms,
                veto_skip_pairing: c.veto_skip_pairing,
            }),
            "probe" => {
                let creds = request.credentials();
                let review = match request.verify(&review_of(&[])) {
                    Ok(r) => format!("ok:{}", r.username),
                    Err(e) => format!("err:{e:?}"),
                };
                let jwt = match request.verify(&jwt()) {
                    Ok(r) => format!("ok:{}", r.username),
                    Err(e) => format!("err:{e:?}"),
                };
                let client = request.client();
                let mut id = Established::new("probe:subject", "probe");
                id.roles = vec!["worker".into(), "operator".into()];
                id.attributes = vec![
                    ("token".into(), probe_secret(creds.token())),
                    ("device-token".into(), probe_secret(creds.device_token())),
                    ("has-token".into(), request.has_token().to_string()),
                    (
                        "has-device-token".into(),
                        request.has_device_token().to_string(),
                    ),
                    ("method".into(), creds.method()),
                    ("review".into(), review),
                    ("verify-jwt".into(), jwt),
                    ("client".into(), format!("{}/{}", client.id, client.version)),
                    ("role".into(), request.role().to_string()),
                    ("remote".into(), request.remote_addr().to_string()),
                ];
                Decision::allow(id)
            }
            "oversize" => self.oversize(),
            _ => Decision::Abstain,
        }
    }
}

trustgate_plugin_sdk::plugin!(Scripted);

/// A decision spelled in JSON, for `from-token`.
#[derive(Deserialize)]
struct Spelled {
    kind: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    method: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    attributes: Vec<(String, String)>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    expires_at_ms: Option<u64>,
    #[serde(default)]
    skip_pairing: bool,
    keep_roles: Option<Vec<String>>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

fn from_token(token: &str) -> Decision {
    let Ok(d) = serde_json::from_str::<Spelled>(token) else {
        return trustgate_plugin_sdk::deny(
            DenyCode::Unauthenticated,
            "not-json",
            "token is not a spelled decision",
        );
    };
    match d.kind.as_str() {
        "allow" => Decision::allow(Established {
            subject: d.subject,
            method: d.method,
            groups: d.groups,
            attributes: d.attributes,
            roles: d.roles,
            scopes: d.scopes,
            expires_at_ms: d.expires_at_ms,
            skip_pairing: d.skip_pairing,
        }),
        "permit" => Decision::permit_narrowed(Narrowing {
            roles: d.keep_roles,
            scopes: None,
            attributes: d.attributes,
            expires_at_ms: d.expires_at_ms,
            veto_skip_pairing: false,
        }),
        "deny" => Decision::Deny(Denial {
            code: DenyCode::Forbidden,
            reason: d.reason,
            message: d.message,
            retry_after_ms: None,
        }),
        _ => Decision::Abstain,
    }
}
