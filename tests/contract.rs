//! Contract 0.2 as a plugin lives it: opaque credentials and the read grant, verifications by
//! handle, the deprecated 0.1 contract still loading, and every documented size limit enforced
//! (one byte or item over it fails the plugin, and nothing of the oversized answer reaches the
//! client, the log or a session).

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;
use trustgate_runtime::{
    CachePolicy, ContractVersion, Decision, HostServices, Identity, Review, ReviewError, Runtime,
    limits,
};
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{
    LogCapture, decide, gateway, guests, limits as test_limits, request, spec,
    spec_reading_credentials,
};

const TOKEN: &str = "SECRET-bearer-7f3a9c";
const DEVICE_TOKEN: &str = "tgd1_SECRET-device-c0ffee";

/// A review authority that accepts any token as one ServiceAccount and remembers which tokens
/// it was asked about.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

struct Accepted;

impl Review for Accepted {
    fn authenticated(&self) -> bool {
        true
    }
    fn error(&self) -> Option<&str> {
        None
    }
    fn username(&self) -> &str {
        "system:serviceaccount:workers:runner"
    }
    fn uid(&self) -> &str {
        "uid-1"
    }
    fn groups(&self) -> &[String] {
        &[]
    }
    fn audiences(&self) -> &[String] {
        &[]
    }
    fn extra(&self, _key: &str) -> Option<&[String]> {
        None
    }
    fn extras(&self) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
    fn expires_at_ms(&self) -> Option<u64> {
        None
    }
}

#[async_trait]
impl HostServices for Recorder {
    async fn token_review(
        &self,
        token: &str,
        _audiences: &[String],
        _cache: CachePolicy,
    ) -> Result<Arc<dyn Review>, ReviewError> {
        self.seen.lock().unwrap().push(token.to_string());
        Ok(Arc::new(Accepted))
    }

    async fn verify_jwt(
        &self,
        token: &str,
        _audiences: &[String],
    ) -> Result<Arc<dyn Review>, ReviewError> {
        self.seen.lock().unwrap().push(token.to_string());
        Ok(Arc::new(Accepted))
    }
}

/// What the `probe` guest reported: its identity's attributes.
fn probe_report(d: Decision) -> Vec<(String, String)> {
    match d {
        Decision::Allow(id) => id.attributes,
        other => panic!("the probe allows with its findings, got {other:?}"),
    }
}

fn attribute<'a>(report: &'a [(String, String)], key: &str) -> &'a str {
    report
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {report:?}"))
}

#[tokio::test]
async fn credentials_are_opaque_without_the_grant_and_readable_with_it() {
    let recorder = Arc::new(Recorder::default());
    let rt = Runtime::new(test_limits(1_000), recorder.clone()).unwrap();
    let mut req = request("k8s-sa-trust", Some(TOKEN));
    Arc::make_mut(&mut req).credentials.device_token = Some(DEVICE_TOKEN.into());
    let probe = json!({"decision": "probe"});

    // Without the grant: every accessor and host call, and no secret anywhere in the answer.
    let plugin = rt
        .load(&spec("policy", guests::GUEST_SCRIPTED, probe.clone()))
        .await
        .unwrap();
    assert!(!plugin.reads_credentials());
    let decision = decide(&plugin, &req, None).await.unwrap();
    let everything = format!("{decision:?}");
    assert!(
        !everything.contains("SECRET"),
        "a secret leaked: {everything}"
    );
    let report = probe_report(decision);
    assert_eq!(attribute(&report, "token"), "not-granted");
    assert_eq!(attribute(&report, "device-token"), "not-granted");
    assert_eq!(attribute(&report, "has-token"), "true");
    assert_eq!(attribute(&report, "has-device-token"), "true");
    assert_eq!(attribute(&report, "method"), "k8s-sa-trust");
    // ... yet verifications work: the host hands the real token to the authority.
    assert_eq!(
        attribute(&report, "review"),
        "ok:system:serviceaccount:workers:runner"
    );
    assert_eq!(
        attribute(&report, "verify-jwt"),
        "ok:system:serviceaccount:workers:runner"
    );
    assert_eq!(
        *recorder.seen.lock().unwrap(),
        vec![TOKEN.to_string(), TOKEN.to_string()]
    );

    // With the grant (`credentials = "read"`): the secrets themselves.
    let granted = rt
        .load(&spec_reading_credentials(
            "reader",
            guests::GUEST_SCRIPTED,
            probe,
        ))
        .await
        .unwrap();
    assert!(granted.reads_credentials());
    let report = probe_report(decide(&granted, &req, None).await.unwrap());
    assert_eq!(attribute(&report, "token"), format!("value:{TOKEN}"));
    assert_eq!(
        attribute(&report, "device-token"),
        format!("value:{DEVICE_TOKEN}")
    );

    // Granted but absent is told apart from not granted.
    let bare = request("none", None);
    let report = probe_report(decide(&granted, &bare, None).await.unwrap());
    assert_eq!(attribute(&report, "token"), "absent");
    assert_eq!(attribute(&report, "has-token"), "false");
}

