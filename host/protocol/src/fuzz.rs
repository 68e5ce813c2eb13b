//! Fuzz harnesses (proptest, stable toolchain) for everything a peer sends before it is
//! authenticated: frames, `connect` parameters and device proofs. They run in the test command
//! with proptest's default case count; `PROPTEST_CASES=200000 cargo test -p trustgate-protocol
//! fuzz` is the long run recorded in docs/security.md.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::{ConnectParams, DeviceKey, Role, parse_client_frame, parse_params};

/// A marker standing for a secret a client put in the wrong place.
const SECRET: &str = "S3CRETxq";

/// Arbitrary JSON in which the secret may appear as any string or key.
fn json_with_secret() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-zA-Z0-9 _.:-]{0,12}".prop_map(Value::String),
        Just(Value::String(format!("Bearer {SECRET}"))),
        Just(Value::String(SECRET.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("auth".to_string()),
                        Just("client".to_string()),
                        Just("role".to_string()),
                        Just("minProtocol".to_string()),
                        Just("maxProtocol".to_string()),
                        Just("scopes".to_string()),
                        Just("device".to_string()),
                        Just("token".to_string()),
                        Just("method".to_string()),
                        Just("id".to_string()),
                        Just(SECRET.to_string()),
                        "[a-z]{1,8}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A `connect` whose fields are each replaced, now and then, by arbitrary JSON.
fn mutated_connect() -> impl Strategy<Value = Value> {
    (
        json_with_secret(),
        json_with_secret(),
        json_with_secret(),
        json_with_secret(),
        prop::bool::weighted(0.5),
        0usize..6,
    )
        .prop_map(|(a, b, c, d, keep, which)| {
            let mut p = json!({
                "minProtocol": 1, "maxProtocol": 1,
                "client": {"id": "c", "version": "1"},
                "role": "worker",
                "auth": {"method": "k8s-sa-trust", "token": SECRET},
            });
            let fields = ["minProtocol", "client", "role", "auth", "scopes", "device"];
            p[fields[which]] = a;
            if !keep {
                p[fields[(which + 1) % fields.len()]] = b;
            }
            if let Some(client) = p.get_mut("client").and_then(Value::as_object_mut) {
                client.insert("id".into(), c);
            }
            if let Value::Object(extra) = d {
                for (k, v) in extra {
                    p[k] = v;
                }
            }
            p
        })
}

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused_without_panicking(text in ".{0,256}") {
        let _ = parse_client_frame(&text);
    }

    #[test]
    fn any_bytes_as_text_are_parsed_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_client_frame(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn a_refused_frame_never_echoes_a_value(frame in json_with_secret()) {
        if let Err(e) = parse_client_frame(&frame.to_string()) {
            prop_assert!(!e.message.contains(SECRET), "{}", e.message);
            prop_assert!(!e.field.unwrap_or_default().contains(SECRET));
        }
    }

    #[test]
    fn refused_connect_params_name_the_field_never_the_value(params in mutated_connect()) {
        match parse_params::<ConnectParams>(&params) {
            Ok(p) => {
                // Accepted: the secret may only be where it belongs.
                prop_assert!(p.client.id.len() < 4096);
            }
            Err(e) => {
                prop_assert!(!e.message.contains(SECRET), "{}", e.message);
                prop_assert!(!e.field.clone().unwrap_or_default().contains(SECRET));
                prop_assert!(e.message.len() < 1024, "bounded: {}", e.message.len());
            }
        }
    }

    #[test]
    fn a_device_proof_verifies_only_unaltered(
        which in 0usize..6,
        junk in "[A-Za-z0-9_-]{0,90}",
        skew in 0u64..200_000,
    ) {
        let key = DeviceKey::generate();
        let now = 1_800_000_000_000u64;
        let scopes = vec!["a".to_string()];
        let proof = key.prove("client", Role::Worker, &scopes, "nonce-1", now);
        prop_assert!(proof.verify("client", Role::Worker, &scopes, "nonce-1", now).is_ok());
        let mut bad = proof.clone();
        let (client, role, nonce, at) = match which {
            0 => { bad.public_key = junk; ("client", Role::Worker, "nonce-1", now) }
            1 => { bad.signature = junk; ("client", Role::Worker, "nonce-1", now) }
            2 => { bad.id = junk; ("client", Role::Worker, "nonce-1", now) }
            3 => ("client", Role::Operator, "nonce-1", now),
            4 => ("other", Role::Worker, "nonce-1", now),
            _ => ("client", Role::Worker, "nonce-1", now + crate::MAX_SIGNATURE_SKEW_MS + 1 + skew),
        };
        let altered = bad != proof || client != "client" || role != Role::Worker || at != now;
        let verdict = bad.verify(client, role, &scopes, nonce, at);
        if altered {
            prop_assert!(verdict.is_err());
        }
    }
}
