//! The static check of a rule: every identifier, field and function of the parsed expression
//! against the variables the plugin offers and their types — a walk of the AST, never an
//! evaluation, so a typo behind `&&`, inside `exists()` or in a ternary's other branch is a
//! configuration error naming the field and the nearest valid names.

use cel::common::ast::{EntryExpr, Expr, LiteralValue, MapExpr, StructExpr};
use cel::{IdedExpr, Program};

/// A type as far as the check knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    Null,
    Timestamp,
    Duration,
    /// A list of this.
    List(Box<Ty>),
    /// A map from strings to this.
    Map(Box<Ty>),
    /// One of the variables' objects.
    Obj(Obj),
    /// Possibly `null`.
    Nullable(Box<Ty>),
    /// Unknown until run time (a macro's own variable, `dyn(...)`, a mixed literal).
    Dyn,
    /// A type name (`int`, `string`, ...).
    Type,
}

/// The objects the variables are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Obj {
    Request,
    Peer,
    Identity,
    Device,
}

impl Obj {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Peer => "peer",
            Self::Identity => "identity",
            Self::Device => "request.device",
        }
    }

    /// Its fields and their types.
    pub(crate) fn fields(self) -> Vec<(&'static str, Ty)> {
        let s = || Ty::Str;
        let list = || Ty::List(Box::new(Ty::Str));
        let opt = |t: Ty| Ty::Nullable(Box::new(t));
        match self {
            Self::Request => vec![
                ("role", s()),
                ("scopes", list()),
                ("method", s()),
                ("device", opt(Ty::Obj(Obj::Device))),
            ],
            Self::Peer => vec![
                ("ip", s()),
                ("addr", s()),
                ("tls", Ty::Bool),
                ("client_id", s()),
                ("client_version", s()),
                ("platform", opt(s())),
                ("instance_id", opt(s())),
                ("conn_id", s()),
            ],
            Self::Identity => vec![
                ("subject", s()),
                ("method", s()),
                ("groups", list()),
                ("attributes", Ty::Map(Box::new(Ty::Str))),
                ("roles", list()),
                ("scopes", list()),
                ("expires_at_ms", opt(Ty::Uint)),
                ("skip_pairing", Ty::Bool),
            ],
            Self::Device => vec![("id", s())],
        }
    }
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::Str => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Null => f.write_str("null"),
            Ty::Timestamp => f.write_str("timestamp"),
            Ty::Duration => f.write_str("duration"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(t) => write!(f, "map(string, {t})"),
            Ty::Obj(o) => write!(f, "`{}`", o.name()),
            Ty::Nullable(t) => write!(f, "{t} or null"),
            Ty::Dyn => f.write_str("dyn"),
            Ty::Type => f.write_str("type"),
        }
    }
}

/// The variables an expression sees.
pub(crate) const VARIABLES: [&str; 4] = ["request", "peer", "identity", "now"];

/// CEL's type names, usable as identifiers.
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

/// The functions a rule may call, as written: global ones and methods (`x.f(...)`), with the
/// receiver type methods need when it is known. `environment_declares_every_function` (a
/// unit test) proves each resolves in the environment rules run in.
pub(crate) const FUNCTIONS: &[(&str, Receiver)] = &[
    ("size", Receiver::Sized),
    ("contains", Receiver::Str),
    ("startsWith", Receiver::Str),
    ("endsWith", Receiver::Str),
    ("matches", Receiver::Str),
    ("int", Receiver::None),
    ("uint", Receiver::None),
    ("double", Receiver::None),
    ("string", Receiver::None),
    ("bytes", Receiver::None),
    ("bool", Receiver::None),
    ("dyn", Receiver::None),
    ("type", Receiver::None),
    ("timestamp", Receiver::None),
    ("duration", Receiver::None),
    ("getFullYear", Receiver::Time),
    ("getMonth", Receiver::Time),
    ("getDate", Receiver::Time),
    ("getDayOfMonth", Receiver::Time),
    ("getDayOfWeek", Receiver::Time),
    ("getDayOfYear", Receiver::Time),
    ("getHours", Receiver::Time),
    ("getMinutes", Receiver::Time),
    ("getSeconds", Receiver::Time),
    ("getMilliseconds", Receiver::Time),
    ("inCidr", Receiver::None),
];

/// What a function needs of its receiver when called as a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receiver {
    /// Called as a global function (`int(x)`, `inCidr(ip, net)`); as a method: anything.
    None,
    /// A string.
    Str,
    /// Something with a size: a string, bytes, a list or a map.
    Sized,
    /// A timestamp or a duration.
    Time,
}

/// Why a rule does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckError {
    pub message: String,
    /// Where in the expression (line, column), when known.
    pub at: Option<(u32, u32)>,
}

