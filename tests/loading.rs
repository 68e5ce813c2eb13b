//! Loading: sha256 pins, the on-disk compile cache, and the first-party allowlist plugin's
//! decisions through its real component.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::sync::Arc;

use serde_json::json;
use trustgate_runtime::{
    AuthProvider, CacheOutcome, Decision, DenyCode, Grants, Identity, LoadError, NoServices,
    PluginSource, PluginSpec, Runtime, RuntimeSettings, sha256_hex,
};
use trustgate_tests::{call, decide, guests, limits, request, runtime, spec};

#[tokio::test]
async fn a_matching_sha256_pin_loads_and_a_wrong_one_is_refused() {
    let rt = runtime(limits(1_000));
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();
    let good = PluginSpec {
        name: "pinned".into(),
        source: PluginSource::File {
            path: guests::GUEST_SCRIPTED.into(),
            sha256: Some(sha256_hex(&bytes).to_uppercase()),
        },
        config: json!({"decision": "abstain"}),
        grants: Grants::default(),
    };
    let p = rt.load(&good).await.unwrap();
    assert_eq!(p.sha256(), sha256_hex(&bytes));

    let mut flipped = sha256_hex(&bytes).into_bytes();
    flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
    let bad = PluginSpec {
        source: PluginSource::File {
            path: guests::GUEST_SCRIPTED.into(),
            sha256: Some(String::from_utf8(flipped).unwrap()),
        },
        ..good
    };
    assert!(matches!(
        rt.load(&bad).await,
        Err(LoadError::HashMismatch { .. })
    ));
}

fn cached_runtime(dir: &std::path::Path) -> Runtime {
    Runtime::new(
        RuntimeSettings {
            cache_dir: Some(dir.to_path_buf()),
            max_idle_instances: 2,
            ..limits(1_000)
        },
        Arc::new(NoServices::default()),
    )
    .unwrap()
}

#[tokio::test]
async fn compiled_components_are_cached_across_restarts() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(guests::GUEST_SCRIPTED).unwrap();

    let first = cached_runtime(cache.path());
    assert_eq!(
        first.compile("g", &bytes).unwrap().cache(),
        CacheOutcome::Miss
    );
    drop(first);

    // A "restart": a new engine, same settings.
    let second = cached_runtime(cache.path());
    let compiled = second.compile("g", &bytes).unwrap();
    assert_eq!(compiled.cache(), CacheOutcome::Hit);
    let p = second
        .instantiate(
            "g",
            &compiled,
            &json!({"decision": "allow"}),
            Grants::default(),
        )
        .await
        .unwrap();
    assert!(matches!(
        decide(&p, &request("test", None), None).await,
        Ok(Decision::Allow(_))
    ));

    // A damaged artifact is detected and replaced, not executed.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "cwasm") {
            let mut data = std::fs::read(&path).unwrap();
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
            std::fs::write(&path, data).unwrap();
        }
    }
    let third = cached_runtime(cache.path());
    assert_eq!(
        third.compile("g", &bytes).unwrap().cache(),
        CacheOutcome::Miss
    );
    let fourth = cached_runtime(cache.path());
    assert_eq!(
        fourth.compile("g", &bytes).unwrap().cache(),
        CacheOutcome::Hit
    );
}

async fn allowlist(rules: serde_json::Value) -> Arc<dyn AuthProvider> {
    // The runtime is dropped on return; the plugin must keep working (and keep its deadline).
    let rt = runtime(limits(1_000));
    Arc::new(
        rt.load(&PluginSpec {
            name: "allowlist".into(),
            source: trustgate_tests::bench::builtin("allowlist"),
            config: json!({ "rules": rules }),
            grants: Grants::default(),
        })
        .await
        .unwrap(),
    )
}

fn identity(subject: &str, namespace: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        method: "k8s-sa-trust".into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        attributes: vec![("namespace".into(), namespace.into())],
        roles: vec!["worker".into()],
        scopes: vec![],
        expires_at_ms: None,
        skip_pairing: true,
    }
}

