//! trustgate's benchmarks. One command runs them all and writes the results into BENCHMARKS.md:
//!
//! ```sh
//! cargo run --release -p trustgate-tests --bin bench -- all --write BENCHMARKS.md
//! ```
//!
//! Each benchmark also runs alone: `decision`, `handshake`, `storm`, `idle`, `load`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: failures abort the run

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use trustgate_protocol::DeviceKey;
use trustgate_tests::bench::{self, Cluster, proc_cpu_ticks, proc_rss_kib};
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::tls::TestCa;

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cores} cores ({cpu}), {:.1} GiB RAM",
        mem_kib as f64 / 1048576.0
    )
}

fn us(d: f64) -> String {
    format!("{:.2} µs", d / 1000.0)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Medians of interleaved measurements: `rounds` rounds, each running every entry's
/// `batches` batches of `batch` calls in turn, so a slow spell of this shared machine lands on
/// every entry alike and the ratios hold.
async fn interleaved(
    chains: &[&trustgate_runtime::Chain],
    request: &Arc<trustgate_runtime::Request>,
    floor: &mut trustgate_tests::floor::Floor,
    rounds: usize,
) -> (Vec<f64>, f64) {
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); chains.len()];
    let mut floor_per = Vec::new();
    for _ in 0..rounds {
        for (i, chain) in chains.iter().enumerate() {
            let (m, _) = bench::decision_single(chain, request, 5, 2000).await;
            per[i].push(m);
        }
        floor_per.push(
            floor
                .median_ns(trustgate_tests::floor::Op::Three, 5, 2000)
                .await,
        );
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (per.into_iter().map(med).collect(), med(floor_per))
}

async fn decision(out: &mut String) {
    let cluster = Cluster::start().await;
    let kube = cluster.kube().await;
    let token = cluster.token();
    let request = bench::worker_request(&token);
    let (wasm, rt) = bench::wasm_chain(kube.clone(), "tokenreview").await;
    let (v02, _rt2) = bench::wasm_chain_legacy(kube.clone(), "tokenreview", "0.2").await;
    let (v01, _rt1) = bench::wasm_chain_legacy(kube.clone(), "tokenreview", "0.1").await;
    let native = bench::native_chain(kube.clone());
    let mut floor =
        trustgate_tests::floor::Floor::new(rt.engine(), trustgate_tests::guests::GUEST_FLOOR).await;
    // warm the review cache (one TokenReview) and the instance pools
    for chain in [&wasm, &v02, &v01, &native] {
        bench::decision_single(chain, &request, 3, 200).await;
    }
    let (medians, floor_ns) =
        interleaved(&[&wasm, &v02, &v01, &native], &request, &mut floor, 7).await;
    let (w1, w2, l1, n1) = (medians[0], medians[1], medians[2], medians[3]);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut parallel = Vec::new();
    for chain in [wasm, v02, v01, native] {
        let (per_s, _) =
            bench::decision_parallel(Arc::new(chain), request.clone(), cores * 8, 25_000).await;
        parallel.push(per_s);
    }
    assert_eq!(
        cluster.api.token_reviews(),
        1,
        "a warm cache makes no API calls"
    );
    writeln!(
        out,
        "### 1. Decision cost: [k8s-sa-trust (warm review cache), allowlist]\n\nMedians of 7 interleaved rounds (each: 5 batches of 2,000 decisions per chain, then the floor).\n"
    )
    .unwrap();
    writeln!(
        out,
        "| chain | median per decision (1 thread) | decisions/s ({cores} cores) | median vs native |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    for (name, m, p) in [
        ("WASM, contract 0.3", w1, parallel[0]),
        (
            "WASM, same sources built against contract 0.2",
            w2,
            parallel[1],
        ),
        (
            "WASM, same sources built against contract 0.1",
            l1,
            parallel[2],
        ),
    ] {
        writeln!(out, "| {name} | {} | {p:.0} | {:.2}× |", us(m), m / n1).unwrap();
    }
    writeln!(
        out,
        "| native baseline | {} | {:.0} | 1.00× |",
        us(n1),
        parallel[3]
    )
    .unwrap();
    writeln!(
        out,
        "| floor: two calls of a trivial component (one host resource lent, 3 method calls, a string back), same engine settings | {} | | {:.2}× |\n",
        us(2.0 * floor_ns),
        2.0 * floor_ns / n1
    )
    .unwrap();
    writeln!(out, "| goal | result | |\n|---|---|---|").unwrap();
    writeln!(
        out,
        "| median ≤ 2.0× native | {:.2}× | {} |",
        w1 / n1,
        verdict(w1 <= n1 * 2.0)
    )
    .unwrap();
    writeln!(
        out,
        "| median ≤ 5 µs per two-plugin decision | {} | {} |",
        us(w1),
        verdict(w1 <= 5000.0)
    )
    .unwrap();
    writeln!(
        out,
        "| ≥ 250,000 decisions/s on 2 cores | {:.0}/s | {} |",
        parallel[0],
        verdict(parallel[0] >= 250_000.0)
    )
    .unwrap();
    writeln!(
        out,
        "| (ratio to the floor of two calls) | {:.2}× | |\n",
        w1 / (2.0 * floor_ns)
    )
    .unwrap();
}

