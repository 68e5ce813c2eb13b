//! The sandbox fences: hostile guests are stopped within their limits, fail closed with a
//! classified cause, and the host keeps serving normal authentications afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;
use trustgate_runtime::{
    AuthProvider, CachePolicy, Chain, Decision, LoadError, Outcome, PluginFailure, WasmPlugin,
};
use trustgate_tests::{call, guests, limits, request, runtime, spec};

async fn hostile(rt: &trustgate_runtime::Runtime, mode: &str) -> WasmPlugin {
    rt.load(&spec(
        "hostile",
        guests::GUEST_HOSTILE,
        json!({"mode": mode}),
    ))
    .await
    .expect("hostile guest loads")
}

async fn assert_allows(plugin: &WasmPlugin) {
    let d = plugin
        .authenticate(&call(&request("test", None), None))
        .await
        .expect("normal authentication after a failure");
    match d {
        Decision::Allow(id) => assert_eq!(id.subject, "hostile:ok"),
        other => panic!("expected allow, got {other:?}"),
    }
}

#[tokio::test]
async fn infinite_loop_is_stopped_at_the_deadline() {
    let deadline = Duration::from_millis(200);
    let rt = runtime(limits(deadline.as_millis() as u64));
    let looping = hostile(&rt, "loop").await;
    let started = Instant::now();
    let err = looping
        .authenticate(&call(&request("test", None), None))
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, PluginFailure::Deadline);
    assert!(elapsed >= deadline, "stopped early: {elapsed:?}");
    assert!(
        elapsed < deadline * 2,
        "deadline overshot: {elapsed:?} for {deadline:?}"
    );

    let fine = hostile(&rt, "ok").await;
    assert_allows(&fine).await;
}

#[tokio::test]
async fn deadlines_still_fire_after_the_runtime_is_dropped() {
    let looping = {
        let rt = runtime(limits(50));
        hostile(&rt, "loop").await
    };
    assert_eq!(
        looping
            .authenticate(&call(&request("test", None), None))
            .await
            .unwrap_err(),
        PluginFailure::Deadline
    );
}

#[tokio::test]
async fn unbounded_memory_growth_hits_the_cap() {
    let rt = runtime(limits(5_000));
    let grower = hostile(&rt, "grow").await;
    let err = grower
        .authenticate(&call(&request("test", None), None))
        .await
        .unwrap_err();
    assert_eq!(err, PluginFailure::Memory);
    assert_allows(&hostile(&rt, "ok").await).await;
}

#[tokio::test]
async fn trap_panic_and_stack_overflow_fail_closed() {
    let rt = runtime(limits(2_000));
    for (mode, needle) in [
        ("trap", "unreachable"),
        ("panic", "unreachable"),
        ("recurse", "call stack exhausted"),
        // asking for handles without end: refused past the per-call bound
        ("handles", "more than 64 handles"),
    ] {
        let p = hostile(&rt, mode).await;
        let err = p
            .authenticate(&call(&request("test", None), None))
            .await
            .unwrap_err();
        match &err {
            PluginFailure::Trap(msg) => assert!(
                msg.contains(needle),
                "{mode}: trap message `{msg}` lacks `{needle}`"
            ),
            other => panic!("{mode}: expected a trap, got {other:?}"),
        }
        assert_eq!(err.cause(), "trap");
    }
    assert_allows(&hostile(&rt, "ok").await).await;
}

