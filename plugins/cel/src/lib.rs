//! `cel`: a first-party policy plugin whose rules are [CEL](https://cel.dev) expressions written
//! in the gateway configuration, evaluated by the cel-rust project's interpreter.
//!
//! ```toml
//! [[auth.plugins]]
//! builtin = "cel"
//! [[auth.plugins.config.rules]]
//! deny = 'inCidr(peer.ip, "192.0.2.0/24")'
//! reason = "blocked-network"
//! [[auth.plugins.config.rules]]
//! allow = 'identity.attributes.namespace.startsWith("prod-") && request.role == "worker"'
//! ```
//!
//! Rules are tried in order and the first whose expression is `true` decides: `allow` lets the
//! identity so far through (optionally keeping only some of its roles), `deny` refuses with
//! the rule's code and reason. When no rule matches, the plugin denies a peer that has an
//! identity (`otherwise = "deny"`, the default: deny-by-default) or abstains
//! (`otherwise = "abstain"`). A rule that reads `identity` is skipped while no identity has
//! been established, so device pairing stays possible; an expression that fails to evaluate
//! denies (fail closed).
//!
//! Expressions see four variables:
//!
//! | variable | fields |
//! |---|---|
//! | `request` | `role`, `scopes` (list), `method`, `device` (`{id}` or `null`) |
//! | `peer` | `ip`, `addr`, `tls`, `client_id`, `client_version`, `platform`, `instance_id`, `conn_id` |
//! | `identity` | `subject`, `method`, `groups` (list), `attributes` (map), `roles`, `scopes`, `expires_at_ms`, `skip_pairing` — or `null` |
//! | `now` | the gateway's time, a timestamp (`now.getHours()`, in UTC) |
//!
//! plus the function `inCidr(ip, "10.0.0.0/8")`. Every expression is compiled, and tried once
//! against a complete sample request, when the plugin is configured: a syntax error, a field
//! that does not exist or a result that is not a boolean is a configuration error naming the
//! rule's key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cel::common::types::{
    CelBool, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt,
};
use cel::{Context, Env, Program, Value};
use serde::Deserialize;
use trustgate_plugin_sdk::{
    Cidr, Decision, DenyCode, Identity, Narrowing, Plugin, Request, deny, now_ms, parse_ip,
};

/// What happens when no rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Otherwise {
    /// Deny a peer with an identity (`no-rule-matched`); abstain for one without.
    #[default]
    Deny,
    /// Always abstain.
    Abstain,
}

/// The code of a `deny` rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// Known but not allowed (default).
    #[default]
    Forbidden,
    /// Credentials not acceptable.
    Unauthenticated,
}

/// One rule: exactly one of `allow` and `deny`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Lets the identity through when true.
    pub allow: Option<String>,
    /// Refuses the peer when true.
    pub deny: Option<String>,
    /// For `deny`: the reason the client sees (default `denied-by-rule`).
    pub reason: Option<String>,
    /// For `deny`: the code (`forbidden`, default, or `unauthenticated`).
    #[serde(default)]
    pub code: Code,
    /// For `deny`: what the gateway log says (default: the rule and its expression).
    pub message: Option<String>,
    /// For `allow`: keep only these of the identity's roles.
    pub roles: Option<Vec<String>>,
}

/// The plugin's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rules, first match wins.
    pub rules: Vec<RuleConfig>,
    /// When no rule matches.
    #[serde(default)]
    pub otherwise: Otherwise,
}

#[derive(Debug)]
enum Effect {
    Allow {
        roles: Option<Vec<String>>,
    },
    Deny {
        code: DenyCode,
        reason: String,
        message: String,
    },
}

struct Rule {
    program: Program,
    /// Whether the expression reads `identity` (skipped while there is none).
    needs_identity: bool,
    effect: Effect,
}

/// Which variables some rule reads, so a call fetches only those facts.
#[derive(Default)]
struct Reads {
    request: bool,
    peer: bool,
    identity: bool,
    now: bool,
}