/// Per-plugin time in the audit trace, in a hot loop and through a running gateway.
async fn trace(out: &mut String) {
    let cluster = Cluster::start().await;
    let examples = trustgate_tests::policies::root().join("plugins/examples");
    let cel = std::fs::read_to_string(examples.join("cel-rules/config.toml")).unwrap();
    let cel_entry = format!(
        "[[auth.plugins]]\nbuiltin = \"cel\"\n[auth.plugins.config]\n{}",
        cel.replace("[[rules]]", "[[auth.plugins.config.rules]]")
    );
    let allowlist_entry = "[[auth.plugins]]\nbuiltin = \"allowlist\"\n[[auth.plugins.config.rules]]\neffect = \"deny\"\ncidr = \"192.0.2.0/24\"\n[[auth.plugins.config.rules]]\nnamespace = \"prod-*\"\nroles = [\"worker\"]\n";
    writeln!(
        out,
        "### 1b. The same decision in a running gateway: per-plugin time in the audit trace\n\nMedians, µs. Hot loop: the gateway's loaded chain evaluated 2,000 times in process. Back to back: 300 handshakes (connect → hello-ok → close) over loopback, one after the other. Sporadic: 40 handshakes, one every 250 ms.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| chain | plugin | hot loop | back to back | sporadic | back to back ≤ 1.5× hot | sporadic ≤ 3× hot |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    let row = |out: &mut String, name: &str, plugin: &str, h: f64, b: f64, s: f64| {
        writeln!(
            out,
            "| {name} | {plugin} | {h:.1} | {b:.1} | {s:.1} | {:.2}× {} | {:.2}× {} |",
            b / h,
            verdict(b <= 1.5 * h),
            s / h,
            verdict(s <= 3.0 * h),
        )
        .unwrap();
    };
    let gap = Duration::from_millis(250);
    let floor = bench::native_trace_costs(&cluster, 2_000, 300, 40, gap).await;
    let total = |v: &[f64]| v.iter().sum::<f64>();
    for (i, plugin) in floor.plugins.iter().enumerate() {
        row(
            out,
            "floor: the native chain",
            plugin,
            floor.hot[i],
            floor.back_to_back[i],
            floor.sporadic[i],
        );
    }
    row(
        out,
        "floor: the native chain",
        "whole chain",
        total(&floor.hot),
        total(&floor.back_to_back),
        total(&floor.sporadic),
    );
    for (name, policy) in [
        ("[k8s-sa-trust, allowlist]", allowlist_entry.to_string()),
        ("[k8s-sa-trust, cel-rules example]", cel_entry),
    ] {
        let r =
            bench::trace_costs(&cluster, &bench::trace_chain(&policy), 2_000, 300, 40, gap).await;
        for (i, plugin) in r.plugins.iter().enumerate() {
            row(
                out,
                name,
                plugin,
                r.hot[i],
                r.back_to_back[i],
                r.sporadic[i],
            );
        }
        row(
            out,
            name,
            "whole chain",
            total(&r.hot),
            total(&r.back_to_back),
            total(&r.sporadic),
        );
    }
    writeln!(out).unwrap();
}

/// Concurrent handshaking clients. Latency is queueing-bound (Little's law: clients divided by
/// throughput), so this is the knob that trades p99 against saturation.
const CLIENTS: usize = 32;
/// Interleaved rounds of the handshake benchmark (WASM and native alternate, see `handshake`).
const HANDSHAKE_ROUNDS: usize = 6;

