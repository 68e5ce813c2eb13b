//! Checks that a binary is a component implementing the `auth-plugin` world before wasmtime
//! is asked to link it, so a mistake is reported in the plugin author's terms ("built against
//! @0.2.0", "imports foo:bar/baz") rather than as a linker failure.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::{HOST_IMPORT, PLUGIN_EXPORT, WIT_PACKAGE};

/// What kind of WebAssembly binary a byte string is, judged from its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A component (what plugins must be).
    Component,
    /// A core module (e.g. built for `wasm32-unknown-unknown` or `wasm32-wasip1`).
    CoreModule,
    /// Starts with the wasm magic but has a version this runtime does not know.
    UnknownVersion,
    /// Not WebAssembly at all.
    NotWasm,
}

/// Classifies `bytes` by their header.
pub fn binary_kind(bytes: &[u8]) -> BinaryKind {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return BinaryKind::NotWasm;
    }
    match (&bytes[4..6], &bytes[6..8]) {
        ([1, 0], [0, 0]) => BinaryKind::CoreModule,
        (_, [1, 0]) => BinaryKind::Component,
        _ => BinaryKind::UnknownVersion,
    }
}

/// One import or export of a component, as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The name, e.g. `trustgate:auth/host@0.1.0`.
    pub name: String,
    /// `instance`, `func`, `type`, `module`, `component` or `resource`.
    pub kind: &'static str,
}

/// The top-level imports and exports of a compiled component.
pub fn items(engine: &Engine, component: &Component) -> (Vec<Item>, Vec<Item>) {
    let ty = component.component_type();
    let imports = ty
        .imports(engine)
        .map(|(name, item)| Item {
            name: name.to_string(),
            kind: kind(&item.ty),
        })
        .collect();
    let exports = ty
        .exports(engine)
        .map(|(name, item)| Item {
            name: name.to_string(),
            kind: kind(&item.ty),
        })
        .collect();
    (imports, exports)
}

fn kind(item: &ComponentItem) -> &'static str {
    match item {
        ComponentItem::ComponentFunc(_) | ComponentItem::CoreFunc(_) => "func",
        ComponentItem::Module(_) => "module",
        ComponentItem::Component(_) => "component",
        ComponentItem::ComponentInstance(_) => "instance",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
    }
}

/// Splits `ns:pkg/iface@ver` into (`ns:pkg/iface`, `ver`).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((base, ver)) => (base, Some(ver)),
        None => (name, None),
    }
}

/// Checks the world by name; type-level mismatches are left to wasmtime's linker, whose
/// messages are precise once the names agree.
pub fn check(imports: &[Item], exports: &[Item]) -> Result<(), String> {
    let ours = split_version(WIT_PACKAGE).1.unwrap_or_default();
    let (export_base, _) = split_version(PLUGIN_EXPORT);
    if !exports.iter().any(|e| e.name == PLUGIN_EXPORT) {
        if let Some(other) = exports
            .iter()
            .find(|e| split_version(&e.name).0 == export_base)
        {
            let theirs = split_version(&other.name).1.unwrap_or("(unversioned)");
            return Err(format!(
                "built against trustgate:auth@{theirs}, but this gateway implements @{ours} (it exports `{}`, expected `{PLUGIN_EXPORT}`)",
                other.name
            ));
        }
        let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
        return Err(format!(
            "does not export `{PLUGIN_EXPORT}` (its exports: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    for import in imports {
        let (base, version) = split_version(&import.name);
        if base.starts_with("wasi:") {
            continue; // the linker provides WASI; a version it lacks fails at link time
        }
        if base.starts_with("trustgate:auth/") {
            if version != Some(ours) {
                return Err(format!(
                    "imports `{}`, but this gateway implements trustgate:auth@{ours}",
                    import.name
                ));
            }
            if import.name == HOST_IMPORT || base == "trustgate:auth/types" {
                continue;
            }
        }
        return Err(format!(
            "imports `{}`, which this gateway does not provide (plugins may import only `{HOST_IMPORT}` and WASI)",
            import.name
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> Item {
        Item {
            name: name.into(),
            kind: "instance",
        }
    }

    #[test]
    fn headers_are_classified() {
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0"), BinaryKind::CoreModule);
        assert_eq!(binary_kind(b"\0asm\x0d\0\x01\0"), BinaryKind::Component);
        assert_eq!(binary_kind(b"\0asm\x02\0\0\0"), BinaryKind::UnknownVersion);
        assert_eq!(binary_kind(b"\x7fELF\x02\x01\x01\0"), BinaryKind::NotWasm);
        assert_eq!(binary_kind(b"\0as"), BinaryKind::NotWasm);
    }

    #[test]
    fn world_check_names_the_problem() {
        let ok = [item(PLUGIN_EXPORT)];
        assert_eq!(
            check(&[item(HOST_IMPORT), item("wasi:cli/stdout@0.2.6")], &ok),
            Ok(())
        );
        let e = check(&[], &[item("trustgate:auth/plugin@0.2.0")]).unwrap_err();
        assert!(e.contains("built against trustgate:auth@0.2.0"), "{e}");
        let e = check(&[], &[item("other:thing/x")]).unwrap_err();
        assert!(
            e.contains("does not export `trustgate:auth/plugin@0.1.0`")
                && e.contains("other:thing/x"),
            "{e}"
        );
        let e = check(&[item("acme:secrets/vault@1.0.0")], &ok).unwrap_err();
        assert!(e.contains("imports `acme:secrets/vault@1.0.0`"), "{e}");
        let e = check(&[item("trustgate:auth/host@0.3.0")], &ok).unwrap_err();
        assert!(e.contains("trustgate:auth/host@0.3.0"), "{e}");
    }
}