/// The configured plugin.
pub struct Cel {
    env: Arc<Env>,
    rules: Vec<Rule>,
    reads: Reads,
    otherwise: Otherwise,
}

// === The variables expressions see ===

#[derive(Clone)]
struct RequestVar {
    role: String,
    scopes: Vec<String>,
    method: String,
    device: Option<DeviceVar>,
}

#[derive(Clone)]
struct DeviceVar {
    id: String,
}

#[derive(Clone)]
struct PeerVar {
    ip: String,
    addr: String,
    tls: bool,
    client_id: String,
    client_version: String,
    platform: Option<String>,
    instance_id: Option<String>,
    conn_id: String,
}

#[derive(Clone)]
struct IdentityVar {
    subject: String,
    method: String,
    groups: Vec<String>,
    attributes: BTreeMap<String, String>,
    roles: Vec<String>,
    scopes: Vec<String>,
    expires_at_ms: Option<u64>,
    skip_pairing: bool,
}

// The variables are built as CEL values directly: going through serde (`cel::to_value`) and
// the `Value` enum (deep-copied into `Val`s when bound) cost ten times as much as evaluating a
// five-rule policy. Field names are borrowed, never allocated.

type Val = Box<dyn cel::common::value::Val + 'static>;

fn map<const N: usize>(fields: [(&'static str, Val); N]) -> Val {
    let map: HashMap<CelMapKey<'static>, Val> = fields
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    Box::new(CelMap::from(map))
}

fn string(s: String) -> Val {
    Box::new(CelString::from(s))
}

fn strings(list: Vec<String>) -> Val {
    Box::new(CelList::from(
        list.into_iter().map(string).collect::<Vec<_>>(),
    ))
}

fn boolean(b: bool) -> Val {
    Box::new(CelBool::from(b))
}

fn null() -> Val {
    Box::new(CelNull)
}

fn optional(s: Option<String>) -> Val {
    s.map_or_else(null, string)
}

impl RequestVar {
    fn value(self) -> Val {
        map([
            ("role", string(self.role)),
            ("scopes", strings(self.scopes)),
            ("method", string(self.method)),
            (
                "device",
                self.device
                    .map_or_else(null, |d| map([("id", string(d.id))])),
            ),
        ])
    }
}

impl PeerVar {
    fn value(self) -> Val {
        map([
            ("ip", string(self.ip)),
            ("addr", string(self.addr)),
            ("tls", boolean(self.tls)),
            ("client_id", string(self.client_id)),
            ("client_version", string(self.client_version)),
            ("platform", optional(self.platform)),
            ("instance_id", optional(self.instance_id)),
            ("conn_id", string(self.conn_id)),
        ])
    }
}

impl IdentityVar {
    fn value(self) -> Val {
        let attributes: HashMap<CelMapKey<'static>, Val> = self
            .attributes
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k), string(v)))
            .collect();
        map([
            ("subject", string(self.subject)),
            ("method", string(self.method)),
            ("groups", strings(self.groups)),
            ("attributes", Box::new(CelMap::from(attributes))),
            ("roles", strings(self.roles)),
            ("scopes", strings(self.scopes)),
            (
                "expires_at_ms",
                self.expires_at_ms
                    .map_or_else(null, |ms| Box::new(CelUInt::from(ms)) as Val),
            ),
            ("skip_pairing", boolean(self.skip_pairing)),
        ])
    }
}

/// How many attribute keys the configure-time dry run adds to its sample identity.
const MAX_SAMPLE_ATTRIBUTES: usize = 64;

