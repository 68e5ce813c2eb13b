//! Chain semantics, exhaustively: every sequence of allow/permit/deny/abstain of length 1 to
//! 3, run through real components, against the rules in docs/plugins.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::sync::Arc;

use serde_json::json;
use trustgate_runtime::{
    AuthProvider, CachePolicy, Chain, Grants, Outcome, PluginFailure, StepKind,
};
use trustgate_tests::{guests, limits, request, runtime};

const DECISIONS: [&str; 4] = ["allow", "deny", "abstain", "permit"];

/// The rules, stated independently of the implementation.
fn expected(seq: &[&str]) -> (String, usize) {
    for (i, d) in seq.iter().enumerate() {
        if *d == "deny" {
            return (format!("denied by p{i}-deny"), i + 1);
        }
    }
    if seq.contains(&"allow") {
        ("allowed".into(), seq.len())
    } else {
        ("no decision".into(), seq.len())
    }
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Allowed(id) => {
            assert_eq!(id.subject, "test:subject");
            "allowed".into()
        }
        Outcome::Denied { plugin, denial } => {
            assert_eq!(denial.reason, "scripted");
            format!("denied by {plugin}")
        }
        Outcome::Failed { plugin, failure } => format!("failed in {plugin}: {failure}"),
        Outcome::NoDecision => "no decision".into(),
    }
}

#[tokio::test]
async fn every_combination_of_allow_deny_abstain() {
    let rt = runtime(limits(1_000));
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();
    let compiled = rt.compile("scripted", &bytes).unwrap();
    // plugins[position][decision]
    let mut plugins: Vec<Vec<Arc<dyn AuthProvider>>> = Vec::new();
    for pos in 0..3 {
        let mut row: Vec<Arc<dyn AuthProvider>> = Vec::new();
        for d in DECISIONS {
            let p = rt
                .instantiate(
                    &format!("p{pos}-{d}"),
                    &compiled,
                    &json!({"decision": d, "roles": ["worker"]}),
                    Grants::default(),
                )
                .await
                .unwrap();
            row.push(Arc::new(p));
        }
        plugins.push(row);
    }

    let mut sequences: Vec<Vec<usize>> = Vec::new();
    for len in 1..=3 {
        let mut seq = vec![0usize; len];
        loop {
            sequences.push(seq.clone());
            let mut i = 0;
            while i < len {
                seq[i] += 1;
                if seq[i] < DECISIONS.len() {
                    break;
                }
                seq[i] = 0;
                i += 1;
            }
            if i == len {
                break;
            }
        }
    }
    assert_eq!(sequences.len(), 4 + 16 + 64);

    for seq in sequences {
        let names: Vec<&str> = seq.iter().map(|d| DECISIONS[*d]).collect();
        let chain = Chain::new(
            seq.iter()
                .enumerate()
                .map(|(pos, d)| plugins[pos][*d].clone())
                .collect(),
        );
        let verdict = chain
            .evaluate(&request("test", None), None, CachePolicy::Use)
            .await;
        let (want, ran) = expected(&names);
        assert_eq!(describe(&verdict.outcome), want, "sequence {names:?}");
        assert_eq!(verdict.steps.len(), ran, "plugins run for {names:?}");
        let mut established = false;
        for (step, d) in verdict.steps.iter().zip(&names) {
            let kind = match *d {
                "allow" => StepKind::Allow,
                "deny" => StepKind::Deny,
                // a permit with nothing established yet counts as an abstention
                "permit" if established => StepKind::Permit,
                _ => StepKind::Abstain,
            };
            established |= *d == "allow";
            assert_eq!(step.kind, kind, "{names:?}");
        }
    }
}

