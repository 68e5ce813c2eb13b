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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, MapExpr, StructExpr};
use cel::common::types::{
    CelBool, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt,
};
use cel::{Context, Env, IdedExpr, Program, Value};
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

/// What the rules read of one variable, so a call asks the gateway for nothing more: each host
/// call and each map entry costs, and most rules read two or three fields.
#[derive(Debug, Default, PartialEq, Eq)]
struct Need {
    /// The variable is used as a whole (compared, passed to a function, iterated): every field.
    all: bool,
    /// The fields selected from it (`request.role` → `role`).
    fields: BTreeSet<String>,
}

impl Need {
    fn any(&self) -> bool {
        self.all || !self.fields.is_empty()
    }

    fn wants(&self, field: &str) -> bool {
        self.all || self.fields.contains(field)
    }
}

/// The identifiers an expression may use besides the variables: CEL's type names.
const TYPE_NAMES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// What some rule reads, collected from the compiled expressions.
#[derive(Debug, Default)]
struct Reads {
    request: Need,
    peer: Need,
    identity: Need,
    now: bool,
    /// The first identifier that is neither a variable, a type nor bound by a macro.
    unknown: Option<String>,
}

impl Reads {
    /// What `program` reads.
    fn of(program: &Program) -> Self {
        let mut reads = Self::default();
        // The walk matches every kind of expression node (no wildcard arm), so a new kind in
        // the CEL crate is a compile error here rather than a variable read unnoticed.
        reads.walk(program.expression(), &mut Vec::new());
        reads
    }

    /// Adds what another rule reads.
    fn merge(&mut self, other: Reads) {
        for (mine, theirs) in [
            (&mut self.request, other.request),
            (&mut self.peer, other.peer),
            (&mut self.identity, other.identity),
        ] {
            mine.all |= theirs.all;
            mine.fields.extend(theirs.fields);
        }
        self.now |= other.now;
    }

    fn need_mut(&mut self, variable: &str) -> Option<&mut Need> {
        match variable {
            "request" => Some(&mut self.request),
            "peer" => Some(&mut self.peer),
            "identity" => Some(&mut self.identity),
            _ => None,
        }
    }

    /// Walks `e`; `bound` holds the names macros (`exists`, `all`, `map`, `filter`) bind
    /// around it, which shadow the variables.
    fn walk(&mut self, e: &IdedExpr, bound: &mut Vec<String>) {
        match &e.expr {
            Expr::Select(s) => match &s.operand.expr {
                Expr::Ident(name) if !bound.contains(name) && self.need_mut(name).is_some() => {
                    if let Some(need) = self.need_mut(name) {
                        need.fields.insert(s.field.clone());
                    }
                }
                _ => self.walk(&s.operand, bound),
            },
            Expr::Ident(name) => {
                if bound.contains(name) {
                } else if let Some(need) = self.need_mut(name) {
                    need.all = true;
                } else if name == "now" {
                    self.now = true;
                } else if !TYPE_NAMES.contains(&name.as_str()) && self.unknown.is_none() {
                    self.unknown = Some(name.clone());
                }
            }
            Expr::Call(c) => {
                if let Some(target) = &c.target {
                    self.walk(target, bound);
                }
                for a in &c.args {
                    self.walk(a, bound);
                }
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let depth = bound.len();
                bound.push(c.iter_var.clone());
                bound.extend(c.iter_var2.clone());
                bound.push(c.accu_var.clone());
                for part in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part, bound);
                }
                bound.truncate(depth);
            }
            Expr::List(l) => {
                for element in &l.elements {
                    self.walk(element, bound);
                }
            }
            Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
                for entry in entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => self.walk(&f.value, bound),
                        EntryExpr::MapEntry(m) => {
                            self.walk(&m.key, bound);
                            self.walk(&m.value, bound);
                        }
                    }
                }
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }
}

/// The configured plugin.
pub struct Cel {
    env: Arc<Env>,
    rules: Vec<Rule>,
    /// What the rules read, as collected at configure.
    reads: Reads,
    /// `reads` as the fields each call fetches, chosen once at configure.
    wanted: Wanted,
    otherwise: Otherwise,
}