fn sample() -> (RequestVar, PeerVar, IdentityVar) {
    (
        RequestVar {
            role: "worker".into(),
            scopes: vec!["scope".into()],
            method: "method".into(),
            device: Some(DeviceVar { id: "id".into() }),
        },
        PeerVar {
            ip: "10.0.0.1".into(),
            addr: "10.0.0.1:40000".into(),
            tls: true,
            client_id: "client".into(),
            client_version: "1".into(),
            platform: Some("linux".into()),
            instance_id: Some("pod".into()),
            conn_id: "c-1".into(),
        },
        IdentityVar {
            subject: "subject".into(),
            method: "method".into(),
            groups: vec!["group".into()],
            attributes: [
                "namespace",
                "service-account",
                "pod-name",
                "pod-uid",
                "node-name",
            ]
            .into_iter()
            .map(|k| (k.to_string(), "value".to_string()))
            .collect(),
            roles: vec!["worker".into()],
            scopes: vec!["scope".into()],
            expires_at_ms: Some(0),
            skip_pairing: false,
        },
    )
}

/// `inCidr(ip, cidr)`: whether the address is in the network. A malformed address or network is
/// an evaluation error (which denies).
fn in_cidr(ip: Arc<String>, cidr: Arc<String>) -> Result<bool, cel::ExecutionError> {
    let net: Cidr = cidr
        .parse()
        .map_err(|_| cel::ExecutionError::function_error("inCidr", "not a network"))?;
    let ip = parse_ip(&ip)
        .ok_or_else(|| cel::ExecutionError::function_error("inCidr", "not an IP address"))?;
    Ok(net.contains(&ip))
}

fn context<'a>(
    env: &Arc<Env>,
    request: Option<RequestVar>,
    peer: Option<PeerVar>,
    identity: Option<Option<IdentityVar>>,
    now: Option<u64>,
) -> Result<Context<'a, 'a>, String> {
    let mut ctx = Context::with_env(env.clone());
    if let Some(r) = request {
        ctx.add_variable_as_val("request", r.value());
    }
    if let Some(p) = peer {
        ctx.add_variable_as_val("peer", p.value());
    }
    if let Some(i) = identity {
        ctx.add_variable_as_val("identity", i.map_or_else(null, IdentityVar::value));
    }
    if let Some(ms) = now {
        let ts = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
        ctx.add_variable_as_val("now", Box::new(CelTimestamp::from(ts.fixed_offset())));
    }
    ctx.add_function("inCidr", in_cidr)
        .map_err(|e| format!("{e:?}"))?;
    Ok(ctx)
}

impl Cel {
    fn compile(env: &Arc<Env>, key: &str, source: &str) -> Result<(Program, bool), String> {
        let program = env
            .compile(source)
            .map_err(|e| format!("{key}: not a valid CEL expression: {e}"))?;
        let refs = program.references();
        if let Some(unknown) = refs
            .variables()
            .into_iter()
            .find(|v| !["request", "peer", "identity", "now"].contains(v))
        {
            return Err(format!(
                "{key}: unknown variable `{unknown}` (expressions see `request`, `peer`, `identity` and `now`)"
            ));
        }
        // "Type check": run it once against a complete sample; a missing field, a wrong
        // operand type or a non-boolean result shows up here instead of at the first peer.
        // Attributes are an open map, so a key the sample lacks is added and the run repeated;
        // a key that is still missing afterwards is a field no variable has.
        let (r, p, mut i) = sample();
        loop {
            let ctx = context(
                env,
                Some(r.clone()),
                Some(p.clone()),
                Some(Some(i.clone())),
                Some(0),
            )?;
            match program.execute(&ctx) {
                Ok(Value::Bool(_)) => break,
                Ok(other) => {
                    return Err(format!(
                        "{key}: must evaluate to a boolean, evaluates to {:?}",
                        other.type_of()
                    ));
                }
                Err(cel::ExecutionError::NoSuchKey(field))
                    if !i.attributes.contains_key(field.as_str())
                        && i.attributes.len() < MAX_SAMPLE_ATTRIBUTES =>
                {
                    i.attributes.insert(field.to_string(), "value".into());
                }
                Err(cel::ExecutionError::NoSuchKey(field)) => {
                    return Err(format!(
                        "{key}: no variable has a field `{field}` (the fields of `request`, `peer` and `identity` are listed in docs/writing-plugins.md)"
                    ));
                }
                Err(e) => return Err(format!("{key}: {e}")),
            }
        }
        let needs_identity = refs.has_variable("identity");
        Ok((program, needs_identity))
    }
}