#[tokio::test]
async fn a_0_1_component_loads_decides_as_before_and_warns() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let rt = trustgate_tests::runtime(test_limits(1_000));
    // 0.1 copies the token into every request: `subject_from_token` works without a grant.
    let legacy = rt
        .load(&spec(
            "legacy",
            guests::GUEST_SCRIPTED_V0_1,
            json!({"decision": "allow", "subject_from_token": true, "roles": ["worker"], "groups": ["g"]}),
        ))
        .await
        .unwrap();
    assert_eq!(legacy.contract(), ContractVersion::V0_1);
    assert!(
        legacy.reads_credentials(),
        "0.1 implies reading credentials"
    );
    let log = logs.text();
    assert!(
        log.contains("built against trustgate:auth@0.1.0, which is deprecated")
            && log.contains("rebuild it against trustgate:auth@0.2.0")
            && log.contains("legacy"),
        "{log}"
    );
    match decide(&legacy, &request("k8s-sa-trust", Some("tok")), None)
        .await
        .unwrap()
    {
        Decision::Allow(id) => {
            assert_eq!(id.subject, "token:tok");
            assert_eq!(id.groups, vec!["g".to_string()]);
            assert_eq!(id.roles, vec!["worker".to_string()]);
        }
        other => panic!("expected allow, got {other:?}"),
    }
    // A 0.1 policy's `permit` comes back as 0.1's allow of the identity so far, narrowed.
    let policy = rt
        .load(&spec(
            "legacy-policy",
            guests::GUEST_SCRIPTED_V0_1,
            json!({"decision": "permit", "keep_roles": ["worker"]}),
        ))
        .await
        .unwrap();
    let so_far = Identity {
        subject: "s".into(),
        method: "m".into(),
        roles: vec!["worker".into(), "operator".into()],
        ..Identity::default()
    };
    match decide(&policy, &request("m", None), Some(&so_far))
        .await
        .unwrap()
    {
        Decision::Allow(id) => {
            assert_eq!(id.subject, "s");
            assert_eq!(id.roles, vec!["worker".to_string()]);
            assert_eq!(attribute_of(&id, "permitted-by"), Some("scripted"));
        }
        other => panic!("expected 0.1's allow, got {other:?}"),
    }
}

fn attribute_of<'a>(id: &'a Identity, key: &str) -> Option<&'a str> {
    id.attribute(key)
}

/// Connects as a worker with auth method `method`; returns the response.
async fn connect(gw: &trustgate_tests::TestGateway, method: &str) -> serde_json::Value {
    let mut c = WsClient::open(&gw.url()).await;
    c.connect(connect_params(
        "worker",
        Some(json!({"method": method, "token": "t"})),
        None,
    ))
    .await
}