/// The 1-based line and column of character `offset` of `source`.
fn line_column(source: &str, offset: usize) -> (u32, u32) {
    let (mut line, mut column) = (1u32, 1u32);
    for c in source.chars().take(offset) {
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// The nearest of `names` to `wrong` (by edit distance), for "did you mean" hints.
pub(crate) fn nearest<'a>(
    wrong: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    names
        .into_iter()
        .map(|n| (distance(&wrong.to_lowercase(), &n.to_lowercase()), n))
        .filter(|(d, n)| *d <= (n.len().max(wrong.len()) / 2).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Edits between `a` and `b`, a swap of neighbours counting one (optimal string alignment).
fn distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(a, b)
}

fn hint(wrong: &str, names: &[&str]) -> String {
    match nearest(wrong, names.iter().copied()) {
        Some(n) => format!("; did you mean `{n}`?"),
        None => String::new(),
    }
}

/// The static check of one expression.
pub(crate) struct Checker<'p> {
    program: &'p Program,
    /// Names macros bind around the current node, innermost last.
    bound: Vec<String>,
}

impl<'p> Checker<'p> {
    pub(crate) fn new(program: &'p Program) -> Self {
        Self {
            program,
            bound: Vec::new(),
        }
    }

    fn error(&self, e: &IdedExpr, message: String) -> CheckError {
        let info = self.program.source_info();
        let at = info
            .offset_for(e.id)
            .map(|(start, _)| line_column(&info.source, start as usize));
        CheckError { message, at }
    }

    /// The type of `e`, or the first problem in it.
    pub(crate) fn check(&mut self, e: &IdedExpr) -> Result<Ty, CheckError> {
        match &e.expr {
            Expr::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::Str,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Expr::Ident(name) => self.ident(e, name),
            Expr::Select(s) => {
                let operand = self.check(&s.operand)?;
                let ty = self.field(e, &s.operand, operand, &s.field)?;
                // `has(x.f)` asks whether `f` is there: a boolean.
                Ok(if s.test { Ty::Bool } else { ty })
            }
            Expr::Call(c) => {
                let target = match &c.target {
                    Some(t) => Some(self.check(t)?),
                    None => None,
                };
                let mut args = Vec::with_capacity(c.args.len());
                for a in &c.args {
                    args.push(self.check(a)?);
                }
                self.call(e, &c.func_name, target, &args)
            }
            Expr::Comprehension(c) => {
                let range = self.check(&c.iter_range)?;
                self.check(&c.accu_init)?;
                let depth = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.push(c.accu_var.clone());
                let result = (|| {
                    self.check(&c.loop_cond)?;
                    self.check(&c.loop_step)?;
                    self.check(&c.result)
                })();
                self.bound.truncate(depth);
                let result = result?;
                if !matches!(
                    strip(&range),
                    Ty::List(_) | Ty::Map(_) | Ty::Dyn | Ty::Obj(_)
                ) {
                    return Err(self.error(
                        &c.iter_range,
                        format!("a macro iterates over a list or a map, not over a {range}"),
                    ));
                }
                Ok(result)
            }
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                for x in &l.elements {
                    let t = self.check(x)?;
                    elem = Some(match elem {
                        Some(prev) if prev == t => prev,
                        Some(_) => Ty::Dyn,
                        None => t,
                    });
                }
                Ok(Ty::List(Box::new(elem.unwrap_or(Ty::Dyn))))
            }
            Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
                for entry in entries {
                    match &entry.expr {
                        EntryExpr::StructField(f) => {
                            self.check(&f.value)?;
                        }
                        EntryExpr::MapEntry(m) => {
                            self.check(&m.key)?;
                            self.check(&m.value)?;
                        }
                    }
                }
                Ok(Ty::Dyn)
            }
            Expr::Unspecified => Ok(Ty::Dyn),
        }
    }

    fn ident(&self, e: &IdedExpr, name: &str) -> Result<Ty, CheckError> {
        if self.bound.iter().any(|b| b == name) {
            return Ok(Ty::Dyn);
        }
        match name {
            "request" => Ok(Ty::Obj(Obj::Request)),
            "peer" => Ok(Ty::Obj(Obj::Peer)),
            // `null` until an identity is established (rules reading it are skipped then).
            "identity" => Ok(Ty::Obj(Obj::Identity)),
            "now" => Ok(Ty::Timestamp),
            _ if TYPE_NAMES.contains(&name) => Ok(Ty::Type),
            _ => {
                let mut names: Vec<&str> = VARIABLES.to_vec();
                names.extend(self.bound.iter().map(String::as_str));
                Err(self.error(
                    e,
                    format!(
                        "unknown variable `{name}` (expressions see `request`, `peer`, `identity` and `now`{})",
                        hint(name, &names)
                    ),
                ))
            }
        }
    }

    fn field(
        &self,
        e: &IdedExpr,
        operand_expr: &IdedExpr,
        operand: Ty,
        field: &str,
    ) -> Result<Ty, CheckError> {
        match strip(&operand) {
            Ty::Obj(o) => {
                let fields = o.fields();
                match fields.iter().find(|(n, _)| *n == field) {
                    Some((_, t)) => Ok(t.clone()),
                    None => {
                        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                        Err(self.error(
                            e,
                            format!(
                                "`{}` has no field `{field}` (its fields: {}{})",
                                o.name(),
                                names.join(", "),
                                hint(field, &names)
                            ),
                        ))
                    }
                }
            }
            // Attributes are an open map: any key may be there (`has()` or `in` tests it).
            Ty::Map(v) => Ok((**v).clone()),
            Ty::Dyn => Ok(Ty::Dyn),
            other => Err(self.error(
                operand_expr,
                format!("`.{field}` selects a field, but this is a {other}, which has none"),
            )),
        }
    }

    fn call(
        &self,
        e: &IdedExpr,
        name: &str,
        target: Option<Ty>,
        args: &[Ty],
    ) -> Result<Ty, CheckError> {
        use cel::common::ast::operators as op;
        let bool_args = |what: &str| -> Result<Ty, CheckError> {
            for a in args {
                if !matches!(strip(a), Ty::Bool | Ty::Dyn) {
                    return Err(self.error(e, format!("{what} takes booleans, not a {a}")));
                }
            }
            Ok(Ty::Bool)
        };
        match name {
            op::LOGICAL_AND => bool_args("`&&`"),
            op::LOGICAL_OR => bool_args("`||`"),
            op::LOGICAL_NOT | op::NOT_STRICTLY_FALSE => bool_args("`!`"),
            op::EQUALS
            | op::NOT_EQUALS
            | op::LESS
            | op::LESS_EQUALS
            | op::GREATER
            | op::GREATER_EQUALS => Ok(Ty::Bool),
            op::IN => match args.get(1).map(strip) {
                Some(Ty::List(_) | Ty::Map(_) | Ty::Dyn) => Ok(Ty::Bool),
                Some(other) => {
                    Err(self.error(e, format!("`in` tests a list or a map, not a {other}")))
                }
                None => Ok(Ty::Bool),
            },
            op::CONDITIONAL => Ok(match (args.get(1), args.get(2)) {
                (Some(a), Some(b)) if a == b => a.clone(),
                _ => Ty::Dyn,
            }),
            op::INDEX | op::OPT_INDEX => match args.first().map(strip) {
                Some(Ty::List(t) | Ty::Map(t)) => Ok((**t).clone()),
                Some(Ty::Dyn) | None => Ok(Ty::Dyn),
                Some(other) => {
                    Err(self.error(e, format!("`[...]` indexes a list or a map, not a {other}")))
                }
            },
            op::ADD | op::SUBSTRACT | op::MULTIPLY | op::DIVIDE | op::MODULO | op::NEGATE => {
                Ok(match args.first() {
                    Some(t) if args.iter().all(|a| a == t) => t.clone(),
                    _ => Ty::Dyn,
                })
            }
            _ => self.function(e, name, target, args),
        }
    }

    fn function(
        &self,
        e: &IdedExpr,
        name: &str,
        target: Option<Ty>,
        args: &[Ty],
    ) -> Result<Ty, CheckError> {
        let Some((_, receiver)) = FUNCTIONS.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
            return Err(self.error(
                e,
                format!(
                    "unknown function `{name}` (docs/writing-plugins.md lists the functions rules may call{})",
                    hint(name, &names)
                ),
            ));
        };
        if let Some(t) = &target {
            let ok = match receiver {
                Receiver::None => true,
                Receiver::Str => matches!(strip(t), Ty::Str | Ty::Dyn),
                Receiver::Sized => matches!(
                    strip(t),
                    Ty::Str | Ty::Bytes | Ty::List(_) | Ty::Map(_) | Ty::Dyn
                ),
                Receiver::Time => matches!(strip(t), Ty::Timestamp | Ty::Duration | Ty::Dyn),
            };
            if !ok {
                return Err(self.error(e, format!("`.{name}()` cannot be called on a {t}")));
            }
        }
        Ok(match name {
            "size" => Ty::Int,
            "contains" | "startsWith" | "endsWith" | "matches" | "inCidr" => Ty::Bool,
            "int" => Ty::Int,
            "uint" => Ty::Uint,
            "double" => Ty::Double,
            "string" => Ty::Str,
            "bytes" => Ty::Bytes,
            "bool" => Ty::Bool,
            "timestamp" => Ty::Timestamp,
            "duration" => Ty::Duration,
            "type" => Ty::Type,
            "dyn" => Ty::Dyn,
            _ if *receiver == Receiver::Time => Ty::Int,
            _ => {
                let _ = args;
                Ty::Dyn
            }
        })
    }
}

/// `t` without its nullability.
pub(crate) fn strip(t: &Ty) -> &Ty {
    match t {
        Ty::Nullable(inner) => inner,
        other => other,
    }
}

/// Checks a whole rule: its type must be a boolean.
pub(crate) fn check_rule(program: &Program) -> Result<(), CheckError> {
    let mut checker = Checker::new(program);
    match checker.check(program.expression())? {
        Ty::Bool | Ty::Dyn => Ok(()),
        other => Err(CheckError {
            message: format!("must evaluate to a boolean, evaluates to a {other}"),
            at: None,
        }),
    }
}
