//! Fuzz harness (proptest) for configuration files: any text an operator (or a broken
//! template) produces is either a configuration or an error that names the file — never a
//! panic. Documents are built from the real tables and keys with arbitrary values, so the
//! harness reaches every settings type's validation, not only the TOML parser.

use std::path::Path;

use proptest::prelude::*;

use super::Config;

const KEYS: &[(&str, &[&str])] = &[
    (
        "gateway",
        &["listen", "state_dir", "drain_timeout_ms", "nope"],
    ),
    ("admin", &["listen", "token_file"]),
    (
        "limits",
        &[
            "max_payload",
            "handshake_timeout_ms",
            "max_connections",
            "max_unauthenticated",
            "max_unauthenticated_per_address",
            "failed_handshakes_per_second",
            "failed_handshake_burst",
            "tick_interval_ms",
        ],
    ),
    (
        "pairing",
        &[
            "pending_ttl_ms",
            "max_pending",
            "max_pending_per_address",
            "store",
        ],
    ),
    (
        "plugins",
        &[
            "deadline_ms",
            "memory_mib",
            "call_timeout_ms",
            "max_instances",
        ],
    ),
    ("audit", &["output"]),
    ("kubernetes", &["kubeconfig", "mode", "retries"]),
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        "[a-z0-9.:/ -]{0,12}".prop_map(|s| format!("{s:?}")),
        Just("\"127.0.0.1:0\"".to_string()),
        Just("true".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("1.5".to_string()),
    ]
}

fn document() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (
            0..KEYS.len(),
            prop::collection::vec((0usize..16, toml_value()), 0..4),
        ),
        0..6,
    )
    .prop_map(|tables| {
        let mut text = String::new();
        for (t, entries) in tables {
            let (table, keys) = KEYS[t];
            text.push_str(&format!("[{table}]\n"));
            for (k, v) in entries {
                text.push_str(&format!("{} = {v}\n", keys[k % keys.len()]));
            }
        }
        text.push_str("[[auth.plugins]]\nbuiltin = \"allowlist\"\n");
        text
    })
}

proptest! {
    #[test]
    fn any_document_is_a_configuration_or_an_error_naming_the_file(text in document()) {
        if let Err(e) = Config::parse(&text, "fuzz.toml", Path::new("/base")) {
            prop_assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    }

    #[test]
    fn any_text_is_a_configuration_or_an_error(text in ".{0,300}") {
        if let Err(e) = Config::parse(&text, "fuzz.toml", Path::new("/base")) {
            prop_assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
        }
    }
}
