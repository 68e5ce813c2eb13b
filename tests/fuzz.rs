//! Fuzz harnesses (proptest, stable toolchain) that need real parts: ServiceAccount JWTs
//! verified against a real key set (the dev cluster's, over HTTPS), and plugin decisions coming
//! out of a real component. The parsers' own harnesses live next to them (`trustgate-protocol`
//! frames and device proofs, `trustgate-k8s` TokenReview answers, `trustgate-gateway`
//! configuration files). `PROPTEST_CASES=N` sets the depth; docs/security.md has a long run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};
use trustgate_devcluster::TokenRequest;
use trustgate_runtime::{Decision, PluginFailure, WasmPlugin, limits};
use trustgate_tests::bench::Cluster;
use trustgate_tests::{decide, guests, request, runtime, spec_reading_credentials};

/// One tokio runtime for every case of a harness (the cases themselves are synchronous).
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

// === JWTs against a real key set ===

struct Jwt {
    _cluster: Cluster,
    kube: Arc<trustgate_k8s::Kubernetes>,
    token: String,
}

fn jwt() -> &'static Jwt {
    static JWT: OnceLock<Jwt> = OnceLock::new();
    JWT.get_or_init(|| {
        rt().block_on(async {
            let cluster = Cluster::start().await;
            let kube = Arc::new(
                trustgate_k8s::Kubernetes::connect(trustgate_k8s::Settings {
                    kubeconfig: Some(cluster.kubeconfig.clone()),
                    ..Default::default()
                })
                .await
                .unwrap(),
            );
            let token = cluster
                .api
                .token(&TokenRequest::new("workers", "runner", "trustgate"))
                .unwrap()
                .0;
            Jwt {
                _cluster: cluster,
                kube,
                token,
            }
        })
    })
}

fn segments(token: &str) -> Vec<Vec<u8>> {
    token
        .split('.')
        .map(|s| {
            URL_SAFE_NO_PAD
                .decode(s)
                .unwrap_or_else(|_| s.as_bytes().to_vec())
        })
        .collect()
}

/// A token derived from a valid one: a flipped character, a re-written claim kept with the old
/// signature, another algorithm, a dropped or swapped segment, or garbage.
fn mutation() -> impl Strategy<Value = (usize, usize, String)> {
    (0usize..8, any::<usize>(), "[A-Za-z0-9_.-]{0,40}")
}

fn mutate(token: &str, (kind, at, junk): &(usize, usize, String)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let reencode = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    match kind {
        0 => {
            // One character changed anywhere.
            let mut bytes = token.as_bytes().to_vec();
            let i = at % bytes.len();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(bytes).unwrap()
        }
        1 => {
            let mut c = claims.clone();
            let key = ["sub", "aud", "iss", "exp", "nbf", "kubernetes.io"][at % 6];
            c[key] = match key {
                "exp" => json!(4_102_444_800u64),
                "nbf" => json!(0),
                "aud" => json!(["trustgate", junk]),
                _ => json!(junk),
            };
            format!("{}.{}.{}", parts[0], reencode(&c), parts[2])
        }
        2 => {
            let mut h = header.clone();
            h["alg"] = json!(["none", "HS256", "RS512", "ES256", "EdDSA"][at % 5]);
            format!("{}.{}.{}", reencode(&h), parts[1], parts[2])
        }
        3 => {
            let mut h = header.clone();
            h["kid"] = json!(junk);
            format!("{}.{}.{}", reencode(&h), parts[1], parts[2])
        }
        4 => format!("{}.{}.", parts[0], parts[1]),
        5 => format!("{}.{}.{}", parts[1], parts[0], parts[2]),
        6 => junk.clone(),
        _ => format!("{token}{junk}"),
    }
}

/// The suite's settings: proptest's case count, at most `max_cases` unless `PROPTEST_CASES`
/// asks for a number (a long run), and no failure files written into the source tree (a
/// failure prints its minimal case instead).
fn config(max_cases: u32) -> ProptestConfig {
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        base.cases.min(max_cases)
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..base
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn a_tampered_service_account_token_is_never_accepted(m in mutation()) {
        let j = jwt();
        let tampered = mutate(&j.token, &m);
        let verdict = rt().block_on(j.kube.verify(&tampered, &["trustgate".to_string()]));
        let same = segments(&tampered) == segments(&j.token);
        match verdict {
            Ok(outcome) if outcome.authenticated => {
                prop_assert!(same, "accepted a tampered token: {:?}", m);
            }
            Ok(outcome) => {
                prop_assert!(!same || tampered != j.token);
                let error = outcome.error.clone().unwrap_or_default();
                prop_assert!(!error.contains(&j.token[20..40]), "{}", error);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.contains(&j.token[20..40]), "{}", text);
            }
        }
    }
}

