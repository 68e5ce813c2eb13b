//! The `trustgate serve` and `trustgate devices` binaries as an operator runs them, including a
//! SIGKILL in the middle of approvals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use trustgate_protocol::now_ms;
use trustgate_protocol::{DeviceKey, Role};

struct Gateway {
    child: Child,
    ws: String,
    admin: String,
}

/// Starts `trustgate serve` on ephemeral ports and reads its bound addresses from stderr.
fn serve(config: &Path) -> Gateway {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["serve", "--config"])
        .arg(config)
        .env("TRUSTGATE_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn trustgate serve");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let line = loop {
        let line = lines
            .next()
            .expect("trustgate serve exited before listening")
            .unwrap();
        if line.contains(" serving ") {
            break line;
        }
    };
    // keep draining stderr so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    let ws = line
        .split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap()
        .to_string();
    let admin = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    Gateway { child, ws, admin }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("trustgate.toml");
    let default = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_trustgate"))
            .args(["config", "default"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // Every test device connects from 127.0.0.1: lift the per-address budgets that exist to
    // stop one hostile address, or the fortieth pairing request would be rate limited.
    let text = default
        .replace("127.0.0.1:7400", "127.0.0.1:0")
        .replace("127.0.0.1:7401", "127.0.0.1:0")
        .replace(
            "# max_pending_per_address = 4 ",
            "max_pending_per_address = 256 ",
        )
        .replace(
            "failed_handshake_burst = 20",
            "failed_handshake_burst = 1000",
        );
    assert!(
        text.contains("\nmax_pending_per_address = 256 ")
            && text.contains("failed_handshake_burst = 1000")
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Connects a device as a worker; returns the `connect` response.
async fn device_connect(url: &str, key: &DeviceKey) -> Value {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let nonce = loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["event"] == "connect.challenge" {
                break v["payload"]["nonce"].as_str().unwrap().to_string();
            }
        }
    };
    let proof = key.prove("crash-test", Role::Worker, &[], &nonce, now_ms());
    let connect = json!({"type":"req","id":"c","method":"connect","params":{
        "minProtocol":1,"maxProtocol":1,"client":{"id":"crash-test","version":"1"},
        "role":"worker","device":proof}});
    ws.send(Message::text(connect.to_string())).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "res" {
                    return v;
                }
            }
            other => panic!("no response: {other:?}"),
        }
    }
}

fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("trustgate-state/admin-token"))
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_approvals_never_loses_an_approved_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut gw = serve(&config);
    let keys: Vec<DeviceKey> = (0..40).map(|_| DeviceKey::generate()).collect();
    let mut requests = Vec::new();
    for key in &keys {
        let res = device_connect(&gw.ws, key).await;
        assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
        requests.push(
            res["error"]["details"]["requestId"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }

    // Approve all concurrently; kill the gateway as soon as a dozen have been acknowledged,
    // while the rest are in flight.
    let token = admin_token(dir.path());
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, rid) in requests.iter().enumerate() {
        let url = format!("{}/api/pairing/{rid}/approve", gw.admin);
        let token = token.clone();
        let acked = acked_tx.clone();
        tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .send()
                .await;
            if let Ok(r) = res
                && r.status() == 200
            {
                let _ = acked.send(i);
            }
        });
    }
    drop(acked_tx);
    let mut acknowledged = Vec::new();
    while let Some(i) = acked_rx.recv().await {
        acknowledged.push(i);
        if acknowledged.len() == 12 {
            gw.child.kill().unwrap(); // SIGKILL
            break;
        }
    }
    // Approvals acknowledged between the kill signal and the process's death count too.
    while let Ok(i) = acked_rx.try_recv() {
        acknowledged.push(i);
    }
    gw.child.wait().unwrap();
    assert!(acknowledged.len() >= 12);

    // The store is intact and every acknowledged approval survived.
    let store: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("trustgate-state/pairing.json")).unwrap(),
    )
    .expect("the pairing store parses after SIGKILL");
    assert!(store["devices"].as_array().unwrap().len() >= acknowledged.len());
    let mut gw = serve(&config);
    for i in &acknowledged {
        let res = device_connect(&gw.ws, &keys[*i]).await;
        assert_eq!(
            res["ok"], true,
            "device {i} approved before the kill was lost: {res}"
        );
        assert_eq!(res["payload"]["auth"]["pairing"], "paired");
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_cli_lists_and_approves_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut gw = serve(&config);
    let key = DeviceKey::generate();
    let res = device_connect(&gw.ws, &key).await;
    let rid = res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();

    let cli = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trustgate"));
        cmd.arg("devices")
            .args(args)
            .arg("--admin")
            .arg(&gw.admin)
            .arg("--token-file")
            .arg(dir.path().join("trustgate-state/admin-token"));
        cmd.output().unwrap()
    };
    let list = cli(&["list"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(out.contains("pending requests: 1"), "{out}");
    assert!(out.contains(&rid) && out.contains(&key.id()), "{out}");

    let approve = cli(&["approve", &rid]);
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&approve.stdout).trim(),
        format!("approved {rid}")
    );
    let again = cli(&["approve", &rid]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("404"));

    let res = device_connect(&gw.ws, &key).await;
    assert_eq!(res["payload"]["auth"]["pairing"], "paired", "{res}");

    // the same CLI, finding address and token through --config
    let list = Command::new(env!("CARGO_BIN_EXE_trustgate"))
        .args(["devices", "list", "--admin", &gw.admin, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(out.contains("approved devices: 1"), "{out}");
    assert!(
        out.contains(&key.id()) && out.contains("by admin-token") && out.contains("tokens 1"),
        "{out}"
    );

    // Revoked from the command line: listed no more, and the device must pair again.
    let revoke = cli(&["revoke", &key.id()]);
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&revoke.stdout).trim(),
        format!("revoked {} (0 live sessions closed)", key.id())
    );
    let out = String::from_utf8_lossy(&cli(&["list"]).stdout).to_string();
    assert!(out.contains("approved devices: 0"), "{out}");
    let res = device_connect(&gw.ws, &key).await;
    assert_eq!(res["error"]["code"], "NOT_PAIRED", "{res}");
    let bad = cli(&["revoke", "../pairing/x/approve"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a request or device id"));
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_chain_and_a_bad_reload_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut gw = serve(&config);
    let metric = |text: &str, result: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "trustgate_config_reloads_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let scrape = || async {
        reqwest::get(format!("{}/metrics", gw.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let hup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // A broken edit: the reload is refused and counted; the gateway keeps serving.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace(
            "builtin = \"allowlist\"",
            "builtin = \"allowlist\"\nsha256 = \"00\"",
        ),
    )
    .unwrap();
    hup(gw.child.id());
    let mut text = scrape().await;
    // The reload loads and compiles the chain, which takes a while on a starved machine: wait
    // for the counter (the event), bounded by time rather than by a number of scrapes.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while metric(&text, "error") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refused reload was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        text = scrape().await;
    }
    let key = DeviceKey::generate();
    let res = device_connect(&gw.ws, &key).await;
    assert_eq!(
        res["error"]["code"], "NOT_PAIRED",
        "the old chain still decides: {res}"
    );
    // Fixed: the next SIGHUP (or the file watcher) loads it.
    std::fs::write(&config, &good).unwrap();
    hup(gw.child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while metric(&text, "ok") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        text = scrape().await;
    }
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
}
