//! `allowlist`: a first-party policy plugin. It decides on identities established earlier in
//! the chain by subject glob, namespace glob, group glob, peer CIDR and role.
//!
//! Rules are tried in order and the first whose conditions all hold decides (`allow` passes
//! the identity on unchanged, `deny` refuses). An identity no rule matches is denied: the
//! plugin is deny-by-default. A configuration without rules is an error, never allow-all.
//!
//! A request with no identity yet (no earlier plugin allowed it) is only subject to rules
//! that need no identity (peer CIDR, role): a matching `deny` refuses it, anything else
//! abstains, so device pairing remains possible for peers the operator did not exclude.
//!
//! ```toml
//! [[auth.plugins]]
//! name = "policy"
//! builtin = "allowlist"
//! [[auth.plugins.config.rules]]
//! effect = "deny"
//! cidr = "0.0.0.0/0"        # everything not matched by an earlier rule
//! roles = ["operator"]
//! ```

use serde::Deserialize;
use trustgate_plugin_sdk::{
    Cidr, Decision, Glob, Identity, IdentityFields, Plugin, Request, RequestFields, Wants,
    deny_forbidden,
};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let the identity through.
    #[default]
    Allow,
    /// Refuse the peer.
    Deny,
}

/// One rule; every condition given must hold for it to match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// `allow` (default) or `deny`.
    #[serde(default)]
    pub effect: Effect,
    /// Glob over the identity's subject.
    pub subject: Option<String>,
    /// Glob over the identity's `namespace` attribute.
    pub namespace: Option<String>,
    /// Glob that at least one of the identity's groups must match.
    pub group: Option<String>,
    /// Network the peer's address must be in.
    pub cidr: Option<String>,
    /// Roles the request must ask for (any of them).
    pub roles: Option<Vec<String>>,
}

/// The plugin's configuration table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rules, first match wins.
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug)]
struct Rule {
    effect: Effect,
    subject: Option<Glob>,
    namespace: Option<Glob>,
    group: Option<Glob>,
    cidr: Option<Cidr>,
    roles: Option<Vec<String>>,
}

impl Rule {
    fn needs_identity(&self) -> bool {
        self.subject.is_some() || self.namespace.is_some() || self.group.is_some()
    }

    fn matches(&self, request: &Request, identity: Option<&Identity>) -> bool {
        if let Some(roles) = &self.roles
            && !roles.iter().any(|r| r == request.role())
        {
            return false;
        }
        if let Some(net) = &self.cidr
            && !request.ip().is_some_and(|ip| net.contains(&ip))
        {
            return false;
        }
        if !self.needs_identity() {
            return true;
        }
        let Some(id) = identity else { return false };
        self.subject
            .as_ref()
            .is_none_or(|p| p.matches(id.subject()))
            && self
                .namespace
                .as_ref()
                .is_none_or(|p| id.attribute("namespace").is_some_and(|ns| p.matches(ns)))
            && self
                .group
                .as_ref()
                .is_none_or(|p| id.groups().iter().any(|g| p.matches(g)))
    }
}

/// The configured plugin.
#[derive(Debug)]
pub struct Allowlist {
    rules: Vec<Rule>,
}

impl Plugin for Allowlist {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.rules.is_empty() {
            return Err("rules: is empty; an allowlist without rules would decide nothing (add at least one rule or remove the plugin)".into());
        }
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, r) in config.rules.into_iter().enumerate() {
            let cidr = match &r.cidr {
                Some(c) => Some(c.parse::<Cidr>().map_err(|e| {
                    format!(
                        "rules[{i}].cidr: `{c}` is not a network ({e}); write e.g. `10.0.0.0/8`"
                    )
                })?),
                None => None,
            };
            if r.subject.is_none()
                && r.namespace.is_none()
                && r.group.is_none()
                && cidr.is_none()
                && r.roles.is_none()
            {
                return Err(format!(
                    "rules[{i}]: has no conditions; a rule must name at least one of subject, namespace, group, cidr, roles"
                ));
            }
            if r.roles.as_ref().is_some_and(|v| v.is_empty()) {
                return Err(format!(
                    "rules[{i}].roles: is empty; the rule would never match"
                ));
            }
            rules.push(Rule {
                effect: r.effect,
                subject: r.subject.as_deref().map(Glob::new),
                namespace: r.namespace.as_deref().map(Glob::new),
                group: r.group.as_deref().map(Glob::new),
                cidr,
                roles: r.roles,
            });
        }
        Ok(Self { rules })
    }

    /// Exactly what the rules read: each call brings those facts and nothing else.
    fn wants(&self) -> Wants {
        let mut wants = Wants::default();
        for r in &self.rules {
            if r.roles.is_some() {
                wants.request |= RequestFields::ROLE;
            }
            if r.cidr.is_some() {
                wants.request |= RequestFields::REMOTE;
            }
            if r.subject.is_some() {
                wants.so_far |= IdentityFields::SUBJECT;
            }
            if r.group.is_some() {
                wants.so_far |= IdentityFields::GROUPS;
            }
            if r.namespace.is_some() {
                wants = wants.attribute("namespace");
            }
        }
        wants
    }

    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision {
        let hit = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(request, so_far));
        match (hit, so_far) {
            (Some((i, r)), _) if r.effect == Effect::Deny => {
                deny_forbidden("denied-by-rule", format!("rule {i} denies this peer"))
            }
            // Let the identity through as it is: nothing is copied back.
            (Some(_), Some(_)) => Decision::permit(),
            (None, Some(id)) => deny_forbidden(
                "not-allowlisted",
                format!(
                    "no rule allows subject `{}` as {}",
                    id.subject(),
                    request.role()
                ),
            ),
            (_, None) => Decision::Abstain,
        }
    }
}

#[cfg(target_arch = "wasm32")]
trustgate_plugin_sdk::plugin!(Allowlist);