impl Plugin for Cel {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.rules.is_empty() {
            return Err("rules: is empty; a cel policy without rules would decide nothing (add at least one rule or remove the plugin)".into());
        }
        let env = Arc::new(Env::stdlib());
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut reads = Reads::default();
        for (i, r) in config.rules.into_iter().enumerate() {
            let (key, source, effect) = match (&r.allow, &r.deny) {
                (Some(src), None) => {
                    if r.reason.is_some() || r.message.is_some() {
                        return Err(format!(
                            "rules[{i}].reason: only a `deny` rule has a reason or a message"
                        ));
                    }
                    (
                        format!("rules[{i}].allow"),
                        src,
                        Effect::Allow {
                            roles: r.roles.clone(),
                        },
                    )
                }
                (None, Some(src)) => {
                    let reason = r.reason.clone().unwrap_or_else(|| "denied-by-rule".into());
                    if reason.is_empty()
                        || reason.len() > 64
                        || !reason.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                        })
                    {
                        return Err(format!(
                            "rules[{i}].reason: must be 1..=64 characters of a-z, 0-9, `.`, `_`, `-`"
                        ));
                    }
                    if r.roles.is_some() {
                        return Err(format!(
                            "rules[{i}].roles: only an `allow` rule keeps roles"
                        ));
                    }
                    (
                        format!("rules[{i}].deny"),
                        src,
                        Effect::Deny {
                            code: match r.code {
                                Code::Forbidden => DenyCode::Forbidden,
                                Code::Unauthenticated => DenyCode::Unauthenticated,
                            },
                            reason,
                            message: r
                                .message
                                .clone()
                                .unwrap_or_else(|| format!("rule {i} denies: {src}")),
                        },
                    )
                }
                _ => {
                    return Err(format!(
                        "rules[{i}]: give exactly one of `allow = '<expression>'` and `deny = '<expression>'`"
                    ));
                }
            };
            let (program, needs_identity) = Self::compile(&env, &key, source)?;
            let refs = program.references();
            reads.request |= refs.has_variable("request");
            reads.peer |= refs.has_variable("peer");
            reads.identity |= needs_identity;
            reads.now |= refs.has_variable("now");
            rules.push(Rule {
                program,
                needs_identity,
                effect,
            });
        }
        Ok(Self {
            env,
            rules,
            reads,
            otherwise: config.otherwise,
        })
    }

    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision {
        // Only the facts some rule reads are fetched from the gateway.
        let req = self.reads.request.then(|| RequestVar {
            role: request.role().to_string(),
            scopes: request.scopes(),
            method: request.method().to_string(),
            device: request.device().map(|d| DeviceVar { id: d.id }),
        });
        let peer = self.reads.peer.then(|| {
            let client = request.client();
            PeerVar {
                ip: request.ip().map(|ip| ip.to_string()).unwrap_or_default(),
                addr: request.remote_addr().to_string(),
                tls: request.tls(),
                client_id: client.id,
                client_version: client.version,
                platform: client.platform,
                instance_id: client.instance_id,
                conn_id: request.conn_id(),
            }
        });
        let identity = self.reads.identity.then(|| {
            so_far.map(|id| IdentityVar {
                subject: id.subject().to_string(),
                method: id.method(),
                groups: id.groups(),
                attributes: id.attributes().into_iter().collect(),
                roles: id.roles(),
                scopes: id.scopes(),
                expires_at_ms: id.expires_at_ms(),
                skip_pairing: id.skip_pairing(),
            })
        });
        let now = self.reads.now.then(now_ms);
        let ctx = match context(&self.env, req, peer, identity, now) {
            Ok(c) => c,
            Err(e) => {
                return deny(DenyCode::Forbidden, "rule-error", format!("context: {e}"));
            }
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.needs_identity && so_far.is_none() {
                continue;
            }
            match rule.program.execute(&ctx) {
                Ok(Value::Bool(true)) => {
                    return match &rule.effect {
                        Effect::Allow { roles } => Decision::permit_narrowed(Narrowing {
                            roles: roles.clone(),
                            ..Narrowing::default()
                        }),
                        Effect::Deny {
                            code,
                            reason,
                            message,
                        } => deny(*code, reason, message.clone()),
                    };
                }
                Ok(Value::Bool(false)) => {}
                // Fail closed: a rule that cannot be evaluated never lets anyone through.
                Ok(other) => {
                    return deny(
                        DenyCode::Forbidden,
                        "rule-error",
                        format!("rule {i} evaluated to {:?}, not a boolean", other.type_of()),
                    );
                }
                Err(e) => {
                    return deny(
                        DenyCode::Forbidden,
                        "rule-error",
                        format!("rule {i} failed: {e}"),
                    );
                }
            }
        }
        match (self.otherwise, so_far) {
            (Otherwise::Deny, Some(id)) => deny(
                DenyCode::Forbidden,
                "no-rule-matched",
                format!("no rule allows `{}`", id.subject()),
            ),
            _ => Decision::Abstain,
        }
    }
}

