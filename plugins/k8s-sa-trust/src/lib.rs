//! `k8s-sa-trust`: lets Kubernetes worker pods in with their projected ServiceAccount token.
//!
//! The plugin asks the gateway to review the token (`tokenreview` mode: a TokenReview against
//! the API server, cached by the host; `jwks` mode: local verification against the cluster's
//! OIDC keys), requires one of the configured audiences, and admits only ServiceAccounts an
//! `allow` rule names. There is no allow-all: a configuration without rules is refused.
//!
//! ```toml
//! [[auth.plugins]]
//! builtin = "k8s-sa-trust"
//! [auth.plugins.config]
//! mode = "tokenreview"                 # or "jwks"
//! audiences = ["trustgate"]            # the audience the workers' projected tokens carry
//! require_pod_binding = true           # tokens must be bound to a pod
//! [[auth.plugins.config.allow]]
//! namespace = "workers"                # `*` and `?` globs
//! service_account = "runner-*"
//! roles = ["worker"]                   # default ["worker"]
//! skip_pairing = true                  # default true
//! ```
//!
//! Credentials of any other method are left to other plugins (abstain).

use serde::Deserialize;
use trustgate_plugin_sdk::{
    Decision, Denial, DenyCode, Glob, Identity, IdentityTemplate, Plugin, Request, RequestFields,
    Review, ReviewError, ReviewSpec, Reviewed, Verification, Wants, deny, deny_forbidden,
    deny_unauthenticated,
};

/// The auth method this plugin handles.
pub const METHOD: &str = "k8s-sa-trust";

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// How tokens are validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A TokenReview per token (cached by the gateway); notices deleted pods.
    #[default]
    Tokenreview,
    /// Local verification against the cluster's published keys; no API call per connect.
    Jwks,
}

fn default_roles() -> Vec<String> {
    vec!["worker".into()]
}

fn yes() -> bool {
    true
}

/// One allow rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Namespace glob.
    pub namespace: String,
    /// ServiceAccount name glob.
    pub service_account: String,
    /// Roles the ServiceAccount may take.
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Whether it may skip device pairing.
    #[serde(default = "yes")]
    pub skip_pairing: bool,
}

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Validation mode.
    #[serde(default)]
    pub mode: Mode,
    /// Accepted token audiences (at least one).
    pub audiences: Vec<String>,
    /// Who may connect; first rule matching namespace, ServiceAccount and role wins.
    pub allow: Vec<Rule>,
    /// Require tokens bound to a pod (projected tokens are; legacy secret tokens are not).
    #[serde(default)]
    pub require_pod_binding: bool,
}

/// The configured plugin.
#[derive(Debug)]
pub struct K8sSaTrust {
    config: Config,
    /// The allow rules with their globs compiled once, in order.
    rules: Vec<CompiledRule>,
    /// What the plugin declares (built once: the gateway verifies the token before each call
    /// and forms the identity from the review).
    wants: Wants,
}

#[derive(Debug)]
struct CompiledRule {
    namespace: Glob,
    service_account: Glob,
    roles: Vec<String>,
    skip_pairing: bool,
}

fn unavailable(reason: &str, message: String) -> Decision {
    Decision::Deny(Denial {
        code: DenyCode::Unavailable,
        reason: reason.into(),
        message,
        retry_after_ms: Some(1_000),
    })
}

/// The reason word for a token the API server (or the key set) rejected.
fn rejection_reason(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("expired") {
        "token-expired"
    } else if e.contains("invalidated") {
        "token-invalidated"
    } else if e.contains("audience") {
        "audience-mismatch"
    } else {
        "token-rejected"
    }
}