#[tokio::test]
async fn later_allows_can_only_narrow_the_identity() {
    let rt = runtime(limits(1_000));
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();
    let compiled = rt.compile("scripted", &bytes).unwrap();
    let first = rt
        .instantiate(
            "authn",
            &compiled,
            &json!({"decision": "allow", "roles": ["worker", "operator"], "scopes": ["a", "b"],
                    "groups": ["g1"], "skip_pairing": true, "expires_at_ms": 5_000}),
            Grants::default(),
        )
        .await
        .unwrap();
    let policy = rt
        .instantiate(
            "policy",
            &compiled,
            // tries to widen scopes (adds "c") and keeps skip-pairing on
            &json!({"decision": "echo-so-far", "roles": ["worker", "admin"], "scopes": ["a", "c"],
                    "groups": ["g2"], "skip_pairing": true}),
            Grants::default(),
        )
        .await
        .unwrap();
    let expiring = rt
        .instantiate(
            "expiring",
            &compiled,
            &json!({"decision": "allow", "roles": ["worker"], "scopes": ["a"], "expires_at_ms": 3_000}),
            Grants::default(),
        )
        .await
        .unwrap();
    let chain = Chain::new(vec![Arc::new(first), Arc::new(policy), Arc::new(expiring)]);
    let verdict = chain
        .evaluate(&request("test", None), None, CachePolicy::Use)
        .await;
    let Outcome::Allowed(id) = verdict.outcome else {
        panic!("expected allow: {:?}", verdict.outcome)
    };
    assert_eq!(
        id.roles,
        vec!["worker".to_string()],
        "admin must not be added"
    );
    assert_eq!(id.scopes, vec!["a".to_string()], "c must not be added");
    assert_eq!(id.groups, vec!["g1".to_string(), "g2".to_string()]);
    assert!(
        !id.skip_pairing,
        "the last allow did not grant skip-pairing"
    );
    assert_eq!(id.expires_at_ms, Some(3_000));
    assert_eq!(id.method, "test");
}

#[tokio::test]
async fn a_later_allow_cannot_change_the_subject() {
    let rt = runtime(limits(1_000));
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();
    let compiled = rt.compile("scripted", &bytes).unwrap();
    let a = rt
        .instantiate(
            "a",
            &compiled,
            &json!({"decision": "allow", "subject": "alice"}),
            Grants::default(),
        )
        .await
        .unwrap();
    let b = rt
        .instantiate(
            "b",
            &compiled,
            &json!({"decision": "allow", "subject": "mallory"}),
            Grants::default(),
        )
        .await
        .unwrap();
    let verdict = Chain::new(vec![Arc::new(a), Arc::new(b)])
        .evaluate(&request("test", None), None, CachePolicy::Use)
        .await;
    match verdict.outcome {
        Outcome::Failed { plugin, failure } => {
            assert_eq!(plugin, "b");
            assert!(
                matches!(failure, PluginFailure::InvalidDecision(ref m) if m.contains("mallory"))
            );
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_permit_narrows_the_identity_and_never_widens_it() {
    let rt = runtime(limits(1_000));
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();
    let compiled = rt.compile("scripted", &bytes).unwrap();
    let load = |name: &'static str, config: serde_json::Value| {
        let (rt, compiled) = (&rt, &compiled);
        async move {
            Arc::new(
                rt.instantiate(name, compiled, &config, Grants::default())
                    .await
                    .unwrap(),
            ) as Arc<dyn AuthProvider>
        }
    };
    let authn = load(
        "authn",
        json!({"decision": "allow", "roles": ["worker", "operator"], "skip_pairing": true,
               "expires_at_ms": 9_000}),
    )
    .await;
    let policy = load(
        "policy",
        // keeps only `worker` (and tries to keep `admin`, never granted), vetoes skip-pairing,
        // adds an attribute, shortens the expiry
        json!({"decision": "permit", "keep_roles": ["worker", "admin"], "veto_skip_pairing": true,
               "expires_at_ms": 4_000}),
    )
    .await;
    let verdict = Chain::new(vec![authn.clone(), policy])
        .evaluate(&request("test", None), None, CachePolicy::Use)
        .await;
    let Outcome::Allowed(id) = verdict.outcome else {
        panic!("expected allow: {:?}", verdict.outcome)
    };
    assert_eq!(id.roles, vec!["worker".to_string()]);
    assert!(!id.skip_pairing);
    assert_eq!(id.expires_at_ms, Some(4_000));
    assert_eq!(id.attribute("permitted-by"), Some("scripted"));
    assert_eq!(id.attribute("client-id"), Some("test-client"), "kept");
    let kinds: Vec<StepKind> = verdict.steps.iter().map(|s| s.kind).collect();
    assert_eq!(kinds, vec![StepKind::Allow, StepKind::Permit]);

    // A later expiry than the current one does not extend it.
    let lenient = load(
        "lenient",
        json!({"decision": "permit", "expires_at_ms": 99_000}),
    )
    .await;
    let verdict = Chain::new(vec![authn, lenient])
        .evaluate(&request("test", None), None, CachePolicy::Use)
        .await;
    let Outcome::Allowed(id) = verdict.outcome else {
        panic!("expected allow")
    };
    assert_eq!(id.expires_at_ms, Some(9_000));
    assert!(id.skip_pairing, "no veto, nothing narrowed");
}