#[cfg(target_arch = "wasm32")]
trustgate_plugin_sdk::plugin!(Cel);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rules: &str) -> Result<Cel, String> {
        Cel::new(trustgate_plugin_sdk::parse_config(rules)?)
    }

    #[test]
    fn bad_expressions_are_configuration_errors_naming_the_rule() {
        let err = |c: &str| config(c).err().unwrap_or_default();
        assert!(
            err(r#"{"rules":[{"allow":"request.role =="}]}"#)
                .starts_with("rules[0].allow: not a valid CEL expression"),
        );
        let e = err(r#"{"rules":[{"deny":"true"},{"allow":"reqest.role == 'w'"}]}"#);
        assert!(
            e.starts_with("rules[1].allow: unknown variable `reqest`"),
            "{e}"
        );
        let e = err(r#"{"rules":[{"allow":"request.rol == 'worker'"}]}"#);
        assert!(
            e.starts_with("rules[0].allow: no variable has a field `rol`"),
            "{e}"
        );
        // Attributes are an open map: any key compiles (and `has()` tests for it).
        assert!(config(r#"{"rules":[{"allow":"identity.attributes.team == 'infra'"}]}"#).is_ok());
        assert!(
            config(r#"{"rules":[{"allow":"has(identity.attributes.team) && identity.attributes.team == 'a'"}]}"#)
                .is_ok()
        );
        let e = err(r#"{"rules":[{"allow":"request.role"}]}"#);
        assert!(e.contains("must evaluate to a boolean"), "{e}");
        let e = err(r#"{"rules":[{"allow":"true","deny":"false"}]}"#);
        assert!(e.starts_with("rules[0]: give exactly one"), "{e}");
        assert!(config(r#"{"rules":[]}"#).is_err());
        assert!(
            config(r#"{"rules":[{"allow":"identity.attributes.namespace.startsWith('prod-') && request.role == 'worker' && inCidr(peer.ip, '10.0.0.0/8') && now.getHours() >= 0"}]}"#)
                .is_ok()
        );
    }

    #[test]
    fn in_cidr_checks_membership() {
        assert_eq!(
            in_cidr(Arc::new("10.1.2.3".into()), Arc::new("10.0.0.0/8".into())).ok(),
            Some(true)
        );
        assert_eq!(
            in_cidr(Arc::new("fd00::1".into()), Arc::new("10.0.0.0/8".into())).ok(),
            Some(false)
        );
        assert!(in_cidr(Arc::new("x".into()), Arc::new("10.0.0.0/8".into())).is_err());
    }
}