#[tokio::test]
async fn every_size_limit_holds_one_over_it_fails_and_nothing_of_it_travels() {
    // (field, limit, the content that must not travel when over the limit)
    let x = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, usize, String)> = vec![
        ("subject", limits::MAX_SUBJECT, x(100)),
        ("method", limits::MAX_METHOD, x(60)),
        (
            "groups",
            limits::MAX_GROUPS,
            format!("g{}", limits::MAX_GROUPS),
        ),
        ("group", limits::MAX_GROUP, x(100)),
        (
            "attributes",
            limits::MAX_ATTRIBUTES,
            format!("k{}", limits::MAX_ATTRIBUTES),
        ),
        ("attribute-key", limits::MAX_ATTRIBUTE_KEY, x(60)),
        ("attribute-value", limits::MAX_ATTRIBUTE_VALUE, x(100)),
        (
            "roles",
            limits::MAX_ROLES,
            format!("r{}", limits::MAX_ROLES),
        ),
        ("role", limits::MAX_ROLE, x(30)),
        (
            "scopes",
            limits::MAX_SCOPES,
            format!("s{}", limits::MAX_SCOPES),
        ),
        ("scope", limits::MAX_SCOPE, x(100)),
        ("reason", limits::MAX_REASON, x(60)),
        ("message", limits::MAX_MESSAGE, x(100)),
    ];
    // One gateway, one plugin per case and size, each answering only its own auth method.
    let chain: String = cases
        .iter()
        .flat_map(|(field, limit, _)| [(field, *limit, "at"), (field, limit + 1, "over")])
        .map(|(field, size, which)| {
            trustgate_tests::scripted(
                &format!("{field}-{which}"),
                &format!(
                    r#"decision = "oversize", method = "{field}-{which}", oversize = "{field}", size = {size}"#
                ),
            )
        })
        .collect();
    let logs = LogCapture::default();
    let _guard = logs.install();
    let gw = gateway("", &chain).await;
    for (field, limit, content) in cases {
        // At the limit: accepted (a hello-ok, or for a denial the plugin's own refusal).
        let at = connect(&gw, &format!("{field}-at")).await;
        assert_ne!(
            at["error"]["code"], "PLUGIN_FAILED",
            "{field} at its limit {limit} must be accepted: {at}"
        );
        // One over: the plugin failed, fail closed, and the answer is gone.
        let before = logs.text().len();
        let over = connect(&gw, &format!("{field}-over")).await;
        assert_eq!(over["error"]["code"], "PLUGIN_FAILED", "{field}: {over}");
        assert_eq!(over["error"]["details"]["reason"], "invalid", "{field}");
        let frame = over.to_string();
        assert!(
            !frame.contains(&content),
            "{field}: the client frame carries the oversized content: {frame}"
        );
        let log = &logs.text()[before..];
        assert!(
            !log.contains(&content),
            "{field}: the log carries the oversized content: {log}"
        );
        assert!(
            log.contains(field.split('-').next().unwrap_or(field)),
            "{field}: the log names the field: {log}"
        );
        assert!(
            !gw.running
                .state
                .sessions()
                .list()
                .iter()
                .any(|s| s.method.starts_with(&format!("{field}-over"))),
            "{field}: no session from the oversized answer"
        );
    }
}