/// The fields a call fetches of each variable; an empty list leaves the variable out.
struct Wanted {
    request: Vec<&'static Field<FromRequest>>,
    peer: Vec<&'static Field<FromRequest>>,
    identity: Vec<&'static Field<FromIdentity>>,
}

impl Wanted {
    fn of(reads: &Reads) -> Self {
        fn pick<R>(fields: &'static [Field<R>], need: &Need) -> Vec<&'static Field<R>> {
            fields.iter().filter(|f| need.wants(f.name)).collect()
        }
        Self {
            request: pick(REQUEST, &reads.request),
            peer: pick(PEER, &reads.peer),
            identity: pick(IDENTITY, &reads.identity),
        }
    }
}

// === The variables expressions see ===

// The variables are built as CEL values directly: going through serde (`cel::to_value`) and
// the `Value` enum (deep-copied into `Val`s when bound) cost ten times as much as evaluating a
// five-rule policy. Field names are borrowed, never allocated.

type Val = Box<dyn cel::common::value::Val + 'static>;

/// One field of a variable: its name, how a call reads it from the gateway, and the value the
/// configure-time dry run gives it. One table per variable, so what a call reads, what the map
/// holds and what configuration checks against can never disagree.
struct Field<R> {
    name: &'static str,
    read: R,
    sample: fn() -> Val,
}

/// How a call reads one field from its source.
type ReadFrom<S> = fn(&S) -> Val;
type FromRequest = for<'a, 'b> fn(&'a Request<'b>) -> Val;
type FromIdentity = for<'a, 'b> fn(&'a Identity<'b>) -> Val;

fn string(s: String) -> Val {
    Box::new(CelString::from(s))
}

fn text(s: &'static str) -> Val {
    string(s.to_string())
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

fn map(fields: impl IntoIterator<Item = (&'static str, Val)>) -> Val {
    let map: HashMap<CelMapKey<'static>, Val> = fields
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    Box::new(CelMap::from(map))
}

/// `request`.
const REQUEST: &[Field<FromRequest>] = &[
    Field {
        name: "role",
        read: |r| string(r.role().to_string()),
        sample: || text("worker"),
    },
    Field {
        name: "scopes",
        read: |r| strings(r.scopes()),
        sample: || strings(vec!["scope".into()]),
    },
    Field {
        name: "method",
        read: |r| string(r.method().to_string()),
        sample: || text("method"),
    },
    Field {
        name: "device",
        read: |r| {
            r.device()
                .map_or_else(null, |d| map([("id", string(d.id))]))
        },
        sample: || map([("id", text("id"))]),
    },
];

/// `peer`.
const PEER: &[Field<FromRequest>] = &[
    Field {
        name: "ip",
        read: |r| string(r.ip().map(|ip| ip.to_string()).unwrap_or_default()),
        sample: || text("10.0.0.1"),
    },
    Field {
        name: "addr",
        read: |r| string(r.remote_addr().to_string()),
        sample: || text("10.0.0.1:40000"),
    },
    Field {
        name: "tls",
        read: |r| boolean(r.tls()),
        sample: || boolean(true),
    },
    Field {
        name: "client_id",
        read: |r| string(r.client().id),
        sample: || text("client"),
    },
    Field {
        name: "client_version",
        read: |r| string(r.client().version),
        sample: || text("1"),
    },
    Field {
        name: "platform",
        read: |r| optional(r.client().platform),
        sample: || text("linux"),
    },
    Field {
        name: "instance_id",
        read: |r| optional(r.client().instance_id),
        sample: || text("pod"),
    },
    Field {
        name: "conn_id",
        read: |r| string(r.conn_id()),
        sample: || text("c-1"),
    },
];

/// `identity`. Its `attributes` sample is replaced by the dry run's growing one.
const IDENTITY: &[Field<FromIdentity>] = &[
    Field {
        name: "subject",
        read: |i| string(i.subject().to_string()),
        sample: || text("subject"),
    },
    Field {
        name: "method",
        read: |i| string(i.method()),
        sample: || text("method"),
    },
    Field {
        name: "groups",
        read: |i| strings(i.groups()),
        sample: || strings(vec!["group".into()]),
    },
    Field {
        name: "attributes",
        read: |i| attributes(i.attributes()),
        sample: || attributes(Vec::new()),
    },
    Field {
        name: "roles",
        read: |i| strings(i.roles()),
        sample: || strings(vec!["worker".into()]),
    },
    Field {
        name: "scopes",
        read: |i| strings(i.scopes()),
        sample: || strings(vec!["scope".into()]),
    },
    Field {
        name: "expires_at_ms",
        read: |i| {
            i.expires_at_ms()
                .map_or_else(null, |ms| Box::new(CelUInt::from(ms)) as Val)
        },
        sample: || Box::new(CelUInt::from(0u64)),
    },
    Field {
        name: "skip_pairing",
        read: |i| boolean(i.skip_pairing()),
        sample: || boolean(false),
    },
];

fn attributes(pairs: Vec<(String, String)>) -> Val {
    let map: HashMap<CelMapKey<'static>, Val> = pairs
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), string(v)))
        .collect();
    Box::new(CelMap::from(map))
}

