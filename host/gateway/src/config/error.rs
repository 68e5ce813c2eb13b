//! Configuration errors that point at the file, the key and the line.

use std::path::Path;

use toml::de::{DeTable, DeValue};

/// A configuration problem, displayed as `FILE:LINE:COLUMN: KEY: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    /// The configuration file (or `<embedded default>`).
    pub file: String,
    /// The dotted key the problem is about, e.g. `auth.plugins[0].sha256`, if known.
    pub key: Option<String>,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut s = self.file.clone();
        if let Some(line) = self.line {
            s.push_str(&format!(":{line}"));
            if let Some(col) = self.column {
                s.push_str(&format!(":{col}"));
            }
        }
        s.push_str(": ");
        if let Some(key) = &self.key {
            s.push_str(&format!("`{key}`: "));
        }
        s.push_str(&self.message);
        s
    }

    pub(crate) fn io(path: &Path, e: &std::io::Error) -> Self {
        Self {
            file: path.display().to_string(),
            key: None,
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        }
    }

    pub(crate) fn from_toml(origin: &str, text: &str, path: &str, e: &toml::de::Error) -> Self {
        let message = e.message().trim().to_string();
        // serde reports unknown and missing fields against the enclosing table; name the
        // field itself, which is what the operator has to fix.
        let field = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        let key = match (path, field) {
            ("" | ".", Some(f)) => f.to_string(),
            ("" | ".", None) => String::new(),
            (p, Some(f)) if !p.ends_with(&format!(".{f}")) && p != f => format!("{p}.{f}"),
            (p, _) => p.to_string(),
        };
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_col(text, span.start);
                (Some(l), Some(c))
            }
            None => locate(text, &key).map_or((None, None), |(l, c)| (Some(l), Some(c))),
        };
        Self {
            file: origin.to_string(),
            key: (!key.is_empty()).then_some(key),
            line,
            column,
            message,
        }
    }

    pub(crate) fn at_key(origin: &str, text: &str, key: &str, message: String) -> Self {
        // Fall back to the nearest enclosing key that is written in the file (a plugin may
        // name a key the operator left out, e.g. a missing field).
        let mut loc = locate(text, key);
        let mut k = key;
        while loc.is_none() {
            match k.rfind(['.', '[']) {
                Some(i) => {
                    k = &k[..i];
                    loc = locate(text, k);
                }
                None => break,
            }
        }
        Self {
            file: origin.to_string(),
            key: Some(key.to_string()),
            line: loc.map(|l| l.0),
            column: loc.map(|l| l.1),
            message,
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Splits `a.b[2].c` into segments.
fn segments(key: &str) -> Vec<Result<&str, usize>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Ok(name));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse::<usize>() {
                out.push(Err(i));
            }
        }
    }
    out
}

/// Finds where `key` is written (its key, or for an array element the element itself).
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    let doc = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut table: Option<&DeTable> = Some(doc.get_ref());
    let mut value: Option<&DeValue> = None;
    for seg in segments(key) {
        match seg {
            Ok(name) => {
                let t = table.or(match value {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                })?;
                let (k, v) = t.get_key_value(name)?;
                span = Some(k.span());
                value = Some(v.get_ref());
                table = None;
            }
            Err(i) => {
                let Some(DeValue::Array(a)) = value else {
                    return span.map(|s| line_col(text, s.start));
                };
                let elem = a.get(i)?;
                span = Some(elem.span());
                value = Some(elem.get_ref());
            }
        }
    }
    span.map(|s| line_col(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys() {
        let text = "[plugins]\ndeadline_ms = 5\n\n[[auth.plugins]]\nbuiltin = \"a\"\n\n[[auth.plugins]]\npath = \"x\"\nsha256 = \"zz\"\n";
        assert_eq!(locate(text, "plugins.deadline_ms"), Some((2, 1)));
        assert_eq!(locate(text, "auth.plugins[1].sha256"), Some((9, 1)));
        assert_eq!(locate(text, "auth.plugins[0].builtin"), Some((5, 1)));
        assert_eq!(locate(text, "auth.nothing"), None);
        let rules =
            "[[auth.plugins]]\nbuiltin = \"cel\"\n\n[[auth.plugins.config.rules]]\nallow = 'x'\n";
        assert_eq!(
            locate(rules, "auth.plugins[0].config.rules[0].allow"),
            Some((5, 1))
        );
    }
}