#[tokio::test]
async fn plugin_logs_are_cut_per_line_escaped_and_bounded_per_call() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let rt = trustgate_tests::runtime(test_limits(1_000));
    // 20 rounds of a 1000-byte line on each of log, stdout and stderr: 60 KB, over the
    // 16 KiB budget of one call.
    let noisy = rt
        .load(&spec(
            "noisy",
            guests::GUEST_SCRIPTED,
            json!({"decision": "oversize", "oversize": "log", "size": 20}),
        ))
        .await
        .unwrap();
    decide(&noisy, &request("m", None), None).await.unwrap();
    let log = logs.text();
    let logged: usize = log.matches('x').count();
    // Each line is charged its escaped text plus the framing a log line adds (timestamp,
    // level, plugin and stream names), so the budget bounds what the log grows by, not only
    // the plugin's text. Stream names are 3 ("log") to 6 ("stdout") bytes.
    let lines = log.lines().filter(|l| l.contains("xxxx")).count();
    let framing = limits::LOG_LINE_FRAMING + "noisy".len();
    assert!(
        logged + lines * (framing + 3) <= limits::MAX_LOG_PER_CALL,
        "{logged} bytes of plugin output in {lines} lines logged in one call"
    );
    assert!(
        logged + lines * (framing + 6) + (1_000 + framing + 6) > limits::MAX_LOG_PER_CALL,
        "only {logged} bytes in {lines} lines logged: the budget was not used up"
    );
    let dropped = noisy
        .stats()
        .log_dropped_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        dropped >= 60_000 - limits::MAX_LOG_PER_CALL as u64,
        "{dropped}"
    );

    // A line break or an escape sequence in plugin text cannot forge a log line.
    let forger = rt
        .load(&spec(
            "forger",
            guests::GUEST_SCRIPTED,
            json!({"decision": "oversize", "oversize": "forged-log"}),
        ))
        .await
        .unwrap();
    decide(&forger, &request("m", None), None).await.unwrap();
    let log = logs.text();
    assert!(
        log.contains("innocent\\nERROR forged line\\u{1b}[31m"),
        "{log}"
    );
    assert!(!log.lines().any(|l| l.starts_with("ERROR forged line")));
    assert!(!log.contains('\u{1b}'));

    // A configure error is cut to its limit.
    let err = rt
        .load(&spec(
            "picky",
            guests::GUEST_SCRIPTED,
            json!({"decision": "allow", "reject": "q".repeat(limits::MAX_CONFIGURE_ERROR + 1)}),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(err.matches('q').count(), limits::MAX_CONFIGURE_ERROR);
}

/// What a hostile guest read in its second call through a handle kept from its first.
fn second_read(kind: &str, result: Result<Decision, trustgate_runtime::PluginFailure>) -> String {
    use trustgate_runtime::PluginFailure;
    match result {
        Err(PluginFailure::Trap(msg)) => msg,
        Err(other) => panic!("{kind}: expected a trap, got {other:?}"),
        Ok(Decision::Allow(id)) => format!("allowed, read {:?}", attribute_of(&id, "read")),
        Ok(other) => panic!("{kind}: unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_handle_kept_from_an_earlier_call_traps_whatever_the_guest_created_since() {
    let rt = Runtime::new(test_limits(1_000), Arc::new(Recorder::default())).unwrap();
    // The first call's facts, which the second must never see through a kept handle.
    let first = request("first-method", Some("first-token"));
    let first_id = Identity {
        subject: "first-subject".into(),
        method: "m".into(),
        roles: vec!["worker".into()],
        ..Identity::default()
    };
    let mut second = request("second-method", Some("second-token"));
    Arc::make_mut(&mut second).role = "operator".into();
    let second_id = Identity {
        subject: "second-subject".into(),
        ..first_id.clone()
    };
    let cases = [
        (
            "credentials (0.3)",
            guests::GUEST_HOSTILE,
            json!({"mode": "stale"}),
        ),
        (
            "credentials (0.2)",
            guests::GUEST_HOSTILE_V0_2,
            json!("credentials"),
        ),
        ("review (0.2)", guests::GUEST_HOSTILE_V0_2, json!("review")),
        (
            "request (0.2)",
            guests::GUEST_HOSTILE_V0_2,
            json!("request"),
        ),
        (
            "identity (0.2)",
            guests::GUEST_HOSTILE_V0_2,
            json!("identity"),
        ),
    ];
    for (kind, path, config) in cases {
        // One instance, so the second call runs where the first kept its handle.
        let plugin = rt
            .load(&spec_reading_credentials("stale", path, config))
            .await
            .unwrap();
        match decide(&plugin, &first, Some(&first_id)).await.unwrap() {
            Decision::Allow(id) => assert_eq!(attribute_of(&id, "read"), Some("kept"), "{kind}"),
            other => panic!("{kind}: the first call allows, got {other:?}"),
        }
        let read = second_read(kind, decide(&plugin, &second, Some(&second_id)).await);
        for earlier in [
            "first-method",
            "first-token",
            "first-subject",
            "worker",
            "runner",
        ] {
            assert!(
                !read.contains(earlier),
                "{kind}: read the earlier call's data: {read}"
            );
        }
        // Handles the guest owns (credentials, reviews) keep their slot in the guest's table,
        // and the host refuses the number behind it. A *lent* handle (0.2's request and
        // identity) is removed from the guest's table by the component model when the call
        // returns, and the next call's lent handle may take the same slot: then the kept number
        // names the current call's own request or identity, which the guest holds anyway —
        // never the earlier call's (checked above). 0.3 lends neither: they are facts by value.
        let trapped = read.contains("earlier call") || read.contains("unknown handle");
        let own_current = match kind {
            "request (0.2)" => read == "allowed, read Some(\"operator\")",
            "identity (0.2)" => read == "allowed, read Some(\"second-subject\")",
            _ => false,
        };
        assert!(
            trapped || own_current,
            "{kind}: a stale handle must trap, got {read}"
        );
        // The trap cost the instance, not the plugin: a fresh one keeps its first handle again.
        if trapped {
            match decide(&plugin, &first, Some(&first_id)).await.unwrap() {
                Decision::Allow(id) => {
                    assert_eq!(attribute_of(&id, "read"), Some("kept"), "{kind}")
                }
                other => panic!("{kind}: a fresh instance allows, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn the_log_grows_by_at_most_twice_the_budget_per_call_whatever_the_plugin_writes() {
    let logs = LogCapture::default();
    let _guard = logs.install();
    let rt = trustgate_tests::runtime(test_limits(2_000));
    let budget = limits::MAX_LOG_PER_CALL;
    for (shape, size) in [
        // Many tiny lines: the framing of each line, not its one byte, is what the log pays.
        ("tiny-logs", 16_384),
        // Control characters: each escapes to several bytes in the log.
        ("control-log", budget),
    ] {
        let plugin = rt
            .load(&spec(
                shape,
                guests::GUEST_SCRIPTED,
                json!({"decision": "oversize", "oversize": shape, "size": size}),
            ))
            .await
            .unwrap();
        let before = logs.text().len();
        decide(&plugin, &request("m", None), None).await.unwrap();
        let grew = logs.text().len() - before;
        assert!(
            grew <= 2 * budget,
            "{shape}: the log grew by {grew} bytes in one call (budget {budget})"
        );
        assert!(
            plugin
                .stats()
                .log_dropped_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0,
            "{shape}: what did not fit is counted"
        );
    }

    // A stdout line over 2,048 bytes appears once, cut at 2,048, and the rest is counted.
    let plugin = rt
        .load(&spec(
            "long-stdout",
            guests::GUEST_SCRIPTED,
            json!({"decision": "oversize", "oversize": "long-stdout", "size": 5_000}),
        ))
        .await
        .unwrap();
    let before = logs.text().len();
    decide(&plugin, &request("m", None), None).await.unwrap();
    let text = logs.text()[before..].to_string();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("yyyy")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    let run = lines[0].split(|c| c != 'y').map(str::len).max();
    assert_eq!(run, Some(limits::MAX_LOG_LINE), "{}", lines[0]);
    let dropped = plugin
        .stats()
        .log_dropped_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, (5_000 - limits::MAX_LOG_LINE) as u64);
}
