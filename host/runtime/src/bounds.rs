//! The contract's limits on what a plugin hands back (documented in `wit/auth.wit`) and the
//! hygiene of plugin-provided text. A decision over a limit is a plugin failure; the error
//! names the field and the size, never the content.

use std::borrow::Cow;

use crate::types::{Decision, Denial, Identity, Narrowing};

/// `subject`: 1..=256 bytes.
pub const MAX_SUBJECT: usize = 256;
/// `method`: 1..=64 bytes.
pub const MAX_METHOD: usize = 64;
/// Entries of `groups`.
pub const MAX_GROUPS: usize = 64;
/// One group: 1..=256 bytes.
pub const MAX_GROUP: usize = 256;
/// Entries of `attributes`.
pub const MAX_ATTRIBUTES: usize = 32;
/// An attribute key: 1..=64 bytes.
pub const MAX_ATTRIBUTE_KEY: usize = 64;
/// An attribute value: ≤ 512 bytes.
pub const MAX_ATTRIBUTE_VALUE: usize = 512;
/// Entries of `roles`.
pub const MAX_ROLES: usize = 8;
/// One role: 1..=32 bytes.
pub const MAX_ROLE: usize = 32;
/// Entries of `scopes`.
pub const MAX_SCOPES: usize = 32;
/// One scope: 1..=128 bytes.
pub const MAX_SCOPE: usize = 128;
/// `denial.reason`: 1..=64 bytes of `[a-z0-9._-]`.
pub const MAX_REASON: usize = 64;
/// `denial.message`: ≤ 1024 bytes.
pub const MAX_MESSAGE: usize = 1024;
/// One log line (`log`, stdout, stderr); longer lines are cut.
pub const MAX_LOG_LINE: usize = 2048;
/// Log output of one call across all channels; the rest is dropped and counted.
pub const MAX_LOG_PER_CALL: usize = 16 << 10;
/// `configure`'s error message.
pub const MAX_CONFIGURE_ERROR: usize = 4096;

fn len(field: &str, value: &str, min: usize, max: usize) -> Result<(), String> {
    if value.len() < min || value.len() > max {
        return Err(format!(
            "{field} is {} bytes, outside {min}..={max}",
            value.len()
        ));
    }
    Ok(())
}

fn list(field: &str, items: &[String], max_items: usize, max_len: usize) -> Result<(), String> {
    if items.len() > max_items {
        return Err(format!(
            "{field} has {} entries, over the limit of {max_items}",
            items.len()
        ));
    }
    items
        .iter()
        .try_for_each(|i| len(&format!("an entry of {field}"), i, 1, max_len))
}

fn attributes(items: &[(String, String)]) -> Result<(), String> {
    if items.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "attributes has {} entries, over the limit of {MAX_ATTRIBUTES}",
            items.len()
        ));
    }
    items.iter().try_for_each(|(k, v)| {
        len("an attribute key", k, 1, MAX_ATTRIBUTE_KEY)?;
        len("an attribute value", v, 0, MAX_ATTRIBUTE_VALUE)
    })
}

/// Checks an identity a plugin established against the contract's limits.
pub(crate) fn identity(i: &Identity) -> Result<(), String> {
    len("subject", &i.subject, 1, MAX_SUBJECT)?;
    len("method", &i.method, 1, MAX_METHOD)?;
    list("groups", &i.groups, MAX_GROUPS, MAX_GROUP)?;
    attributes(&i.attributes)?;
    list("roles", &i.roles, MAX_ROLES, MAX_ROLE)?;
    list("scopes", &i.scopes, MAX_SCOPES, MAX_SCOPE)
}

fn narrowing(n: &Narrowing) -> Result<(), String> {
    if let Some(r) = &n.roles {
        list("roles", r, MAX_ROLES, MAX_ROLE)?;
    }
    if let Some(s) = &n.scopes {
        list("scopes", s, MAX_SCOPES, MAX_SCOPE)?;
    }
    attributes(&n.attributes)
}

fn denial(d: &Denial) -> Result<(), String> {
    len("reason", &d.reason, 1, MAX_REASON)?;
    if !d
        .reason
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("reason may only hold `a-z`, `0-9`, `.`, `_` and `-`".into());
    }
    len("message", &d.message, 0, MAX_MESSAGE)
}

/// Checks an identity template (contract 0.3) against the limits of what it forms.
pub(crate) fn template(
    method: &str,
    uid_attribute: Option<&str>,
    extra_attributes: &[(String, String)],
    cluster_attribute: Option<&str>,
) -> Result<(), String> {
    len("method", method, 1, MAX_METHOD)?;
    if extra_attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "extra-attributes has {} entries, over the limit of {MAX_ATTRIBUTES}",
            extra_attributes.len()
        ));
    }
    let names = uid_attribute
        .into_iter()
        .chain(cluster_attribute)
        .chain(extra_attributes.iter().map(|(_, a)| a.as_str()));
    for name in names {
        len("an attribute", name, 1, MAX_ATTRIBUTE_KEY)?;
    }
    for (key, _) in extra_attributes {
        len("an extra key", key, 1, 256)?;
    }
    Ok(())
}

/// Checks a decision against the contract's limits.
pub(crate) fn decision(d: &Decision) -> Result<(), String> {
    match d {
        Decision::Allow(i) => identity(i),
        Decision::Permit(n) => narrowing(n),
        Decision::Deny(d) => denial(d),
        Decision::Abstain => Ok(()),
    }
}

/// Plugin-provided text made safe for a log line or a terminal: control characters (line
/// breaks, escape sequences, NUL, ...) are shown escaped, so a plugin cannot forge log lines
/// or drive a terminal.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_text("plain"), "plain");
        assert_eq!(
            escape_text("a\nINFO forged\u{1b}[31m"),
            "a\\nINFO forged\\u{1b}[31m"
        );
        assert_eq!(clip("héllo", 2), "h");
    }

    #[test]
    fn limits_name_the_field_not_the_content() {
        let mut i = Identity {
            subject: "s".repeat(MAX_SUBJECT + 1),
            method: "m".into(),
            ..Identity::default()
        };
        let e = identity(&i).unwrap_err();
        assert!(e.contains("subject is 257 bytes"), "{e}");
        assert!(!e.contains("sss"), "{e}");
        i.subject = "s".into();
        i.groups = vec!["g".into(); MAX_GROUPS + 1];
        assert!(identity(&i).unwrap_err().contains("groups has 65 entries"));
        let d = Denial {
            code: crate::types::DenyCode::Forbidden,
            reason: "Bad Reason".into(),
            message: String::new(),
            retry_after_ms: None,
        };
        assert!(decision(&Decision::Deny(d)).is_err());
    }
}
