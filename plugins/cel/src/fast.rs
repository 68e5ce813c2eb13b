//! Rules compiled for the common case: a rule whose every node is a field of the request, the
//! peer or the identity, a constant, a comparison, a logical operator, a string test, a list
//! or attribute membership, `size` or `inCidr` becomes a small tree evaluated against the
//! plugin's facts directly — no CEL values built, no function looked up by name per call.
//! Anything else (macros, timestamps, arithmetic, nullable fields) stays with the cel-rust
//! interpreter, rule by rule. Both follow CEL's semantics, errors included: `&&` and `||`
//! absorb an error when the other side decides, a missing attribute is an error.

use std::borrow::Cow;

use cel::common::ast::{Expr, LiteralValue, operators as op};
use cel::{IdedExpr, Program};
use trustgate_plugin_sdk::{Cidr, Identity, Request};

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Src {
    Role,
    Scopes,
    Method,
    PeerIp,
    PeerAddr,
    PeerTls,
    ClientId,
    ClientVersion,
    ConnId,
    Subject,
    IdentityMethod,
    Groups,
    Attribute(String),
    Roles,
    IdentityScopes,
    SkipPairing,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Bool(bool),
    Str(String),
    Int(i64),
    Strings(Vec<String>),
    Get(Src),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>),
    Ne(Box<Node>, Box<Node>),
    Cmp(&'static str, Box<Node>, Box<Node>),
    StartsWith(Box<Node>, Box<Node>),
    EndsWith(Box<Node>, Box<Node>),
    Contains(Box<Node>, Box<Node>),
    /// An element in a list.
    In(Box<Node>, Box<Node>),
    /// Whether the identity has the attribute.
    HasAttribute(String),
    Size(Box<Node>),
    InCidr(Box<Node>, Cidr),
}

/// What a compiled node evaluates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Str,
    Int,
    List,
}

