//! Test guest whose decision is scripted by its configuration; built with the plugin SDK.

use serde::Deserialize;
use trustgate_plugin_sdk::{
    Decision, Denial, DenyCode, Identity, LogLevel, Plugin, Request, ReviewError, log, token_review,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `allow`, `deny`, `abstain`, `review` (ask the host for a TokenReview) or `echo-so-far`.
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
    expires_at_ms: Option<u64>,
    #[serde(default = "default_reason")]
    reason: String,
    /// If set, `configure` fails with this message.
    reject: Option<String>,
    /// Only decide for this auth method; abstain for others.
    method: Option<String>,
    /// Only allow when the presented token equals this; deny `unauthenticated` otherwise.
    token: Option<String>,
    /// Identity expiry relative to now (overrides `expires_at_ms`).
    expires_in_ms: Option<u64>,
    /// Code of the denial when `token` does not match (`unauthenticated` by default).
    mismatch_code: Option<String>,
    /// Use `token:<presented token>` as the subject.
    #[serde(default)]
    subject_from_token: bool,
    /// The code of a `deny` decision.
    #[serde(default = "default_code")]
    code: String,
    /// For `deny`: a retry hint.
    retry_after_ms: Option<u32>,
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

impl Plugin for Scripted {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if let Some(msg) = config.reject {
            return Err(msg);
        }
        if !["allow", "deny", "abstain", "review", "echo-so-far"]
            .contains(&config.decision.as_str())
        {
            return Err(format!("decision: unknown `{}`", config.decision));
        }
        Ok(Self(config))
    }

    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision {
        let c = &self.0;
        log(
            LogLevel::Debug,
            &format!("scripted plugin deciding for {}", request.peer.conn_id),
        );
        if let Some(m) = &c.method
            && *m != request.credentials.method
        {
            return Decision::Abstain;
        }
        if let Some(t) = &c.token
            && request.credentials.token.as_ref() != Some(t)
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
            "allow" => Decision::Allow(Identity {
                subject: if c.subject_from_token {
                    format!(
                        "token:{}",
                        request.credentials.token.clone().unwrap_or_default()
                    )
                } else {
                    c.subject.clone()
                },
                method: request.credentials.method.clone(),
                groups: c.groups.clone(),
                attributes: vec![("client-id".into(), request.peer.client_id.clone())],
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
            "review" => {
                let token = request.credentials.token.clone().unwrap_or_default();
                match token_review(&token, &["trustgate".to_string()]) {
                    Ok(_) => Decision::Abstain,
                    Err(ReviewError::NotConfigured(m)) => {
                        trustgate_plugin_sdk::deny_unavailable("not-configured", m)
                    }
                    Err(e) => {
                        trustgate_plugin_sdk::deny_unavailable("review-failed", format!("{e:?}"))
                    }
                }
            }
            "echo-so-far" => match so_far {
                Some(id) => {
                    let mut id = id.clone();
                    id.roles = c.roles.clone();
                    id.scopes = c.scopes.clone();
                    id.skip_pairing = c.skip_pairing;
                    id.groups.extend(c.groups.iter().cloned());
                    Decision::Allow(id)
                }
                None => Decision::Abstain,
            },
            _ => Decision::Abstain,
        }
    }
}

trustgate_plugin_sdk::plugin!(Scripted);