fn verdict(d: Decision) -> String {
    match d {
        Decision::Allow(_) => "allow".into(),
        // the allowlist lets an identity through without copying it back
        Decision::Permit(n) => {
            assert_eq!(n, Default::default());
            "allow".into()
        }
        Decision::Deny(d) => {
            assert_eq!(d.code, DenyCode::Forbidden);
            format!("deny:{}", d.reason)
        }
        Decision::Abstain => "abstain".into(),
    }
}

#[tokio::test]
async fn allowlist_matches_subject_namespace_group_cidr_and_role() {
    let p = allowlist(json!([
        {"effect": "deny", "subject": "system:serviceaccount:prod:intruder"},
        {"namespace": "prod-*", "roles": ["worker"]},
        {"group": "system:serviceaccounts:batch", "cidr": "10.0.0.0/8"},
        {"effect": "deny", "cidr": "192.0.2.0/24"},
    ]))
    .await;
    let mut req = request("k8s-sa-trust", Some("t"));
    let cases = [
        (
            identity("system:serviceaccount:prod-eu:w", "prod-eu", &[]),
            "10.1.2.3:1",
            "worker",
            "allow",
        ),
        (
            identity("system:serviceaccount:prod:intruder", "prod-eu", &[]),
            "10.1.2.3:1",
            "worker",
            "deny:denied-by-rule",
        ),
        (
            identity("system:serviceaccount:prod-eu:w", "prod-eu", &[]),
            "10.1.2.3:1",
            "operator",
            "deny:not-allowlisted",
        ),
        (
            identity("system:serviceaccount:dev:w", "dev", &[]),
            "10.1.2.3:1",
            "worker",
            "deny:not-allowlisted",
        ),
        (
            identity(
                "system:serviceaccount:batch:w",
                "batch",
                &["system:serviceaccounts:batch"],
            ),
            "10.9.9.9:1",
            "worker",
            "allow",
        ),
        (
            identity(
                "system:serviceaccount:batch:w",
                "batch",
                &["system:serviceaccounts:batch"],
            ),
            "172.16.0.1:1",
            "worker",
            "deny:not-allowlisted",
        ),
        (
            identity(
                "system:serviceaccount:batch:w",
                "batch",
                &["system:serviceaccounts:batch"],
            ),
            "[fd00::1]:1",
            "worker",
            "deny:not-allowlisted",
        ),
    ];
    for (id, addr, role, want) in cases {
        let r = Arc::make_mut(&mut req);
        r.peer.remote_addr = addr.into();
        r.role = role.into();
        let got = verdict(p.authenticate(&call(&req, Some(&id))).await.unwrap());
        assert_eq!(got, want, "{} from {addr} as {role}", id.subject);
    }
}

#[tokio::test]
async fn allowlist_without_an_identity_only_applies_identity_free_deny_rules() {
    let p = allowlist(json!([
        {"namespace": "prod"},
        {"effect": "deny", "cidr": "192.0.2.0/24"},
    ]))
    .await;
    let mut req = request("none", None);
    Arc::make_mut(&mut req).peer.remote_addr = "10.0.0.1:5".into();
    assert_eq!(
        verdict(p.authenticate(&call(&req, None)).await.unwrap()),
        "abstain"
    );
    Arc::make_mut(&mut req).peer.remote_addr = "192.0.2.7:5".into();
    assert_eq!(
        verdict(p.authenticate(&call(&req, None)).await.unwrap()),
        "deny:denied-by-rule"
    );
}

#[tokio::test]
async fn load_error_names_the_plugin_on_configure_rejection() {
    let rt = runtime(limits(1_000));
    let err = rt
        .load(&spec(
            "picky",
            guests::GUEST_SCRIPTED,
            json!({"decision": "allow", "reject": "need more rules, verbatim"}),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "plugin `picky` ({}) rejected its configuration: need more rules, verbatim",
            guests::GUEST_SCRIPTED
        )
    );
}