#[tokio::test]
async fn a_trapped_instance_never_serves_again() {
    let rt = runtime(limits(2_000));
    // `configure` succeeds for the "panic" mode; every authenticate panics. If a trapped
    // instance were reused, its poisoned state would show up as a different error.
    let p = hostile(&rt, "panic").await;
    assert_eq!(p.stats().instances.load(Ordering::Relaxed), 1);
    for round in 1..=3u64 {
        assert!(matches!(
            p.authenticate(&call(&request("test", None), None)).await,
            Err(PluginFailure::Trap(_))
        ));
        // The warm instance served round 1; every later round needed a fresh one because
        // the trapped instance was dropped, not parked.
        assert_eq!(p.stats().instances.load(Ordering::Relaxed), round);
    }
    assert_eq!(p.stats().failures.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_failing_plugin_denies_the_chain_with_plugin_failed() {
    let rt = runtime(limits(100));
    let looping: Arc<dyn AuthProvider> = Arc::new(hostile(&rt, "loop").await);
    let chain = Chain::new(vec![looping]);
    let verdict = chain
        .evaluate(&request("test", None), None, CachePolicy::Use)
        .await;
    match verdict.outcome {
        Outcome::Failed { plugin, failure } => {
            assert_eq!(plugin, "hostile");
            assert_eq!(failure, PluginFailure::Deadline);
        }
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn misbehaving_configure_is_a_load_error_naming_the_plugin() {
    // Each fence is given room to be the one that stops the guest: a short deadline for the
    // loop, a long one for the growth (filling 32 MiB on a starved machine can take longer than
    // 100 ms of the thread's clock, and the deadline would stop it first).
    for (mode, deadline_ms, cause) in [
        ("configure:loop", 100, "exceeded its CPU deadline"),
        ("configure:grow", 5_000, "exceeded its memory cap"),
        ("configure:trap", 100, "trapped: configure"),
    ] {
        let rt = runtime(limits(deadline_ms));
        let err = rt
            .load(&spec(
                "hostile",
                guests::GUEST_HOSTILE,
                json!({"mode": mode}),
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, LoadError::Failed { .. }), "{mode}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with("plugin `hostile` ("), "{msg}");
        assert!(msg.contains(cause), "{mode}: {msg}");
    }
}

#[tokio::test]
async fn concurrent_calls_do_not_serialize_on_one_instance() {
    // One looping plugin and one fine plugin share the runtime, on a single-threaded executor:
    // 16 fine calls complete while the looping call is still burning its deadline, because a
    // long-running guest yields its thread between slices.
    let rt = runtime(limits(400));
    let looping = Arc::new(hostile(&rt, "loop").await);
    let fine = Arc::new(hostile(&rt, "ok").await);
    let slow = tokio::spawn({
        let looping = looping.clone();
        async move {
            looping
                .authenticate(&call(&request("test", None), None))
                .await
                .unwrap_err()
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let fine = fine.clone();
        tasks.push(tokio::spawn(async move {
            fine.authenticate(&call(&request("test", None), None)).await
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Ok(Decision::Allow(_))));
    }
    assert!(
        !slow.is_finished(),
        "the looping call finished before the fast ones: they were serialized behind it"
    );
    assert_eq!(slow.await.unwrap(), PluginFailure::Deadline);
    // and concurrent fine calls used several instances
    assert!(fine.stats().instances.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn host_token_review_without_kubernetes_is_a_clear_not_configured() {
    // What a gateway without `[kubernetes]` puts behind the host calls.
    let rt = trustgate_runtime::Runtime::new(
        limits(1_000),
        std::sync::Arc::new(trustgate_gateway::NO_KUBERNETES),
    )
    .unwrap();
    let p = rt
        .load(&spec(
            "scripted",
            guests::GUEST_SCRIPTED,
            json!({"decision": "review"}),
        ))
        .await
        .unwrap();
    match p
        .authenticate(&call(&request("k8s-sa-trust", Some("tok")), None))
        .await
        .unwrap()
    {
        Decision::Deny(d) => {
            assert_eq!(d.reason, "not-configured");
            assert!(
                d.message.contains("no Kubernetes client configured"),
                "{}",
                d.message
            );
        }
        other => panic!("expected deny, got {other:?}"),
    }
}

/// Settings for the bound tests: instances big enough for the `hold` guest (60 MiB).
fn bounded(max_instances: usize, budget_mib: u64) -> trustgate_runtime::RuntimeSettings {
    trustgate_runtime::RuntimeSettings {
        memory_mib: 80,
        memory_budget_mib: Some(budget_mib),
        max_instances,
        instance_wait_ms: 100,
        ..limits(2_000)
    }
}

/// Runs `n` overlapping calls; returns (successes, busy failures, other failures) and the most
/// memory the runtime held while they ran.
async fn overlapping(plugin: Arc<WasmPlugin>, n: usize) -> (usize, usize, usize, usize) {
    let watcher = plugin.clone();
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak_w = peak.clone();
    let done = Arc::new(tokio::sync::Notify::new());
    let done_w = done.clone();
    let watch = tokio::spawn(async move {
        loop {
            peak_w.fetch_max(watcher.runtime_memory_bytes(), Ordering::Relaxed);
            tokio::select! {
                _ = done_w.notified() => return,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let p = plugin.clone();
            tokio::spawn(async move { p.authenticate(&call(&request("test", None), None)).await })
        })
        .collect();
    let (mut ok, mut busy, mut other) = (0, 0, 0);
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(PluginFailure::Busy) => busy += 1,
            Err(_) => other += 1,
        }
    }
    done.notify_one();
    watch.await.unwrap();
    let peak = peak
        .load(Ordering::Relaxed)
        .max(plugin.runtime_memory_bytes());
    (ok, busy, other, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_instances_are_capped_and_a_call_beyond_waits_then_is_busy() {
    // Each instance holds 60 MiB and every call takes ~200 ms: 16 overlapping handshakes
    // once grew an instance each (past 6 GiB at 200). Now at most 2 exist.
    let rt = runtime(bounded(2, 2_048));
    let plugin = Arc::new(hostile(&rt, "hold").await);
    let (ok, busy, other, peak) = overlapping(plugin.clone(), 16).await;
    assert_eq!(other, 0);
    assert!(ok >= 2, "calls that got an instance succeed ({ok})");
    assert!(
        busy > 0,
        "calls past the cap and the wait are busy ({busy})"
    );
    assert_eq!(ok + busy, 16);
    let per_instance = 81 << 20;
    assert!(
        peak <= 2 * per_instance,
        "at most two instances' memory: {} MiB",
        peak >> 20
    );
    assert_eq!(PluginFailure::Busy.cause(), "busy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_wide_memory_budget_holds_across_instances() {
    // A budget of 150 MiB fits two 60 MiB hoards, not three, whatever the instance cap.
    let rt = runtime(bounded(16, 150));
    let plugin = Arc::new(hostile(&rt, "hold").await);
    let (ok, busy, other, peak) = overlapping(plugin, 8).await;
    assert!(ok >= 1, "{ok}");
    assert!(busy + other > 0, "growth past the budget fails the call");
    assert!(
        peak <= 150 << 20,
        "the runtime never held more than its budget: {} MiB",
        peak >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_waiting_in_a_wasi_clock_fails_within_its_cpu_deadline() {
    // A guest has nothing to wait for but its own host calls: a sleep through WASI (a minute
    // here) counts against the CPU deadline as if it computed, so the call fails within the
    // deadline and a small margin, not at the call's wall-clock bound (5.5 s by default).
    let settings = trustgate_runtime::RuntimeSettings {
        deadline_ms: 50,
        ..trustgate_runtime::RuntimeSettings::default()
    };
    let rt = runtime(settings);
    let sleeper = hostile(&rt, "sleep").await;
    let started = Instant::now();
    let err = sleeper
        .authenticate(&call(&request("test", None), None))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, PluginFailure::Deadline);
    assert!(took >= Duration::from_millis(50), "{took:?}");
    assert!(
        took < Duration::from_millis(50 + 500),
        "a sleeping plugin held its call for {took:?}"
    );
    assert_allows(&hostile(&rt, "ok").await).await;
}