async fn handshake(out: &mut String) {
    let cluster = Cluster::start().await;
    let token = cluster.token();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert(dir.path(), "localhost");
    let kube = format!(
        "[kubernetes]\nkubeconfig = {:?}\nreview_cache_ttl_ms = 3600000\n[limits]\n{}",
        cluster.kubeconfig.display().to_string(),
        bench::LOOPBACK_STORM_LIMITS
    );
    let tls_section = format!(
        "[gateway.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let client_tls =
        trustgate_gateway::tls::client_config(Some(&ca.cert_path(dir.path()))).unwrap();
    writeln!(out, "### 2. Handshake throughput over loopback (connect → hello-ok → close, {CLIENTS} concurrent clients in the same process, warm cache; {HANDSHAKE_ROUNDS} interleaved rounds per chain, each chain first in every other round)\n").unwrap();
    writeln!(
        out,
        "| transport | chain | handshakes | handshakes/s | p50 | p99 |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|").unwrap();
    let mut plain = (0.0, 0.0, Duration::ZERO);
    for tls in [false, true] {
        let sections = if tls {
            format!("{kube}{tls_section}")
        } else {
            kube.clone()
        };
        let gw = trustgate_tests::gateway(&sections, &bench::chain_toml("tokenreview")).await;
        let url = if tls {
            format!("wss://localhost:{}", gw.running.ws_addr.port())
        } else {
            gw.url()
        };
        let client = tls.then(|| client_tls.clone());
        let total = if tls { 5_000 } else { 30_000 };
        let wasm_loaded = trustgate_gateway::LoadedChain {
            chain: gw.running.state.chain(),
            plugins: gw.running.state.plugins(),
        };
        let native_loaded = trustgate_gateway::LoadedChain {
            chain: Arc::new(bench::native_chain(gw.running.kubernetes.clone().unwrap())),
            plugins: wasm_loaded.plugins.clone(),
        };
        // Interleaved rounds, each chain first in every other one: a run of tens of thousands
        // of handshakes drifts (sockets in TIME_WAIT, allocator growth, the VM's neighbours),
        // and measuring one chain wholly after the other charged that drift to the second.
        let (mut w, mut n) = (Vec::new(), Vec::new());
        for round in 0..HANDSHAKE_ROUNDS {
            for wasm_now in [round % 2 == 0, round % 2 == 1] {
                let loaded = if wasm_now {
                    &wasm_loaded
                } else {
                    &native_loaded
                };
                gw.running.state.swap_chain(trustgate_gateway::LoadedChain {
                    chain: loaded.chain.clone(),
                    plugins: loaded.plugins.clone(),
                });
                bench::handshakes(&url, client.clone(), &token, CLIENTS, 200).await; // warm-up
                let r = bench::handshakes(
                    &url,
                    client.clone(),
                    &token,
                    CLIENTS,
                    total / HANDSHAKE_ROUNDS,
                )
                .await;
                if wasm_now { w.push(r) } else { n.push(r) }
            }
        }
        gw.running.state.swap_chain(wasm_loaded);
        let (w, n) = (
            bench::HandshakeReport::merge(&w),
            bench::HandshakeReport::merge(&n),
        );
        let t = if tls { "TLS (wss)" } else { "plain (ws)" };
        for (name, r) in [("WASM", &w), ("native", &n)] {
            writeln!(
                out,
                "| {t} | {name} | {} | {:.0} | {} | {} |",
                r.handshakes,
                r.per_second,
                ms(r.p50),
                ms(r.p99)
            )
            .unwrap();
        }
        if !tls {
            plain = (w.per_second, n.per_second, w.p99);
        }
    }
    let (w, n, p99) = plain;
    writeln!(out, "\n| goal (plain ws) | result | |\n|---|---|---|").unwrap();
    writeln!(
        out,
        "| ≥ 5,000 handshakes/s on 2 cores | {w:.0}/s | {} |",
        verdict(w >= 5000.0)
    )
    .unwrap();
    writeln!(
        out,
        "| p99 < 10 ms | {} | {} |",
        ms(p99),
        verdict(p99 < Duration::from_millis(10))
    )
    .unwrap();
    writeln!(
        out,
        "| WASM within 5% of native | {:.1}% slower | {} |\n",
        (1.0 - w / n) * 100.0,
        verdict(w >= n * 0.95)
    )
    .unwrap();
}

async fn storm(out: &mut String) {
    writeln!(
        out,
        "### 3. Join storm: 1,000 workers, 100 distinct tokens, 20 ms injected review latency\n"
    )
    .unwrap();
    writeln!(
        out,
        "| mode | all connected after | TokenReview calls | JWKS fetches |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    let mut results = Vec::new();
    for mode in ["tokenreview", "jwks"] {
        let cluster = Cluster::start().await;
        cluster.api.set_latency(Duration::from_millis(20));
        let tokens: Vec<String> = (0..100).map(|_| cluster.token()).collect();
        let sections = format!(
            "[kubernetes]\nkubeconfig = {:?}\n[limits]\n{}",
            cluster.kubeconfig.display().to_string(),
            bench::LOOPBACK_STORM_LIMITS
        );
        let gw = trustgate_tests::gateway(&sections, &bench::chain_toml(mode)).await;
        let (elapsed, clients) = bench::join_storm(&gw.url(), &tokens, 1000).await;
        assert_eq!(clients.len(), 1000);
        let reviews = cluster.api.token_reviews();
        let jwks = cluster.api.jwks_fetches();
        writeln!(out, "| {mode} | {} | {reviews} | {jwks} |", ms(elapsed)).unwrap();
        results.push((mode, elapsed, reviews));
    }
    writeln!(out, "\n| goal | result | |\n|---|---|---|").unwrap();
    let (_, t, r) = results[0];
    writeln!(
        out,
        "| exactly 100 TokenReview calls | {r} | {} |",
        verdict(r == 100)
    )
    .unwrap();
    writeln!(
        out,
        "| all connected in < 2 s | {} | {} |",
        ms(t),
        verdict(t < Duration::from_secs(2))
    )
    .unwrap();
    let (_, _, r) = results[1];
    writeln!(
        out,
        "| jwks mode: 0 review calls | {r} | {} |\n",
        verdict(r == 0)
    )
    .unwrap();
}

async fn idle(out: &mut String, sessions: usize) {
    // The product default (15 s) decides the goal; a faster tick shows the cost per tick.
    for (tick_ms, window_s) in [(15_000, 30), (5_000, 15)] {
        idle_with(out, sessions, tick_ms, Duration::from_secs(window_s)).await;
    }
}

async fn idle_with(out: &mut String, sessions: usize, tick_ms: u64, window: Duration) {
    use std::io::BufRead;
    let cluster = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n[admin]\nlisten = \"127.0.0.1:0\"\n[limits]\n{}tick_interval_ms = {tick_ms}\n[kubernetes]\nkubeconfig = {:?}\nreview_cache_ttl_ms = 3600000\n{}",
            dir.path().display().to_string(),
            bench::LOOPBACK_STORM_LIMITS,
            cluster.kubeconfig.display().to_string(),
            bench::chain_toml("tokenreview")
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("__idle-gateway")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let l = lines.next().expect("gateway exited").unwrap();
        if let Some(u) = l.strip_prefix("READY ") {
            break u.to_string();
        }
    };
    let tokens: Vec<String> = (0..100).map(|_| cluster.token()).collect();
    // settle the process (allocator, plugin instances) with a few sessions first
    let (_, warm) = bench::join_storm(&url, &tokens, 100).await;
    drop(warm);
    let rss_before = proc_rss_kib(pid);
    let mut clients = Vec::with_capacity(sessions);
    let started = Instant::now();
    for chunk in 0..sessions.div_ceil(500) {
        let n = 500.min(sessions - chunk * 500);
        let (_, mut c) = bench::join_storm(&url, &tokens, n).await;
        clients.append(&mut c);
    }
    let connect_time = started.elapsed();
    // A measurement, not synchronization: give the connection bursts' transient buffers two
    // seconds to be released before reading the resident set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = proc_rss_kib(pid);
    let ticks_hz = 100.0; // USER_HZ on Linux
    let cpu0 = proc_cpu_ticks(pid);
    tokio::time::sleep(window).await; // idle measurement window: the gateway only ticks
    let cpu1 = proc_cpu_ticks(pid);
    let cpu_pct = (cpu1 - cpu0) as f64 / ticks_hz / window.as_secs_f64() * 100.0;
    let per_session_kib = (rss_after.saturating_sub(rss_before)) as f64 / sessions as f64;
    drop(clients);
    let _ = child.kill();
    let _ = child.wait();
    let default = if tick_ms == 15_000 {
        " (the default)"
    } else {
        ""
    };
    writeln!(out, "### 4. Idle sessions: {sessions} connected workers, ticks every {} s{default}, gateway in its own process\n", tick_ms / 1000).unwrap();
    writeln!(out, "| measure | value |\n|---|---|").unwrap();
    writeln!(
        out,
        "| connecting all sessions took | {} |",
        ms(connect_time)
    )
    .unwrap();
    writeln!(
        out,
        "| gateway RSS before / after | {:.1} MiB / {:.1} MiB |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    )
    .unwrap();
    writeln!(out, "| RSS per session | {per_session_kib:.1} KiB |").unwrap();
    writeln!(
        out,
        "| gateway CPU while idle ({}-s window) | {cpu_pct:.2}% of one core |\n",
        window.as_secs()
    )
    .unwrap();
    writeln!(out, "| goal | result | |\n|---|---|---|").unwrap();
    writeln!(
        out,
        "| ≤ 32 KiB per session | {per_session_kib:.1} KiB | {} |",
        verdict(per_session_kib <= 32.0)
    )
    .unwrap();
    writeln!(
        out,
        "| ≤ 5% of one core | {cpu_pct:.2}% | {} |\n",
        verdict(cpu_pct <= 5.0)
    )
    .unwrap();
}

fn load(out: &mut String) {
    writeln!(
        out,
        "### 5. Plugin load (compile once, then from the on-disk cache)\n"
    )
    .unwrap();
    writeln!(
        out,
        "| plugin | component size | cold compile | cached load (median of 21) | goal ≤ 10 ms |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for name in ["allowlist", "k8s-sa-trust"] {
        let r = bench::plugin_load(name, 21);
        writeln!(
            out,
            "| {} | {} KiB | {} | {} | {} |",
            r.plugin,
            r.size / 1024,
            ms(r.cold),
            ms(r.cached),
            verdict(r.cached <= Duration::from_millis(10))
        )
        .unwrap();
    }
    writeln!(out).unwrap();
}

async fn languages(out: &mut String) {
    writeln!(
        out,
        "### 6. Policies without Rust: one policy decision, per language\n\nEach policy lets a prod-a worker with an established identity through (a `permit`) after evaluating all its conditions; one instance, one thread. Each language's floor is an empty policy in it (it only answers `permit`: `tests/floors/`, CEL: one rule `true`), measured in the same run.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| policy | component | cold compile | cached load (median of 5) | memory per instance | per call (median) | goal per call | cached load ≤ 50 ms |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|").unwrap();
    let floor_policies = bench::floor_policies();
    let mut floors = std::collections::HashMap::new();
    for (name, bytes, config) in bench::example_policies() {
        let lang = name.split(':').next().unwrap_or("");
        // The floor measured right before and right after its example, the lower kept: a
        // slow spell of this shared machine lands on both.
        let floor = floor_policies.iter().find(|(l, _, _)| *l == lang);
        let mut floor_ns = f64::INFINITY;
        if let Some((l, b, c)) = floor {
            floor_ns = bench::policy_costs(l, b, c.clone(), 1, 21, 500)
                .await
                .per_call_ns;
        }
        let r = bench::policy_costs(name, &bytes, config, 5, 21, 500).await;
        if let Some((l, b, c)) = floor {
            let again = bench::policy_costs(l, b, c.clone(), 1, 21, 500)
                .await
                .per_call_ns;
            floors.insert(*l, floor_ns.min(again));
        }
        let goal_us = match lang {
            "CEL" => Some(5.0),
            "Python" => Some(15.0),
            "JavaScript" => Some(60.0),
            _ => None,
        };
        let goal = match (goal_us, floors.get(lang)) {
            (Some(g), Some(floor)) => {
                let met = r.per_call_ns <= g * 1000.0;
                let ratio = r.per_call_ns / floor;
                format!(
                    "≤ {g} µs: {}; or ≤ 1.5× the floor ({}): {ratio:.2}× {}",
                    verdict(met),
                    us(*floor),
                    verdict(ratio <= 1.5)
                )
            }
            _ => "(reference)".into(),
        };
        writeln!(
            out,
            "| {name} | {:.1} MiB | {} | {} | {:.1} MiB | {} | {goal} | {} |",
            r.size as f64 / (1024.0 * 1024.0),
            ms(r.cold),
            ms(r.cached_load),
            r.memory as f64 / (1024.0 * 1024.0),
            us(r.per_call_ns),
            verdict(r.cached_load <= Duration::from_millis(50)),
        )
        .unwrap();
    }
    for (lang, floor) in [
        ("CEL", "one rule `true`"),
        ("Python", "tests/floors/python-empty"),
        ("JavaScript", "tests/floors/js-empty"),
    ] {
        if let Some(ns) = floors.get(lang) {
            writeln!(
                out,
                "| floor: {lang}, an empty policy ({floor}) | | | | | {} | | |",
                us(*ns)
            )
            .unwrap();
        }
    }
    writeln!(out).unwrap();
}

async fn profile_load(which: &str, runs: usize) {
    let (name, bytes, config) = bench::example_policies()
        .into_iter()
        .find(|(n, _, _)| n.to_lowercase().starts_with(which))
        .expect("python, javascript, cel or rust");
    let r = bench::policy_costs(name, &bytes, config.clone(), runs, 1, 1).await;
    println!("{name}: cached load {:?} (median of {runs})", r.cached_load);
    let dir = tempfile::tempdir().unwrap();
    let settings = trustgate_runtime::RuntimeSettings {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let services: Arc<dyn trustgate_runtime::HostServices> =
        Arc::new(trustgate_runtime::NoServices::default());
    trustgate_runtime::Runtime::new(settings.clone(), services.clone())
        .unwrap()
        .compile(name, &bytes)
        .unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let _ = trustgate_runtime::sha256_hex(&bytes);
        let hash = t.elapsed();
        let rt = trustgate_runtime::Runtime::new(settings.clone(), services.clone()).unwrap();
        let t = std::time::Instant::now();
        let c = rt.compile(name, &bytes).unwrap();
        let compile = t.elapsed();
        let t = std::time::Instant::now();
        rt.instantiate(name, &c, &config, Default::default())
            .await
            .unwrap();
        let inst = t.elapsed();
        println!(
            "source sha256 {hash:?}, compile (cache hit) {compile:?}, instantiate+configure {inst:?}"
        );
    }
}

async fn idle_gateway(config: &str) {
    let config =
        trustgate_gateway::config::Config::from_file(std::path::Path::new(config)).unwrap();
    let running = trustgate_gateway::start(&config).await.unwrap();
    println!("READY ws://{}", running.ws_addr);
    running.wait().await;
}

async fn profile_decision(secs: u64) {
    let cluster = Cluster::start().await;
    let kube = cluster.kube().await;
    let request = bench::worker_request(&cluster.token());
    // `CONTRACT=0.2` (or `0.1`): the same plugin sources built against an earlier contract.
    let (wasm, _rt) = match std::env::var("CONTRACT").ok().as_deref() {
        None | Some("0.3") => bench::wasm_chain(kube, "tokenreview").await,
        Some(version) => bench::wasm_chain_legacy(kube, "tokenreview", version).await,
    };
    let only_k8s = std::env::var_os("ONLY_K8S").is_some();
    let wasm = if only_k8s {
        trustgate_runtime::Chain::new(vec![wasm.providers()[0].clone()])
    } else {
        wasm
    };
    let until = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < until {
        for _ in 0..1000 {
            std::hint::black_box(
                wasm.evaluate(&request, None, trustgate_runtime::CachePolicy::Use)
                    .await,
            );
        }
        n += 1000;
    }
    eprintln!("{n} decisions");
}

async fn micro() {
    use trustgate_runtime::{AuthProvider, CachePolicy, Call, Chain, Grants, PluginSpec};
    let cluster = Cluster::start().await;
    let kube = cluster.kube().await;
    let request = bench::worker_request(&cluster.token());
    let rt = trustgate_runtime::Runtime::new(
        trustgate_runtime::RuntimeSettings::default(),
        Arc::new(trustgate_gateway::KubeServices(kube.clone())),
    )
    .unwrap();
    let load = |name: &str, source, config| PluginSpec {
        name: name.into(),
        source,
        config,
        grants: Grants::default(),
    };
    let k8s = Arc::new(
        rt.load(&load(
            "k8s",
            bench::builtin("k8s-sa-trust"),
            bench::k8s_config("tokenreview"),
        ))
        .await
        .unwrap(),
    );
    let allow = Arc::new(
        rt.load(&load(
            "allow",
            bench::builtin("allowlist"),
            bench::allowlist_config(),
        ))
        .await
        .unwrap(),
    );
    let abstain = Arc::new(
        rt.load(&load(
            "abstain",
            trustgate_runtime::PluginSource::File {
                path: trustgate_tests::guests::GUEST_SCRIPTED.into(),
                sha256: None,
            },
            serde_json::json!({"decision": "noop"}),
        ))
        .await
        .unwrap(),
    );
    let guest = |config| PluginSpec {
        name: "g".into(),
        source: trustgate_runtime::PluginSource::File {
            path: trustgate_tests::guests::GUEST_SCRIPTED.into(),
            sha256: None,
        },
        config,
        grants: Grants::default(),
    };
    let tls100 = Arc::new(
        rt.load(&guest(
            serde_json::json!({"decision": "calls", "reason": "tls", "size": 100}),
        ))
        .await
        .unwrap(),
    );
    let conn100 = Arc::new(
        rt.load(&guest(
            serde_json::json!({"decision": "calls", "reason": "conn-id", "size": 100}),
        ))
        .await
        .unwrap(),
    );
    let scopes100 = Arc::new(
        rt.load(&guest(
            serde_json::json!({"decision": "calls", "reason": "scopes", "size": 100}),
        ))
        .await
        .unwrap(),
    );
    let cred100 = Arc::new(
        rt.load(&guest(
            serde_json::json!({"decision": "calls", "reason": "credentials", "size": 100}),
        ))
        .await
        .unwrap(),
    );
    let review10 = Arc::new(
        rt.load(&guest(
            serde_json::json!({"decision": "calls", "reason": "review", "size": 10}),
        ))
        .await
        .unwrap(),
    );
    let extra10 = Arc::new(
        rt.load(&guest(
            serde_json::json!({"decision": "calls", "reason": "extra", "size": 10}),
        ))
        .await
        .unwrap(),
    );
    let establish = Arc::new(rt.load(&guest(serde_json::json!({"decision": "calls", "reason": "none", "size": 0, "subject": "establish"}))).await.unwrap());
    let chain = Chain::new(vec![k8s.clone()]);
    let v = chain.evaluate(&request, None, CachePolicy::Use).await;
    let trustgate_runtime::Outcome::Allowed(id) = v.outcome else {
        panic!()
    };
    let with_id = Call {
        request: request.clone(),
        so_far: Some(Arc::new(id)),
        cache: CachePolicy::Use,
        witness: Default::default(),
    };
    let bare = Call {
        request: request.clone(),
        so_far: None,
        cache: CachePolicy::Use,
        witness: Default::default(),
    };
    for (name, p, call) in [
        (
            "abstain (scripted)",
            abstain.clone() as Arc<dyn AuthProvider>,
            &bare,
        ),
        ("allowlist permit", allow.clone(), &with_id),
        ("k8s-sa-trust", k8s.clone(), &bare),
        ("100× tls()", tls100, &bare),
        ("100× conn_id()", conn100, &bare),
        ("100× scopes() (empty list)", scopes100, &bare),
        ("100× credentials()", cred100, &bare),
        ("10× review", review10, &bare),
        ("10× review+3 extra", extra10, &bare),
        ("establish k8s-like identity", establish, &bare),
    ] {
        let mut per = Vec::new();
        for _ in 0..61 {
            let t = Instant::now();
            for _ in 0..500 {
                p.authenticate(call).await.unwrap();
            }
            per.push(t.elapsed().as_nanos() as f64 / 500.0);
        }
        per.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name}: min {:.2} µs, median {:.2} µs",
            per[0] / 1000.0,
            per[30] / 1000.0
        );
    }
    let mut per = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        for _ in 0..2000 {
            std::hint::black_box(
                kube.review(
                    request.credentials.token.as_deref().unwrap(),
                    &[bench::AUDIENCE.to_string()],
                    trustgate_k8s::CacheMode::Use,
                )
                .await
                .unwrap(),
            );
        }
        per.push(t.elapsed().as_nanos() as f64 / 2000.0);
    }
    per.sort_by(|a, b| a.total_cmp(b));
    println!("kube.review (cache hit): {:.2} µs", per[10] / 1000.0);
}