/// The given fields of one variable, read from `source`.
fn read<S: ?Sized>(fields: &[&Field<ReadFrom<S>>], source: &S) -> Val {
    map(fields.iter().map(|f| (f.name, (f.read)(source))))
}

/// Every field of one variable with its sample value.
fn sample<R>(fields: &[Field<R>]) -> Vec<(&'static str, Val)> {
    fields.iter().map(|f| (f.name, (f.sample)())).collect()
}

/// How many attribute keys the configure-time dry run adds to its sample identity.
const MAX_SAMPLE_ATTRIBUTES: usize = 64;

/// The attribute keys the sample identity starts with (those `k8s-sa-trust` sets).
const SAMPLE_ATTRIBUTES: [&str; 5] = [
    "namespace",
    "service-account",
    "pod-name",
    "pod-uid",
    "node-name",
];

/// How many parsed `inCidr` networks a thread keeps; rules name a handful of constants.
const MAX_CACHED_NETWORKS: usize = 64;

thread_local! {
    /// Networks of `inCidr` calls already parsed: a rule's network is almost always a
    /// constant, and parsing it again on every call cost as much as the rest of the rule.
    static NETWORKS: std::cell::RefCell<HashMap<String, Cidr>> = std::cell::RefCell::default();
}

/// `inCidr(ip, cidr)`: whether the address is in the network. A malformed address or network is
/// an evaluation error (which denies).
fn in_cidr(ip: Arc<String>, cidr: Arc<String>) -> Result<bool, cel::ExecutionError> {
    let net = match NETWORKS.with(|n| n.borrow().get(cidr.as_str()).copied()) {
        Some(net) => net,
        None => {
            let net: Cidr = cidr
                .parse()
                .map_err(|_| cel::ExecutionError::function_error("inCidr", "not a network"))?;
            NETWORKS.with(|n| {
                let mut n = n.borrow_mut();
                if n.len() < MAX_CACHED_NETWORKS {
                    n.insert(cidr.to_string(), net);
                }
            });
            net
        }
    };
    let ip = parse_ip(&ip)
        .ok_or_else(|| cel::ExecutionError::function_error("inCidr", "not an IP address"))?;
    Ok(net.contains(&ip))
}