impl Plugin for K8sSaTrust {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.audiences.iter().all(|a| a.trim().is_empty()) {
            return Err("audiences: must name at least one audience (the one the workers' projected tokens are issued for)".into());
        }
        if config.allow.is_empty() {
            return Err("allow: is empty; k8s-sa-trust never admits every ServiceAccount — add rules naming the namespaces and ServiceAccounts that may connect".into());
        }
        for (i, r) in config.allow.iter().enumerate() {
            if r.namespace.trim().is_empty() {
                return Err(format!(
                    "allow[{i}].namespace: must not be empty (use \"*\" deliberately if you mean any)"
                ));
            }
            if r.service_account.trim().is_empty() {
                return Err(format!(
                    "allow[{i}].service_account: must not be empty (use \"*\" deliberately if you mean any)"
                ));
            }
            if r.roles.is_empty() {
                return Err(format!(
                    "allow[{i}].roles: is empty; the rule would admit no one"
                ));
            }
            if let Some(bad) = r.roles.iter().find(|x| *x != "worker" && *x != "operator") {
                return Err(format!(
                    "allow[{i}].roles: unknown role `{bad}` (roles are `worker` and `operator`)"
                ));
            }
        }
        let rules = config
            .allow
            .iter()
            .map(|r| CompiledRule {
                namespace: Glob::new(&r.namespace),
                service_account: Glob::new(&r.service_account),
                roles: r.roles.clone(),
                skip_pairing: r.skip_pairing,
            })
            .collect();
        // The review is read for the username and the pod binding; everything else the
        // identity carries stays in the gateway and is formed there from the review.
        let spec = ReviewSpec {
            audiences: config.audiences.clone(),
            extra: vec![POD_NAME.into(), POD_UID.into()],
            ..ReviewSpec::default()
        };
        let wants = Wants::request(RequestFields::ROLE | RequestFields::PRESENTED)
            .methods(&[METHOD])
            .verify(match config.mode {
                Mode::Tokenreview => Verification::TokenReview(spec),
                Mode::Jwks => Verification::KubernetesJwt(spec),
            })
            .template(IdentityTemplate {
                method: METHOD.into(),
                groups: true,
                // The pod UID comes from the pod-uid extra, never from the ServiceAccount's UID.
                uid_attribute: Some("service-account-uid".into()),
                extra_attributes: [
                    (POD_NAME, "pod-name"),
                    (POD_UID, "pod-uid"),
                    (NODE_NAME, "node-name"),
                ]
                .iter()
                .map(|(k, a)| (k.to_string(), a.to_string()))
                .collect(),
                cluster_attribute: None,
            });
        Ok(Self {
            config,
            rules,
            wants,
        })
    }

    fn wants(&self) -> Wants {
        self.wants.clone()
    }

    fn authenticate(&self, request: &Request, _so_far: Option<&Identity>) -> Decision {
        // Only requests of this method reach the plugin (declared in `wants`).
        if !request.has_token() {
            return deny_unauthenticated(
                "token-missing",
                "auth.token is required for k8s-sa-trust",
            );
        }
        // The token stays in the gateway, which verified it before the call.
        let review: &Review = match request.review() {
            Some(Ok(r)) => r,
            Some(Err(ReviewError::NotConfigured(m))) => {
                return unavailable("kubernetes-not-configured", m.clone());
            }
            Some(Err(ReviewError::Unavailable(m))) => {
                return unavailable("review-unavailable", m.clone());
            }
            Some(Err(ReviewError::Forbidden(m))) => {
                return unavailable("review-forbidden", m.clone());
            }
            Some(Err(ReviewError::Failed(m))) => return unavailable("review-failed", m.clone()),
            None => return unavailable("review-failed", "no review was made".into()),
        };
        let c = &self.config;
        if !review.authenticated {
            let error = review.error.as_deref().unwrap_or("token not authenticated");
            return deny_unauthenticated(
                rejection_reason(error),
                format!("token rejected: {error}"),
            );
        }
        // An authority that does not name one of our audiences ignored them: never trusted.
        if !review.audience_matched {
            return deny_unauthenticated(
                "audience-mismatch",
                format!("the review names none of the audiences {:?}", c.audiences),
            );
        }
        let username = &review.username;
        let Some((namespace, service_account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return deny_unauthenticated(
                "not-a-service-account",
                format!("`{username}` is not a ServiceAccount"),
            );
        };
        if c.require_pod_binding && !(review.has_extra(POD_NAME) && review.has_extra(POD_UID)) {
            return deny_unauthenticated("pod-binding-required", "the token is not bound to a pod");
        }
        // The first rule matching namespace, ServiceAccount and role wins; the denial names the
        // first condition no rule met.
        let ns_rules = || self.rules.iter().filter(|r| r.namespace.matches(namespace));
        if ns_rules().next().is_none() {
            return deny_forbidden(
                "namespace-not-allowed",
                format!("namespace `{namespace}` is not allowed"),
            );
        }
        let sa_rules = || ns_rules().filter(|r| r.service_account.matches(service_account));
        if sa_rules().next().is_none() {
            return deny_forbidden(
                "service-account-not-allowed",
                format!("ServiceAccount `{namespace}/{service_account}` is not allowed"),
            );
        }
        let role = request.role();
        let Some(rule) = sa_rules().find(|r| r.roles.iter().any(|x| x == role)) else {
            return deny(
                DenyCode::Forbidden,
                "role-not-allowed",
                format!("`{namespace}/{service_account}` may not connect as {role}"),
            );
        };
        // The subject, groups, ServiceAccount UID, pod binding and expiry come from the review
        // the gateway holds (the template in `wants`); only what this plugin decided crosses.
        Decision::AllowReviewed(Reviewed {
            attributes: vec![
                ("namespace".into(), namespace.into()),
                ("service-account".into(), service_account.into()),
            ],
            roles: rule.roles.clone(),
            scopes: Vec::new(),
            skip_pairing: rule.skip_pairing,
        })
    }
}

#[cfg(target_arch = "wasm32")]
trustgate_plugin_sdk::plugin!(K8sSaTrust);