#[test]
fn the_untampered_token_is_accepted() {
    let j = jwt();
    let outcome = rt()
        .block_on(j.kube.verify(&j.token, &["trustgate".to_string()]))
        .unwrap();
    assert!(outcome.authenticated, "{outcome:?}");
}

// === Plugin decisions from a real component ===

fn spelling() -> impl Strategy<Value = Value> {
    let text = |max: usize| {
        prop_oneof![
            prop::string::string_regex(&format!("[a-z0-9:-]{{0,{max}}}")).unwrap(),
            (0usize..max + 40).prop_map(|n| "x".repeat(n)),
            Just("line\nbreak\u{1b}[31m".to_string()),
        ]
    };
    (
        prop_oneof![Just("allow"), Just("permit"), Just("deny"), Just("abstain")],
        text(300),
        text(80),
        prop::collection::vec(text(300), 0..80),
        prop::collection::vec((text(80), text(600)), 0..40),
        prop::collection::vec(text(40), 0..12),
        prop::collection::vec(text(140), 0..40),
        text(80),
        text(1200),
    )
        .prop_map(
            |(kind, subject, method, groups, attributes, roles, scopes, reason, message)| {
                json!({
                    "kind": kind, "subject": subject, "method": method, "groups": groups,
                    "attributes": attributes, "roles": roles, "scopes": scopes,
                    "reason": reason, "message": message, "keep_roles": ["worker"],
                })
            },
        )
}

fn within(v: &Value, key: &str, max_items: usize, max_len: usize, min_len: usize) -> bool {
    let items: Vec<&str> = match &v[key] {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        Value::String(s) => vec![s.as_str()],
        _ => vec![],
    };
    items.len() <= max_items && items.iter().all(|s| (min_len..=max_len).contains(&s.len()))
}

fn decider() -> &'static WasmPlugin {
    static PLUGIN: OnceLock<WasmPlugin> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        rt().block_on(async {
            runtime(trustgate_tests::limits(1_000))
                .load(&spec_reading_credentials(
                    "spelled",
                    guests::GUEST_SCRIPTED,
                    json!({"decision": "from-token"}),
                ))
                .await
                .unwrap()
        })
    })
}

proptest! {
    #![proptest_config(config(u32::MAX))]

    #[test]
    fn whatever_a_plugin_decides_the_host_takes_it_within_the_limits_or_fails_it(d in spelling()) {
        let result = rt().block_on(decide(
            decider(),
            &request("test", Some(&d.to_string())),
            None,
        ));
        let attrs_ok = d["attributes"].as_array().is_some_and(|a| {
            a.len() <= limits::MAX_ATTRIBUTES
                && a.iter().all(|kv| {
                    let k = kv[0].as_str().unwrap_or("");
                    let v = kv[1].as_str().unwrap_or("");
                    (1..=limits::MAX_ATTRIBUTE_KEY).contains(&k.len())
                        && v.len() <= limits::MAX_ATTRIBUTE_VALUE
                })
        });
        match (d["kind"].as_str().unwrap(), result) {
            ("allow", Ok(Decision::Allow(id))) => {
                prop_assert!(within(&d, "subject", 1, limits::MAX_SUBJECT, 1));
                prop_assert!(within(&d, "groups", limits::MAX_GROUPS, limits::MAX_GROUP, 1));
                prop_assert!(within(&d, "roles", limits::MAX_ROLES, limits::MAX_ROLE, 1));
                prop_assert!(within(&d, "method", 1, limits::MAX_METHOD, 1));
                prop_assert!(within(&d, "scopes", limits::MAX_SCOPES, limits::MAX_SCOPE, 1));
                prop_assert!(attrs_ok);
                prop_assert_eq!(id.subject.as_str(), d["subject"].as_str().unwrap());
            }
            ("permit", Ok(Decision::Permit(n))) => {
                prop_assert!(attrs_ok);
                prop_assert_eq!(n.roles, Some(vec!["worker".to_string()]));
            }
            ("deny", Ok(Decision::Deny(denial))) => {
                prop_assert!(within(&d, "reason", 1, limits::MAX_REASON, 1));
                prop_assert!(d["reason"].as_str().unwrap().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
                prop_assert!(denial.message.len() <= limits::MAX_MESSAGE);
            }
            ("abstain", Ok(Decision::Abstain)) => {}
            (_, Err(PluginFailure::InvalidDecision(why))) => {
                // The failure names the field and the size, never the content.
                prop_assert!(!why.contains("xxxxxxxxxx"), "{why}");
                prop_assert!(!why.contains('\n') && !why.contains('\u{1b}'), "{why}");
            }
            (kind, other) => prop_assert!(false, "{kind}: unexpected {other:?}"),
        }
    }
}