/// What `count` calls: the two-plugin chain, its plugins, the native chain, the floor.
struct CountFixture {
    _cluster: Cluster,
    _rt: trustgate_runtime::Runtime,
    wasm: trustgate_runtime::Chain,
    native: trustgate_runtime::Chain,
    request: Arc<trustgate_runtime::Request>,
    bare: trustgate_runtime::Call,
    with_id: trustgate_runtime::Call,
    floor: tokio::sync::Mutex<trustgate_tests::floor::Floor>,
}

async fn count_fixture() -> CountFixture {
    use trustgate_runtime::{CachePolicy, Call};
    let cluster = Cluster::start().await;
    let kube = cluster.kube().await;
    let request = bench::worker_request(&cluster.token());
    let (wasm, rt) = bench::wasm_chain(kube.clone(), "tokenreview").await;
    let native = bench::native_chain(kube);
    let v = wasm.evaluate(&request, None, CachePolicy::Use).await;
    let trustgate_runtime::Outcome::Allowed(id) = v.outcome else {
        panic!("{:?}", v.outcome)
    };
    let bare = Call {
        request: request.clone(),
        so_far: None,
        cache: CachePolicy::Use,
        witness: Default::default(),
    };
    let with_id = Call {
        so_far: Some(Arc::new(id)),
        ..bare.clone()
    };
    let mut floor =
        trustgate_tests::floor::Floor::new(rt.engine(), trustgate_tests::guests::GUEST_FLOOR).await;
    for _ in 0..50 {
        wasm.evaluate(&request, None, CachePolicy::Use).await;
        native.evaluate(&request, None, CachePolicy::Use).await;
        floor.call(trustgate_tests::floor::Op::Three).await;
    }
    CountFixture {
        _cluster: cluster,
        _rt: rt,
        wasm,
        native,
        request,
        bare,
        with_id,
        floor: tokio::sync::Mutex::new(floor),
    }
}

