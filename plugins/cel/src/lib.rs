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
//! plus the function `inCidr(ip, "10.0.0.0/8")`. Every expression is parsed and checked when
//! the plugin is configured — every identifier, field and function against the variables and
//! their types, statically (`check.rs`), so a typo anywhere, even behind `&&`, is a
//! configuration error naming the rule's key, the field and the nearest valid names. Rules of
//! the common shapes run compiled (`fast.rs`); the rest in cel-rust's interpreter.

mod check;
mod fast;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, MapExpr, StructExpr};
use cel::common::types::{
    CelBool, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp, CelUInt,
};
use cel::{Context, Env, IdedExpr, Program, Value};
use serde::Deserialize;
use trustgate_plugin_sdk::{
    Cidr, Decision, DenyCode, Identity, IdentityFields, Narrowing, Plugin, Request, RequestFields,
    Wants, deny, now_ms, parse_ip,
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
    /// The rule compiled, if every node of it compiles.
    fast: Option<fast::Node>,
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

/// What some rule reads, collected from the compiled expressions.
#[derive(Debug, Default)]
struct Reads {
    request: Need,
    peer: Need,
    identity: Need,
    now: bool,
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
    request: Vec<&'static Field<FromRequest, RequestFields>>,
    peer: Vec<&'static Field<FromRequest, RequestFields>>,
    identity: Vec<&'static Field<FromIdentity, IdentityFields>>,
}

impl Wanted {
    fn of(reads: &Reads) -> Self {
        fn pick<R, F>(fields: &'static [Field<R, F>], need: &Need) -> Vec<&'static Field<R, F>> {
            fields.iter().filter(|f| need.wants(f.name)).collect()
        }
        Self {
            request: pick(REQUEST, &reads.request),
            peer: pick(PEER, &reads.peer),
            identity: pick(IDENTITY, &reads.identity),
        }
    }

    /// What the plugin declares: the facts behind the fields it reads.
    fn declared(&self) -> Wants {
        let mut wants = Wants::default();
        for f in self.request.iter().chain(&self.peer) {
            wants.request |= f.fact;
        }
        for f in &self.identity {
            wants.so_far |= f.fact;
        }
        wants
    }
}

// === The variables expressions see ===

// The variables are built as CEL values directly: going through serde (`cel::to_value`) and
// the `Value` enum (deep-copied into `Val`s when bound) cost ten times as much as evaluating a
// five-rule policy. Field names are borrowed, never allocated.

type Val = Box<dyn cel::common::value::Val + 'static>;

/// One field of a variable: its name, the fact of the contract it is read from, and how a call
/// reads it. One table per variable, so what a call reads and what the map holds never
/// disagree.
struct Field<R, F> {
    name: &'static str,
    /// The fact of the contract this field is read from (what the plugin declares it wants).
    fact: F,
    read: R,
}

/// How a call reads one field from its source.
type ReadFrom<S> = fn(&S) -> Val;
type FromRequest = for<'a, 'b> fn(&'a Request<'b>) -> Val;
type FromIdentity = for<'a, 'b> fn(&'a Identity<'b>) -> Val;

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

fn map(fields: impl IntoIterator<Item = (&'static str, Val)>) -> Val {
    let map: HashMap<CelMapKey<'static>, Val> = fields
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), v))
        .collect();
    Box::new(CelMap::from(map))
}

/// `request`.
const REQUEST: &[Field<FromRequest, RequestFields>] = &[
    Field {
        name: "role",
        fact: RequestFields::ROLE,
        read: |r| string(r.role().to_string()),
    },
    Field {
        name: "scopes",
        fact: RequestFields::SCOPES,
        read: |r| strings(r.scopes().to_vec()),
    },
    Field {
        name: "method",
        fact: RequestFields::METHOD,
        read: |r| string(r.method().to_string()),
    },
    Field {
        name: "device",
        fact: RequestFields::DEVICE,
        read: |r| {
            r.device()
                .map_or_else(null, |d| map([("id", string(d.id.clone()))]))
        },
    },
];

