//! Checks that a binary is a component implementing the `auth-plugin` world before wasmtime
//! is asked to link it, so a mistake is reported in the plugin author's terms ("built against
//! @0.2.0", "imports foo:bar/baz") rather than as a linker failure.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::bindings::ContractVersion;

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

/// The versions this host implements, for messages: `@0.3.0, @0.2.0 and @0.1.0`.
fn supported() -> String {
    let all: Vec<String> = ContractVersion::ALL
        .iter()
        .map(|v| format!("@{}", v.semver()))
        .collect();
    match all.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => all.concat(),
    }
}

/// Checks the world by name and tells which contract version the component targets;
/// type-level mismatches are left to wasmtime's linker, whose messages are precise once the
/// names agree.
pub fn check(imports: &[Item], exports: &[Item]) -> Result<ContractVersion, String> {
    let version = ContractVersion::ALL
        .into_iter()
        .find(|v| exports.iter().any(|e| e.name == v.plugin_export()));
    let Some(version) = version else {
        if let Some(other) = exports
            .iter()
            .find(|e| split_version(&e.name).0 == "trustgate:auth/plugin")
        {
            let theirs = split_version(&other.name).1.unwrap_or("(unversioned)");
            return Err(format!(
                "built against trustgate:auth@{theirs}, but this gateway implements {} (it exports `{}`, expected `{}`)",
                supported(),
                other.name,
                ContractVersion::CURRENT.plugin_export()
            ));
        }
        let names: Vec<&str> = exports.iter().map(|e| e.name.as_str()).collect();
        return Err(format!(
            "does not export `{}` (its exports: {})",
            ContractVersion::CURRENT.plugin_export(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    let ours = version.semver();
    for import in imports {
        let (base, v) = split_version(&import.name);
        if base.starts_with("wasi:") {
            continue; // the linker provides WASI; a version it lacks fails at link time
        }
        if base.starts_with("trustgate:auth/") {
            if v != Some(ours) {
                return Err(format!(
                    "imports `{}`, but it exports trustgate:auth@{ours}: a plugin targets one contract version",
                    import.name
                ));
            }
            if base == "trustgate:auth/host" || base == "trustgate:auth/types" {
                continue;
            }
        }
        return Err(format!(
            "imports `{}`, which this gateway does not provide (plugins may import only `{}` and WASI)",
            import.name,
            version.host_import()
        ));
    }
    Ok(version)
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
        assert_eq!(
            check(
                &[item("trustgate:auth/host@0.3.0")],
                &[item("trustgate:auth/plugin@0.3.0")]
            ),
            Ok(ContractVersion::V0_3)
        );
        let ok = [item("trustgate:auth/plugin@0.2.0")];
        assert_eq!(
            check(
                &[
                    item("trustgate:auth/host@0.2.0"),
                    item("wasi:cli/stdout@0.2.6")
                ],
                &ok
            ),
            Ok(ContractVersion::V0_2)
        );
        assert_eq!(
            check(
                &[item("trustgate:auth/host@0.1.0")],
                &[item("trustgate:auth/plugin@0.1.0")]
            ),
            Ok(ContractVersion::V0_1)
        );
        let e = check(&[], &[item("trustgate:auth/plugin@0.9.0")]).unwrap_err();
        assert!(
            e.contains("built against trustgate:auth@0.9.0")
                && e.contains("implements @0.3.0, @0.2.0 and @0.1.0"),
            "{e}"
        );
        let e = check(&[], &[item("other:thing/x")]).unwrap_err();
        assert!(
            e.contains("does not export `trustgate:auth/plugin@0.3.0`")
                && e.contains("other:thing/x"),
            "{e}"
        );
        let e = check(&[item("acme:secrets/vault@1.0.0")], &ok).unwrap_err();
        assert!(e.contains("imports `acme:secrets/vault@1.0.0`"), "{e}");
        let e = check(&[item("trustgate:auth/host@0.1.0")], &ok).unwrap_err();
        assert!(e.contains("one contract version"), "{e}");
    }
}