/// The measured part of `count` (`valgrind --tool=callgrind --toggle-collect=*counted_loop*`).
#[inline(never)]
fn counted_loop(rt: &tokio::runtime::Runtime, f: &CountFixture, what: &str, n: usize) {
    use trustgate_runtime::CachePolicy;
    rt.block_on(async {
        let (k8s, allow) = (&f.wasm.providers()[0], &f.wasm.providers()[1]);
        let mut floor = f.floor.lock().await;
        for _ in 0..n {
            match what {
                "k8s" => drop(k8s.authenticate(&f.bare).await),
                "allowlist" => drop(allow.authenticate(&f.with_id).await),
                "native" => drop(f.native.evaluate(&f.request, None, CachePolicy::Use).await),
                "floor" => floor.call(trustgate_tests::floor::Op::Three).await,
                _ => drop(f.wasm.evaluate(&f.request, None, CachePolicy::Use).await),
            }
        }
    });
}

/// Where a sporadic call's time goes (design work): the chain in process, per-plugin medians
/// after different kinds of gap.
async fn sporadic_probe() {
    use trustgate_runtime::CachePolicy;
    let cluster = Cluster::start().await;
    let kube = cluster.kube().await;
    let request = bench::worker_request(&cluster.token());
    let (wasm, _rt) = bench::wasm_chain(kube.clone(), "tokenreview").await;
    let native = bench::native_chain(kube);
    for _ in 0..200 {
        wasm.evaluate(&request, None, CachePolicy::Use).await;
    }
    let mut junk = vec![0u8; 32 << 20];
    for (name, chain) in [("wasm", &wasm), ("native", &native)] {
        for gap in ["none", "flush", "spin", "sleep"] {
            let mut per: Vec<Vec<f64>> = vec![Vec::new(); 2];
            for i in 0..30 {
                match gap {
                    "flush" => {
                        for b in junk.iter_mut().step_by(64) {
                            *b = b.wrapping_add(i as u8);
                        }
                    }
                    "spin" => {
                        let until = Instant::now() + Duration::from_millis(250);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    }
                    "sleep" => tokio::time::sleep(Duration::from_millis(250)).await,
                    _ => {}
                }
                let v = chain.evaluate(&request, None, CachePolicy::Use).await;
                for (j, s) in v.steps.iter().enumerate() {
                    per[j].push(s.elapsed.as_nanos() as f64 / 1000.0);
                }
            }
            let med = |mut v: Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let m: Vec<f64> = per.into_iter().map(med).collect();
            println!("{name} gap={gap}: {:.1} / {:.1} µs", m[0], m[1]);
        }
    }
    std::hint::black_box(junk);
}