/// `peer`.
const PEER: &[Field<FromRequest, RequestFields>] = &[
    Field {
        name: "ip",
        fact: RequestFields::REMOTE,
        read: |r| string(r.ip().map(|ip| ip.to_string()).unwrap_or_default()),
    },
    Field {
        name: "addr",
        fact: RequestFields::REMOTE,
        read: |r| string(r.remote_addr().to_string()),
    },
    Field {
        name: "tls",
        fact: RequestFields::TLS,
        read: |r| boolean(r.tls()),
    },
    Field {
        name: "client_id",
        fact: RequestFields::CLIENT,
        read: |r| string(r.client().id.clone()),
    },
    Field {
        name: "client_version",
        fact: RequestFields::CLIENT,
        read: |r| string(r.client().version.clone()),
    },
    Field {
        name: "platform",
        fact: RequestFields::CLIENT,
        read: |r| optional(r.client().platform.clone()),
    },
    Field {
        name: "instance_id",
        fact: RequestFields::CLIENT,
        read: |r| optional(r.client().instance_id.clone()),
    },
    Field {
        name: "conn_id",
        fact: RequestFields::CONN_ID,
        read: |r| string(r.conn_id().to_string()),
    },
];

/// `identity`.
const IDENTITY: &[Field<FromIdentity, IdentityFields>] = &[
    Field {
        name: "subject",
        fact: IdentityFields::SUBJECT,
        read: |i| string(i.subject().to_string()),
    },
    Field {
        name: "method",
        fact: IdentityFields::METHOD,
        read: |i| string(i.method().to_string()),
    },
    Field {
        name: "groups",
        fact: IdentityFields::GROUPS,
        read: |i| strings(i.groups().to_vec()),
    },
    Field {
        name: "attributes",
        fact: IdentityFields::ATTRIBUTES,
        read: |i| attributes(i.attributes().to_vec()),
    },
    Field {
        name: "roles",
        fact: IdentityFields::ROLES,
        read: |i| strings(i.roles().to_vec()),
    },
    Field {
        name: "scopes",
        fact: IdentityFields::SCOPES,
        read: |i| strings(i.scopes().to_vec()),
    },
    Field {
        name: "expires_at_ms",
        fact: IdentityFields::EXPIRES_AT_MS,
        read: |i| {
            i.expires_at_ms()
                .map_or_else(null, |ms| Box::new(CelUInt::from(ms)) as Val)
        },
    },
    Field {
        name: "skip_pairing",
        fact: IdentityFields::SKIP_PAIRING,
        read: |i| boolean(i.skip_pairing()),
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
fn read<S: ?Sized, F>(fields: &[&Field<ReadFrom<S>, F>], source: &S) -> Val {
    map(fields.iter().map(|f| (f.name, (f.read)(source))))
}

/// How many parsed `inCidr` networks a thread keeps; rules name a handful of constants.
const MAX_CACHED_NETWORKS: usize = 64;

thread_local! {
    /// Networks of `inCidr` calls already parsed: a rule's network is almost always a
    /// constant, and parsing it again on every call cost as much as the rest of the rule.
    static NETWORKS: std::cell::RefCell<HashMap<String, Cidr>> = std::cell::RefCell::default();
}

/// `inCidr(ip, cidr)`: whether the address is in the network. A malformed address or network is
/// an evaluation error (which denies). Declared once in the environment (not per call).
fn in_cidr(ip: &CelString<'_>, cidr: &CelString<'_>) -> Result<CelBool, cel::ExecutionError> {
    in_cidr_str(ip.inner(), cidr.inner()).map(CelBool::from)
}

fn in_cidr_str(ip: &str, cidr: &str) -> Result<bool, cel::ExecutionError> {
    let net = match NETWORKS.with(|n| n.borrow().get(cidr).copied()) {
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
    let ip = parse_ip(ip)
        .ok_or_else(|| cel::ExecutionError::function_error("inCidr", "not an IP address"))?;
    Ok(net.contains(&ip))
}

/// The environment every rule of a plugin is compiled and run in: CEL's standard library and
/// `inCidr`.
fn environment() -> Result<Env, String> {
    let mut env = Env::stdlib();
    cel::add_overload!(env, fn in_cidr: (CelString, CelString) -> Result<CelBool>, name = "inCidr", id = "inCidr(string,string)")
        .map_err(|e| format!("{e:?}"))?;
    Ok(env)
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
    Ok(ctx)
}

/// A CEL parse error as one line: the message and where, without the caret diagram.
fn parse_error(e: &cel::ParseErrors, source: &str) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    let mut out = first.to_string();
    if text.contains("invalid argument to has() macro") {
        out.push_str(
            " (has() takes a field, `has(identity.attributes.team)`; for a key that is not a name, write `\"pod-name\" in identity.attributes`)",
        );
    }
    if source.contains('\n') || out.is_empty() {
        out.push_str(&format!(" in `{}`", source.replace('\n', " ")));
    }
    out
}

impl Cel {
    fn compile(
        env: &Arc<Env>,
        key: &str,
        source: &str,
    ) -> Result<(Program, Option<fast::Node>, Reads), String> {
        let program = env.compile(source).map_err(|e| {
            format!(
                "{key}: not a valid CEL expression: {}",
                parse_error(&e, source)
            )
        })?;
        // Checked, not sampled: the whole expression, whatever an evaluation would skip.
        check::check_rule(&program).map_err(|e| match e.at {
            Some((line, column)) if source.contains('\n') => {
                format!(
                    "{key}: {} (line {line}, column {column} of the expression)",
                    e.message
                )
            }
            Some((_, column)) => {
                format!("{key}: {} (column {column} of the expression)", e.message)
            }
            None => format!("{key}: {}", e.message),
        })?;
        let reads = Reads::of(&program);
        let fast = fast::compile(&program).map_err(|e| format!("{key}: {e}"))?;
        Ok((program, fast, reads))
    }
}

impl Plugin for Cel {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.rules.is_empty() {
            return Err("rules: is empty; a cel policy without rules would decide nothing (add at least one rule or remove the plugin)".into());
        }
        let env = Arc::new(environment()?);
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
            let (program, fast, read) = Self::compile(&env, &key, source)?;
            let needs_identity = read.identity.any();
            reads.merge(read);
            rules.push(Rule {
                program,
                fast,
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

    fn wants(&self) -> Wants {
        self.wanted.declared()
    }

    fn authenticate(&self, request: &Request, so_far: Option<&Identity>) -> Decision {
        // The interpreter's variables, built only if a rule that needs it is reached, and
        // then only of the facts some rule reads.
        let mut ctx: Option<Result<Context<'_, '_>, String>> = None;
        let interpreter = || {
            let wanted = &self.wanted;
            let req = (!wanted.request.is_empty()).then(|| read(&wanted.request, request));
            let peer = (!wanted.peer.is_empty()).then(|| read(&wanted.peer, request));
            let identity = (!wanted.identity.is_empty())
                .then(|| so_far.map_or_else(null, |id| read(&wanted.identity, id)));
            let now = self.reads.now.then(now_ms);
            context(&self.env, req, peer, identity, now)
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.needs_identity && so_far.is_none() {
                continue;
            }
            let outcome = match &rule.fast {
                Some(node) => fast::eval(node, request, so_far).map_err(|e| e.to_string()),
                None => match ctx.get_or_insert_with(interpreter) {
                    Ok(ctx) => match rule.program.execute(ctx) {
                        Ok(Value::Bool(b)) => Ok(b),
                        Ok(other) => {
                            Err(format!("evaluated to {:?}, not a boolean", other.type_of()))
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => {
                        return deny(DenyCode::Forbidden, "rule-error", format!("context: {e}"));
                    }
                },
            };
            match outcome {
                Ok(true) => {
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
                Ok(false) => {}
                // Fail closed: a rule that cannot be evaluated never lets anyone through.
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
            e.starts_with("rules[0].allow: `request` has no field `rol`"),
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

    /// The error of a one-rule configuration.
    fn rule_error(rule: &str) -> String {
        let json = serde_json::json!({"rules": [{"allow": rule}]}).to_string();
        config(&json).err().unwrap_or_default()
    }

    #[test]
    fn a_typo_anywhere_is_a_configuration_error_naming_the_field_not_a_sample_that_skips_it() {
        for (rule, field, nearest) in [
            // Behind `&&` (an evaluation of a sample short-circuits past it).
            (
                r#"identity.subject.startsWith("system:serviceaccount:") && request.rol != "worker""#,
                "rol",
                "role",
            ),
            (r#"request.role == "operator" || peer.tsl"#, "tsl", "tls"),
            (
                r#"identity.groups.exists(g, g == request.rolle)"#,
                "rolle",
                "role",
            ),
            (
                r#"request.role == "worker" ? true : identity.subjct == "x""#,
                "subjct",
                "subject",
            ),
        ] {
            let e = rule_error(rule);
            assert!(
                e.starts_with("rules[0].allow: `")
                    && e.contains(&format!("has no field `{field}`")),
                "{rule}: {e}"
            );
            assert!(
                e.contains(&format!("did you mean `{nearest}`")),
                "{rule}: {e}"
            );
            assert!(e.contains("column"), "{rule}: {e}");
        }
        let e = rule_error(r#"request.role.startWith("w")"#);
        assert!(e.contains("unknown function `startWith`"), "{e}");
        assert!(e.contains("did you mean `startsWith`"), "{e}");
        let e = rule_error(r#"inCidr(peer.ip, "10.0.0.0/33")"#);
        assert!(e.contains("is not a network"), "{e}");
        let e = rule_error(r#"request.role.size() > 0 && peer.tls.startsWith("x")"#);
        assert!(
            e.contains("`.startsWith()` cannot be called on a bool"),
            "{e}"
        );
    }

    #[test]
    fn presence_of_an_attribute_with_has_or_in() {
        assert!(rule_error("has(identity.attributes.team)").is_empty());
        assert!(rule_error(r#""pod-name" in identity.attributes"#).is_empty());
        let e = rule_error(r#"has(identity.attributes["pod-name"])"#);
        assert!(
            e.contains(r#""pod-name" in identity.attributes"#) && !e.contains('\n'),
            "one line, pointing at `in`: {e}"
        );
    }

    #[test]
    fn has_and_in_test_presence_when_evaluated() {
        use trustgate_plugin_sdk::testing;
        let env = Arc::new(environment().unwrap());
        let request = testing::request("worker", "k8s-sa-trust", "10.1.2.3:4000", true);
        let with = testing::identity("s", &[], &[("pod-name", "p-0"), ("team", "a")]);
        let without = testing::identity("s", &[], &[("namespace", "dev")]);
        for (rule, present, absent) in [
            (r#""pod-name" in identity.attributes"#, true, false),
            ("has(identity.attributes.team)", true, false),
            (r#"!("pod-name" in identity.attributes)"#, false, true),
        ] {
            let program = env.compile(rule).unwrap();
            let node = fast::compile(&program).unwrap().expect("compiles");
            assert_eq!(
                fast::eval(&node, &request, Some(&with)),
                Ok(present),
                "{rule}"
            );
            assert_eq!(
                fast::eval(&node, &request, Some(&without)),
                Ok(absent),
                "{rule}"
            );
        }
    }

    #[test]
    fn environment_declares_every_function_the_check_accepts() {
        let env = environment().unwrap();
        for (name, receiver) in check::FUNCTIONS {
            let source = match receiver {
                check::Receiver::Str => format!("'abc'.{name}('a')"),
                check::Receiver::Sized => format!("{name}('abc')"),
                check::Receiver::Time => format!("timestamp('2026-01-01T10:00:00Z').{name}()"),
                check::Receiver::None => match *name {
                    "inCidr" => "inCidr('10.0.0.1', '10.0.0.0/8')".into(),
                    "timestamp" => "timestamp('2026-01-01T10:00:00Z')".into(),
                    "duration" => "duration('1s')".into(),
                    "bool" => "bool('true')".into(),
                    "bytes" | "string" => format!("{name}('a')"),
                    _ => format!("{name}(1)"),
                },
            };
            let program = env.compile(&source).unwrap();
            let out = program.execute(&Context::with_env(Arc::new(environment().unwrap())));
            assert!(out.is_ok(), "{source}: {out:?}");
        }
    }

    #[test]
    fn compiled_rules_agree_with_the_interpreter() {
        use trustgate_plugin_sdk::testing;
        let rules = [
            r#"inCidr(peer.ip, "192.0.2.0/24")"#,
            r#"request.role == "operator" && !peer.tls"#,
            r#"request.role == "operator" && "ops" in identity.groups"#,
            r#"request.role == "worker" && identity.attributes.namespace.startsWith("prod-")"#,
            r#"identity.attributes["pod-name"].endsWith("-0") || peer.addr.contains(":")"#,
            r#""pod-name" in identity.attributes && has(identity.attributes.namespace)"#,
            r#"identity.attributes.missing == "x" && false"#,
            r#"false || identity.attributes.missing == "x""#,
            r#"size(identity.groups) > 1 ? request.method == "k8s-sa-trust" : identity.subject != "s""#,
            r#"request.role in ["worker", "operator"] && size("abc") == 3"#,
        ];
        let requests = [
            testing::request("worker", "k8s-sa-trust", "10.1.2.3:4000", true),
            testing::request("operator", "device-token", "192.0.2.9:80", false),
        ];
        let identities = [
            testing::identity(
                "a",
                &["ops", "x"],
                &[("namespace", "prod-a"), ("pod-name", "p-0")],
            ),
            testing::identity("s", &[], &[("namespace", "dev")]),
        ];
        let env = Arc::new(environment().unwrap());
        let all = |fields: &'static [Field<FromRequest, RequestFields>]| -> Vec<&'static Field<FromRequest, RequestFields>> {
            fields.iter().collect()
        };
        for rule in rules {
            let program = env.compile(rule).unwrap();
            let node = fast::compile(&program)
                .unwrap()
                .unwrap_or_else(|| panic!("{rule} compiles"));
            for r in &requests {
                for i in &identities {
                    let id_fields: Vec<_> = IDENTITY.iter().collect();
                    let ctx = context(
                        &env,
                        Some(read(&all(REQUEST), r)),
                        Some(read(&all(PEER), r)),
                        Some(read(&id_fields, i)),
                        None,
                    )
                    .unwrap();
                    let interpreted = match program.execute(&ctx) {
                        Ok(Value::Bool(b)) => Ok(b),
                        other => Err(format!("{other:?}")),
                    };
                    let compiled = fast::eval(&node, r, Some(i));
                    assert_eq!(
                        compiled.is_ok(),
                        interpreted.is_ok(),
                        "{rule}: compiled {compiled:?}, interpreted {interpreted:?}"
                    );
                    if let (Ok(a), Ok(b)) = (&compiled, &interpreted) {
                        assert_eq!(a, b, "{rule}");
                    }
                }
            }
        }
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
        assert_eq!(in_cidr_str("10.1.2.3", "10.0.0.0/8").ok(), Some(true));
        assert_eq!(in_cidr_str("fd00::1", "10.0.0.0/8").ok(), Some(false));
        assert!(in_cidr_str("x", "10.0.0.0/8").is_err());
    }
}