/// A value during evaluation, borrowed from the facts where it can be.
#[derive(Debug, PartialEq)]
enum V<'a> {
    Bool(bool),
    Str(Cow<'a, str>),
    Int(i64),
    List(Cow<'a, [String]>),
}

/// Compiles `program`: `Ok(None)` when some node needs the interpreter, `Err` for a constant
/// the rule cannot work with (a network `inCidr` cannot parse).
pub(crate) fn compile(program: &Program) -> Result<Option<Node>, String> {
    match node(program.expression())? {
        Some((n, Kind::Bool)) => Ok(Some(n)),
        _ => Ok(None),
    }
}

type Compiled = Result<Option<(Node, Kind)>, String>;

fn boxed(n: Node) -> Box<Node> {
    Box::new(n)
}

fn node(e: &IdedExpr) -> Compiled {
    Ok(match &e.expr {
        Expr::Literal(LiteralValue::Boolean(b)) => Some((Node::Bool(**b), Kind::Bool)),
        Expr::Literal(LiteralValue::String(s)) => {
            Some((Node::Str(s.inner().to_string()), Kind::Str))
        }
        Expr::Literal(LiteralValue::Int(i)) => Some((Node::Int(**i), Kind::Int)),
        Expr::Select(s) if s.test => {
            // `has(identity.attributes.key)`
            match field_path(&s.operand) {
                Some(("identity", "attributes")) => {
                    Some((Node::HasAttribute(s.field.clone()), Kind::Bool))
                }
                _ => None,
            }
        }
        Expr::Select(s) => return source(e, &s.operand, &s.field),
        Expr::List(l) => {
            let mut items = Vec::with_capacity(l.elements.len());
            for x in &l.elements {
                match &x.expr {
                    Expr::Literal(LiteralValue::String(s)) => items.push(s.inner().to_string()),
                    _ => return Ok(None),
                }
            }
            Some((Node::Strings(items), Kind::List))
        }
        Expr::Call(c) => return call(&c.func_name, c.target.as_deref(), &c.args),
        _ => None,
    })
}

/// `x.y` as (`x`, `y`) when both are plain names.
fn field_path(e: &IdedExpr) -> Option<(&str, &str)> {
    match &e.expr {
        Expr::Select(s) if !s.test => match &s.operand.expr {
            Expr::Ident(root) => Some((root.as_str(), s.field.as_str())),
            _ => None,
        },
        _ => None,
    }
}

fn source(_e: &IdedExpr, operand: &IdedExpr, field: &str) -> Compiled {
    let get = |s: Src, k: Kind| Ok(Some((Node::Get(s), k)));
    match &operand.expr {
        Expr::Ident(root) => match (root.as_str(), field) {
            ("request", "role") => get(Src::Role, Kind::Str),
            ("request", "scopes") => get(Src::Scopes, Kind::List),
            ("request", "method") => get(Src::Method, Kind::Str),
            ("peer", "ip") => get(Src::PeerIp, Kind::Str),
            ("peer", "addr") => get(Src::PeerAddr, Kind::Str),
            ("peer", "tls") => get(Src::PeerTls, Kind::Bool),
            ("peer", "client_id") => get(Src::ClientId, Kind::Str),
            ("peer", "client_version") => get(Src::ClientVersion, Kind::Str),
            ("peer", "conn_id") => get(Src::ConnId, Kind::Str),
            ("identity", "subject") => get(Src::Subject, Kind::Str),
            ("identity", "method") => get(Src::IdentityMethod, Kind::Str),
            ("identity", "groups") => get(Src::Groups, Kind::List),
            ("identity", "roles") => get(Src::Roles, Kind::List),
            ("identity", "scopes") => get(Src::IdentityScopes, Kind::List),
            ("identity", "skip_pairing") => get(Src::SkipPairing, Kind::Bool),
            _ => Ok(None),
        },
        // `identity.attributes.key`
        _ if field_path(operand) == Some(("identity", "attributes")) => {
            get(Src::Attribute(field.to_string()), Kind::Str)
        }
        _ => Ok(None),
    }
}

fn call(name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Compiled {
    let mut compiled = Vec::with_capacity(args.len() + 1);
    // `identity.attributes["key"]` and `"key" in identity.attributes` read one attribute.
    if name == op::INDEX
        && let [map, key] = args
        && field_path(map) == Some(("identity", "attributes"))
        && let Expr::Literal(LiteralValue::String(k)) = &key.expr
    {
        return Ok(Some((
            Node::Get(Src::Attribute(k.inner().to_string())),
            Kind::Str,
        )));
    }
    if name == op::IN
        && let [key, map] = args
        && field_path(map) == Some(("identity", "attributes"))
    {
        return Ok(match &key.expr {
            Expr::Literal(LiteralValue::String(k)) => {
                Some((Node::HasAttribute(k.inner().to_string()), Kind::Bool))
            }
            _ => None,
        });
    }
    if name == "inCidr"
        && target.is_none()
        && let [ip, net] = args
    {
        let Expr::Literal(LiteralValue::String(net)) = &net.expr else {
            return Ok(None);
        };
        let cidr: Cidr = net.inner().parse().map_err(|_| {
            format!(
                "inCidr: `{}` is not a network (write e.g. `10.0.0.0/8` or `fd00::/8`)",
                net.inner()
            )
        })?;
        return Ok(match node(ip)? {
            Some((n, Kind::Str)) => Some((Node::InCidr(boxed(n), cidr), Kind::Bool)),
            _ => None,
        });
    }
    for a in target.into_iter().chain(args) {
        match node(a)? {
            Some(c) => compiled.push(c),
            None => return Ok(None),
        }
    }
    let kinds: Vec<Kind> = compiled.iter().map(|(_, k)| *k).collect();
    let mut nodes = compiled.into_iter().map(|(n, _)| boxed(n));
    let mut next = || nodes.next().unwrap_or_else(|| boxed(Node::Bool(false)));
    use Kind::*;
    Ok(Some(match (name, kinds.as_slice()) {
        (op::LOGICAL_AND, [Bool, Bool]) => (Node::And(next(), next()), Bool),
        (op::LOGICAL_OR, [Bool, Bool]) => (Node::Or(next(), next()), Bool),
        (op::LOGICAL_NOT, [Bool]) => (Node::Not(next()), Bool),
        (op::EQUALS, [a, b]) if a == b && *a != List => (Node::Eq(next(), next()), Bool),
        (op::NOT_EQUALS, [a, b]) if a == b && *a != List => (Node::Ne(next(), next()), Bool),
        (op::LESS, [Int, Int]) => (Node::Cmp(op::LESS, next(), next()), Bool),
        (op::LESS_EQUALS, [Int, Int]) => (Node::Cmp(op::LESS_EQUALS, next(), next()), Bool),
        (op::GREATER, [Int, Int]) => (Node::Cmp(op::GREATER, next(), next()), Bool),
        (op::GREATER_EQUALS, [Int, Int]) => (Node::Cmp(op::GREATER_EQUALS, next(), next()), Bool),
        (op::CONDITIONAL, [Bool, a, b]) if a == b => {
            let (c, x, y) = (next(), next(), next());
            (Node::Cond(c, x, y), *a)
        }
        (op::IN, [Str, List]) => (Node::In(next(), next()), Bool),
        ("startsWith", [Str, Str]) if target.is_some() => (Node::StartsWith(next(), next()), Bool),
        ("endsWith", [Str, Str]) if target.is_some() => (Node::EndsWith(next(), next()), Bool),
        ("contains", [Str, Str]) if target.is_some() => (Node::Contains(next(), next()), Bool),
        ("size", [Str | List]) => (Node::Size(next()), Int),
        _ => return Ok(None),
    }))
}

/// Evaluates a compiled rule against the facts (`identity` is there whenever the rule reads
/// it: rules that do are skipped while there is none).
pub(crate) fn eval(
    n: &Node,
    request: &Request,
    identity: Option<&Identity>,
) -> Result<bool, String> {
    match value(n, request, identity)? {
        V::Bool(b) => Ok(b),
        _ => Err("the rule did not evaluate to a boolean".into()),
    }
}

fn get<'a>(s: &Src, r: &'a Request, i: Option<&'a Identity>) -> Result<V<'a>, String> {
    let id = || i.ok_or_else(|| "no identity has been established".to_string());
    Ok(match s {
        Src::Role => V::Str(Cow::Borrowed(r.role())),
        Src::Scopes => V::List(Cow::Borrowed(r.scopes())),
        Src::Method => V::Str(Cow::Borrowed(r.method())),
        Src::PeerIp => V::Str(Cow::Owned(
            r.ip().map(|ip| ip.to_string()).unwrap_or_default(),
        )),
        Src::PeerAddr => V::Str(Cow::Borrowed(r.remote_addr())),
        Src::PeerTls => V::Bool(r.tls()),
        Src::ClientId => V::Str(Cow::Borrowed(&r.client().id)),
        Src::ClientVersion => V::Str(Cow::Borrowed(&r.client().version)),
        Src::ConnId => V::Str(Cow::Borrowed(r.conn_id())),
        Src::Subject => V::Str(Cow::Borrowed(id()?.subject())),
        Src::IdentityMethod => V::Str(Cow::Borrowed(id()?.method())),
        Src::Groups => V::List(Cow::Borrowed(id()?.groups())),
        Src::Attribute(k) => V::Str(Cow::Borrowed(
            id()?
                .attribute(k)
                .ok_or_else(|| format!("No such key: {k}"))?,
        )),
        Src::Roles => V::List(Cow::Borrowed(id()?.roles())),
        Src::IdentityScopes => V::List(Cow::Borrowed(id()?.scopes())),
        Src::SkipPairing => V::Bool(id()?.skip_pairing()),
    })
}

fn value<'a>(n: &'a Node, r: &'a Request, i: Option<&'a Identity>) -> Result<V<'a>, String> {
    let boolean = |n: &'a Node| -> Result<bool, String> {
        match value(n, r, i)? {
            V::Bool(b) => Ok(b),
            _ => Err("not a boolean".into()),
        }
    };
    let string = |n: &'a Node| -> Result<Cow<'a, str>, String> {
        match value(n, r, i)? {
            V::Str(s) => Ok(s),
            _ => Err("not a string".into()),
        }
    };
    Ok(match n {
        Node::Bool(b) => V::Bool(*b),
        Node::Str(s) => V::Str(Cow::Borrowed(s)),
        Node::Int(x) => V::Int(*x),
        Node::Strings(items) => V::List(Cow::Borrowed(items)),
        Node::Get(s) => get(s, r, i)?,
        Node::Not(a) => V::Bool(!boolean(a)?),
        // CEL's logic: a side that decides absorbs an error on the other side.
        Node::And(a, b) => {
            let x = boolean(a);
            if x == Ok(false) {
                return Ok(V::Bool(false));
            }
            let y = boolean(b);
            match (x, y) {
                (_, Ok(false)) => V::Bool(false),
                (Err(e), _) | (_, Err(e)) => return Err(e),
                (Ok(_), Ok(_)) => V::Bool(true),
            }
        }
        Node::Or(a, b) => {
            let x = boolean(a);
            if x == Ok(true) {
                return Ok(V::Bool(true));
            }
            let y = boolean(b);
            match (x, y) {
                (_, Ok(true)) => V::Bool(true),
                (Err(e), _) | (_, Err(e)) => return Err(e),
                (Ok(_), Ok(_)) => V::Bool(false),
            }
        }
        Node::Cond(c, a, b) => {
            if boolean(c)? {
                value(a, r, i)?
            } else {
                value(b, r, i)?
            }
        }
        Node::Eq(a, b) => V::Bool(value(a, r, i)? == value(b, r, i)?),
        Node::Ne(a, b) => V::Bool(value(a, r, i)? != value(b, r, i)?),
        Node::Cmp(operator, a, b) => match (value(a, r, i)?, value(b, r, i)?) {
            (V::Int(x), V::Int(y)) => V::Bool(match *operator {
                op::LESS => x < y,
                op::LESS_EQUALS => x <= y,
                op::GREATER => x > y,
                _ => x >= y,
            }),
            _ => return Err("not comparable".into()),
        },
        Node::StartsWith(a, b) => V::Bool(string(a)?.starts_with(string(b)?.as_ref())),
        Node::EndsWith(a, b) => V::Bool(string(a)?.ends_with(string(b)?.as_ref())),
        Node::Contains(a, b) => V::Bool(string(a)?.contains(string(b)?.as_ref())),
        Node::In(x, list) => {
            let x = string(x)?;
            match value(list, r, i)? {
                V::List(items) => V::Bool(items.iter().any(|item| *item == *x)),
                _ => return Err("not a list".into()),
            }
        }
        Node::HasAttribute(k) => V::Bool(
            i.ok_or("no identity has been established")?
                .attribute(k)
                .is_some(),
        ),
        Node::Size(a) => match value(a, r, i)? {
            V::Str(s) => V::Int(s.chars().count() as i64),
            V::List(l) => V::Int(l.len() as i64),
            _ => return Err("no size".into()),
        },
        Node::InCidr(ip, net) => {
            let addr = match &**ip {
                // The peer's address is already parsed: no text round trip.
                Node::Get(Src::PeerIp) => r.ip(),
                other => trustgate_plugin_sdk::parse_ip(&string(other)?),
            };
            match addr {
                Some(a) => V::Bool(net.contains(&a)),
                None => return Err("inCidr: not an IP address".into()),
            }
        }
    })
}