/// What each shape of crossing costs on the runtime's engine (for design work, not BENCHMARKS.md).
async fn floor_micro() {
    use trustgate_tests::floor::{Floor, Op};
    let rt = trustgate_tests::runtime(trustgate_runtime::RuntimeSettings::default());
    let mut floor = Floor::new(rt.engine(), trustgate_tests::guests::GUEST_FLOOR).await;
    for op in [
        Op::Noop,
        Op::Lend,
        Op::Three,
        Op::Take,
        Op::Give(0),
        Op::Give(1),
        Op::Give(18),
        Op::Churn(0),
        Op::Churn(20),
        Op::Fetch(0),
        Op::Fetch(1),
        Op::Fetch(12),
        Op::FetchRecord,
        Op::Async,
    ] {
        let ns = floor.median_ns(op, 31, 2000).await;
        println!("{op:?}: {ns:.0} ns");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.first().map(String::as_str) == Some("__idle-gateway") {
        rt.block_on(idle_gateway(&args[1]));
        return;
    }
    if args.first().map(String::as_str) == Some("micro") {
        rt.block_on(micro());
        return;
    }
    if args.first().map(String::as_str) == Some("count") {
        // For `valgrind --tool=callgrind`: `count WHAT N` makes N calls of one thing (`k8s`,
        // `allowlist`, `chain`, `native`, `floor`) after a warm-up; run it with N and 2N and
        // divide the difference of the instruction counts by N.
        let what = args.get(1).cloned().unwrap_or_else(|| "chain".into());
        let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
        let fixture = rt.block_on(count_fixture());
        counted_loop(&rt, &fixture, &what, n);
        return;
    }
    if args.first().map(String::as_str) == Some("sporadic-probe") {
        rt.block_on(sporadic_probe());
        return;
    }
    if args.first().map(String::as_str) == Some("floor-micro") {
        rt.block_on(floor_micro());
        return;
    }
    if args.first().map(String::as_str) == Some("profile-load") {
        // For `perf record`: cached loads of one example policy (`python`, `js`, `cel`).
        let which = args.get(1).cloned().unwrap_or_else(|| "python".into());
        let runs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
        rt.block_on(profile_load(&which, runs));
        return;
    }
    if args.first().map(String::as_str) == Some("profile-decision") {
        // For `perf record`: the two-plugin chain (contract 0.3, or `CONTRACT=0.2`/`0.1`), one
        // thread, for the given seconds.
        let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
        rt.block_on(profile_decision(secs));
        return;
    }
    let which = args.first().cloned().unwrap_or_else(|| "all".into());
    let write = args
        .iter()
        .position(|a| a == "--write")
        .and_then(|i| args.get(i + 1).cloned());
    let sessions = args
        .iter()
        .position(|a| a == "--sessions")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut out = String::new();
    writeln!(out, "Machine: {}. Date: {}. Command: `cargo run --release -p trustgate-tests --bin bench -- {}`.\n", machine(), today(), args.join(" ")).unwrap();
    rt.block_on(async {
        if matches!(which.as_str(), "all" | "decision") {
            decision(&mut out).await;
        }
        if matches!(which.as_str(), "all" | "trace") {
            trace(&mut out).await;
        }
        if matches!(which.as_str(), "all" | "handshake") {
            handshake(&mut out).await;
        }
        if matches!(which.as_str(), "all" | "storm") {
            storm(&mut out).await;
        }
        if matches!(which.as_str(), "all" | "idle") {
            idle(&mut out, sessions).await;
        }
        if matches!(which.as_str(), "all" | "languages") {
            languages(&mut out).await;
        }
        if matches!(which.as_str(), "all" | "cluster") {
            cluster(&mut out).await;
        }
        if matches!(which.as_str(), "all" | "abuse") {
            abuse(&mut out).await;
        }
    });
    if matches!(which.as_str(), "all" | "load") {
        load(&mut out);
    }
    print!("{out}");
    if let Some(path) = write {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let (begin, end) = ("<!-- results:begin -->", "<!-- results:end -->");
        let updated = match (text.find(begin), text.find(end)) {
            (Some(b), Some(e)) if b < e => format!("{}{begin}\n{out}{}", &text[..b], &text[e..]),
            _ => format!("{text}\n{begin}\n{out}{end}\n"),
        };
        std::fs::write(&path, updated).unwrap();
        eprintln!("results written to {path}");
    }
}

/// The cluster scenario's chain: operators by password, workers by token; devices pair.
fn cluster_chain() -> String {
    trustgate_tests::scripted(
        "operators",
        r#"decision = "allow", method = "operator-password", token = "s3cret", subject = "ops", roles = ["operator"], skip_pairing = true"#,
    ) + &trustgate_tests::scripted(
        "workers",
        r#"decision = "allow", method = "k8s-sa-trust", token = "good", subject = "system:serviceaccount:w:runner", roles = ["worker"], skip_pairing = true"#,
    )
}

async fn cluster_operator(url: &str) -> WsClient {
    let mut c = WsClient::open(url).await;
    let res = c
        .connect(connect_params(
            "operator",
            Some(json!({"method": "operator-password", "token": "s3cret"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    c
}

/// Pairs a fresh device through `gw`'s admin API; returns its key and the request's approval
/// acknowledgement time.
async fn pair_device(gw: &trustgate_tests::TestGateway) -> (DeviceKey, Instant) {
    let key = DeviceKey::generate();
    let mut c = WsClient::open(&gw.url()).await;
    let nonce = c.nonce.clone();
    let res = c
        .connect(connect_params("worker", None, Some((&key, &nonce))))
        .await;
    let rid = res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = Instant::now();
    let status = reqwest::Client::new()
        .post(format!("{}/api/pairing/{rid}/approve", gw.admin_url()))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    (key, sent)
}

async fn cluster(out: &mut String) {
    use trustgate_tests::nats::NatsServer;
    writeln!(
        out,
        "### 7. Several replicas on NATS (one `nats-server -js` on loopback, three gateways in this process)\n"
    )
    .unwrap();
    let nats = NatsServer::start();
    let replica = |id: &'static str| {
        let section = format!(
            "[cluster]\nbackend = \"nats\"\nservers = [{:?}]\nreplica_id = {id:?}\n[pairing]\nmax_pending_per_address = 256\n[limits]\n{}",
            nats.url(),
            bench::LOOPBACK_STORM_LIMITS
        );
        async move {
            let gw = trustgate_tests::gateway(&section, &cluster_chain()).await;
            gw.running.state.cluster_synced().await;
            gw
        }
    };
    let a = replica("a").await;
    let b = replica("b").await;
    let c = replica("c").await;

    // worker.invoke: a worker on a, invoked by an operator on a and by one on b.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "good").unwrap();
    let mut options = trustgate::worker::WorkerOptions::new(a.url());
    options.k8s_trust = true;
    options.token_path = token;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (events, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let worker = tokio::spawn(trustgate::worker::run(options, stopped, Some(events)));
    let worker_id = loop {
        if let trustgate::worker::WorkerEvent::Connected(h) = connected.recv().await.unwrap() {
            break h.server.conn_id;
        }
    };
    let mut same = cluster_operator(&a.url()).await;
    let mut cross = cluster_operator(&b.url()).await;
    loop {
        // b must list the worker before it can route to it
        let res = cross.request("l", "workers.list", json!({})).await;
        if res["payload"]["workers"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writeln!(
        out,
        "`worker.invoke` of `echo`, 2,000 sequential calls after 200 to warm up:\n"
    )
    .unwrap();
    writeln!(out, "| operator on | p50 | p99 | max |").unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    let mut p99s = Vec::new();
    for (label, op) in [
        ("the worker's replica", &mut same),
        ("another replica (routed over NATS)", &mut cross),
    ] {
        let mut lat = Vec::new();
        for i in 0..2200 {
            let t = Instant::now();
            let res = op
                .request(
                    &format!("i{i}"),
                    "worker.invoke",
                    json!({"workerId": worker_id, "command": "echo", "args": {"i": i}}),
                )
                .await;
            assert_eq!(res["payload"]["ok"], true, "{res}");
            if i >= 200 {
                lat.push(t.elapsed());
            }
        }
        lat.sort();
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        p99s.push(p(0.99));
        writeln!(
            out,
            "| {label} | {} | {} | {} |",
            ms(p(0.5)),
            ms(p(0.99)),
            ms(lat[lat.len() - 1])
        )
        .unwrap();
    }
    let added_ms = (p99s[1].as_secs_f64() - p99s[0].as_secs_f64()) * 1000.0;
    writeln!(
        out,
        "\nCross-replica adds {added_ms:+.2} ms at p99 (goal ≤ 2 ms: {}).\n",
        verdict(added_ms <= 2.0)
    )
    .unwrap();
    stop.send(true).unwrap();
    let _ = worker.await;

    // An approval on a, until b and c have it in their copies.
    let mut visible = Vec::new();
    for _ in 0..50 {
        let (key, sent) = pair_device(&a).await;
        loop {
            let everywhere = [&b, &c]
                .iter()
                .all(|gw| gw.running.state.pairing().device(&key.id()).is_some());
            if everywhere {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        visible.push(sent.elapsed());
    }
    visible.sort();
    writeln!(
        out,
        "Approval (admin API on a) until the device is in b's and c's copies, 50 approvals: p50 {}, p99 {}, max {} (goal ≤ 100 ms: {}).\n",
        ms(visible[24]),
        ms(visible[48]),
        ms(visible[49]),
        verdict(visible[49] <= Duration::from_millis(100))
    )
    .unwrap();

    // Device-token handshakes: nats vs file.
    let file = trustgate_tests::gateway(
        &format!("[limits]\n{}", bench::LOOPBACK_STORM_LIMITS),
        &cluster_chain(),
    )
    .await;
    writeln!(out, "Device-token handshakes (connect → hello-ok → close), 8 concurrent clients, 2,000 handshakes:\n").unwrap();
    writeln!(out, "| backend | handshakes/s | p50 | p99 |").unwrap();
    writeln!(out, "|---|---|---|---|").unwrap();
    for (label, gw) in [("file", &file), ("nats", &a)] {
        let (key, _) = pair_device(gw).await;
        let mut s = WsClient::open(&gw.url()).await;
        let nonce = s.nonce.clone();
        let res = s
            .connect(connect_params("worker", None, Some((&key, &nonce))))
            .await;
        let token = res["payload"]["auth"]["deviceToken"]
            .as_str()
            .unwrap()
            .to_string();
        let auth = json!({"method": "device-token", "deviceToken": token});
        let _ = bench::handshakes_with(&gw.url(), None, &auth, 8, 200).await;
        let r = bench::handshakes_with(&gw.url(), None, &auth, 8, 2000).await;
        writeln!(
            out,
            "| {label} | {:.0} | {} | {} |",
            r.per_second,
            ms(r.p50),
            ms(r.p99)
        )
        .unwrap();
    }
    writeln!(out).unwrap();
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// One honest handshake from 127.0.0.1: open, `connect` → `hello-ok`, close. Its latency.
async fn honest_handshake(url: &str) -> Duration {
    let started = Instant::now();
    let mut c = WsClient::open_from(url, "127.0.0.1".parse().unwrap()).await;
    let res = c
        .connect(connect_params(
            "worker",
            Some(json!({"method": "token", "token": "good"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true, "{res}");
    let took = started.elapsed();
    drop(c);
    took
}

/// The attackers of the abuse scenario, each from its own loopback address until `stop`:
/// sockets held open without a word (127.0.0.2–5) and handshakes with a bad token as fast as
/// they are answered (127.0.0.6–9).
fn attackers(url: &str, stop: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinSet<u64> {
    use futures::SinkExt;
    let mut set = tokio::task::JoinSet::new();
    for i in 2..=5u8 {
        let (url, stop) = (url.to_string(), stop.clone());
        set.spawn(async move {
            let local: std::net::IpAddr = format!("127.0.0.{i}").parse().unwrap();
            let mut held = Vec::new();
            let mut opened = 0u64;
            while !*stop.borrow() {
                let stream = trustgate_tests::client::tcp_from(&url, local).await;
                if let Ok((ws, _)) = tokio_tungstenite::client_async(url.as_str(), stream).await {
                    held.push(ws);
                    opened += 1;
                }
                if held.len() >= 64 {
                    held.remove(0); // the gateway closed the oldest at its deadline anyway
                }
                tokio::task::yield_now().await;
            }
            opened
        });
    }
    for i in 6..=9u8 {
        let (url, stop) = (url.to_string(), stop.clone());
        set.spawn(async move {
            let local: std::net::IpAddr = format!("127.0.0.{i}").parse().unwrap();
            let mut sent = 0u64;
            while !*stop.borrow() {
                let stream = trustgate_tests::client::tcp_from(&url, local).await;
                let Ok((mut ws, _)) = tokio_tungstenite::client_async(url.as_str(), stream).await
                else {
                    continue;
                };
                let connect = json!({"type": "req", "id": "x", "method": "connect", "params": connect_params("worker", Some(json!({"method": "token", "token": "bad"})), None)});
                let _ = ws
                    .send(tokio_tungstenite::tungstenite::Message::text(connect.to_string()))
                    .await;
                // Wait for the answer or the close, whichever the gateway gives.
                let _ = futures::StreamExt::next(&mut ws).await;
                let _ = futures::StreamExt::next(&mut ws).await;
                sent += 1;
            }
            sent
        });
    }
    set
}

/// Honest clients' handshake latency alone and while hostile addresses hold sockets open and
/// hammer the gateway with bad credentials (the pre-auth budget and the failed-handshake
/// throttle at their defaults).
async fn abuse(out: &mut String) {
    const N: usize = 400;
    let gw = trustgate_tests::gateway(
        "[audit]\noutput = \"off\"\n",
        &trustgate_tests::scripted(
            "authn",
            r#"decision = "allow", method = "token", token = "good", subject = "w", roles = ["worker"], skip_pairing = true"#,
        ),
    )
    .await;
    let url = gw.url();
    let quantiles = |mut v: Vec<Duration>| {
        v.sort();
        (v[v.len() / 2], v[v.len() * 99 / 100])
    };
    for _ in 0..50 {
        honest_handshake(&url).await;
    }
    let mut calm = Vec::with_capacity(N);
    for _ in 0..N {
        calm.push(honest_handshake(&url).await);
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut set = attackers(&url, stop);
    // Let the attack reach its steady state: every hostile address at its caps.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut under = Vec::with_capacity(N);
    for _ in 0..N {
        under.push(honest_handshake(&url).await);
    }
    stop_tx.send_replace(true);
    let mut attacks = 0;
    while let Some(Ok(n)) = set.join_next().await {
        attacks += n;
    }
    let ((c50, c99), (u50, u99)) = (quantiles(calm), quantiles(under));
    writeln!(
        out,
        "### 8. Honest clients under abuse ({N} sequential honest handshakes from 127.0.0.1; attackers on 127.0.0.2–9 in the same process: 4 addresses holding sockets open, 4 sending bad tokens; {attacks} hostile sockets and handshakes during the run; default limits)\n"
    )
    .unwrap();
    writeln!(out, "| honest handshakes | p50 | p99 |\n|---|---|---|").unwrap();
    writeln!(out, "| alone | {} | {} |", ms(c50), ms(c99)).unwrap();
    writeln!(out, "| under abuse | {} | {} |", ms(u50), ms(u99)).unwrap();
    // No goal here: the attackers run on the same two cores as the gateway, so the ratio mixes
    // the gateway's defences with plain CPU contention. BENCHMARKS.md compares it across builds.
    writeln!(
        out,
        "\nhonest p50 under abuse / alone: {:.2}×; p99: {:.2}×.\n",
        u50.as_secs_f64() / c50.as_secs_f64(),
        u99.as_secs_f64() / c99.as_secs_f64()
    )
    .unwrap();
    gw.running.shutdown().await;
}