fn context<'a>(
    env: &Arc<Env>,
    request: Option<Val>,
    peer: Option<Val>,
    identity: Option<Val>,
    now: Option<u64>,
) -> Result<Context<'a, 'a>, String> {
    let mut ctx = Context::with_env(env.clone());
    if let Some(r) = request {
        ctx.add_variable_as_val("request", r);
    }
    if let Some(p) = peer {
        ctx.add_variable_as_val("peer", p);
    }
    if let Some(i) = identity {
        ctx.add_variable_as_val("identity", i);
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
    fn compile(env: &Arc<Env>, key: &str, source: &str) -> Result<(Program, Reads), String> {
        let program = env
            .compile(source)
            .map_err(|e| format!("{key}: not a valid CEL expression: {e}"))?;
        let reads = Reads::of(&program);
        if let Some(unknown) = &reads.unknown {
            return Err(format!(
                "{key}: unknown variable `{unknown}` (expressions see `request`, `peer`, `identity` and `now`)"
            ));
        }
        // "Type check": run it once against a complete sample; a missing field, a wrong
        // operand type or a non-boolean result shows up here instead of at the first peer.
        // Attributes are an open map, so a key the sample lacks is added and the run repeated;
        // a key that is still missing afterwards is a field no variable has.
        let mut attributes: BTreeMap<String, String> = SAMPLE_ATTRIBUTES
            .iter()
            .map(|k| (k.to_string(), "value".to_string()))
            .collect();
        loop {
            let mut identity = sample(IDENTITY);
            for (name, value) in &mut identity {
                if *name == "attributes" {
                    *value = self::attributes(
                        attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    );
                }
            }
            let ctx = context(
                env,
                Some(map(sample(REQUEST))),
                Some(map(sample(PEER))),
                Some(map(identity)),
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
                    if !attributes.contains_key(field.as_str())
                        && attributes.len() < MAX_SAMPLE_ATTRIBUTES =>
                {
                    attributes.insert(field.to_string(), "value".into());
                }
                Err(cel::ExecutionError::NoSuchKey(field)) => {
                    return Err(format!(
                        "{key}: no variable has a field `{field}` (the fields of `request`, `peer` and `identity` are listed in docs/writing-plugins.md)"
                    ));
                }
                Err(e) => return Err(format!("{key}: {e}")),
            }
        }
        Ok((program, reads))
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
            let (program, read) = Self::compile(&env, &key, source)?;
            let needs_identity = read.identity.any();
            reads.merge(read);
            rules.push(Rule {
                program,
                needs_identity,
                effect,
            });
        }
        Ok(Self {
            env,
            rules,
            wanted: Wanted::of(&reads),
            reads,
            otherwise: config.otherwise,
        })
    }

    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision {
        // Only the facts some rule reads are fetched from the gateway.
        let wanted = &self.wanted;
        let req = (!wanted.request.is_empty()).then(|| read(&wanted.request, request));
        let peer = (!wanted.peer.is_empty()).then(|| read(&wanted.peer, request));
        let identity = (!wanted.identity.is_empty())
            .then(|| so_far.map_or_else(null, |id| read(&wanted.identity, id)));
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

    /// What a configured rule set reads of each variable.
    fn reads(rules: &[&str]) -> Reads {
        let rules: Vec<String> = rules
            .iter()
            .map(|r| format!("{{\"allow\":\"{}\"}}", r.replace('"', "\\\"")))
            .collect();
        config(&format!("{{\"rules\":[{}]}}", rules.join(",")))
            .unwrap()
            .reads
    }

    fn fields(names: &[&str]) -> Need {
        Need {
            all: false,
            fields: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_call_reads_only_the_fields_some_rule_selects() {
        let r = reads(&[
            r#"inCidr(peer.ip, "192.0.2.0/24")"#,
            r#"request.role == "operator" && "ops" in identity.groups"#,
            r#"request.role == "worker" && identity.attributes.namespace.startsWith("prod-")"#,
        ]);
        assert_eq!(r.request, fields(&["role"]));
        assert_eq!(r.peer, fields(&["ip"]));
        assert_eq!(r.identity, fields(&["attributes", "groups"]));
        assert!(!r.now);

        // Inside macros (whose own variables are neither variables nor unknown) and
        // presence tests too.
        let r = reads(&[
            r#"identity.groups.exists(request, request.startsWith("team-"))"#,
            r#"identity.groups.all(g, g != "banned") && [1, 2].map(x, x * 2).size() == 2"#,
        ]);
        assert_eq!(r.identity, fields(&["groups"]));
        assert!(!r.request.any(), "a macro's `request` is not the request");
        let r = reads(&[
            r#"identity.groups.exists(g, g == "ops") && has(request.device)"#,
            r#"now.getHours() < 18"#,
        ]);
        assert_eq!(r.identity, fields(&["groups"]));
        assert_eq!(r.request, fields(&["device"]));
        assert_eq!(r.peer, Need::default());
        assert!(r.now);

        // A variable used as a whole is read whole.
        let r = reads(&["identity != null", "size(peer) > 0"]);
        assert!(r.identity.all && r.identity.wants("skip_pairing"));
        assert!(r.peer.all);
        assert!(!r.request.any());
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
