//! The operator web page in a real headless Chromium (Debian's `chromium`, driven through
//! `chromedriver` by a WebDriver client): sign in with the admin token, see a pending pairing
//! request, approve it, and see the device connect.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers of tests: a failed setup is a failed test

use std::process::{Child, Command, Stdio};

use fantoccini::{ClientBuilder, Locator};
use serde_json::json;
use trustgate_protocol::DeviceKey;
use trustgate_tests::client::{WsClient, connect_params};
use trustgate_tests::{gateway, scripted};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts chromedriver and waits for its "started successfully" line.
async fn chromedriver() -> (Driver, String) {
    use std::io::BufRead;
    let port = free_port();
    let mut child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; tests/run.sh installs it)");
    let stdout = child.stdout.take().unwrap();
    let driver = Driver(child);
    let started = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let ok = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("started successfully"));
        // keep draining so chromedriver never blocks on a full pipe
        std::thread::spawn(move || for _ in lines {});
        ok
    })
    .await
    .unwrap();
    assert!(started, "chromedriver did not start");
    (driver, format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_approves_a_device_in_the_browser() {
    trustgate_gateway::tls::install_crypto_provider();
    let gw = gateway(
        "",
        &scripted(
            "authn",
            r#"decision = "allow", method = "k8s-sa-trust", subject = "system:serviceaccount:workers:runner", roles = ["worker"], skip_pairing = true"#,
        ),
    )
    .await;
    let mut k8s = WsClient::open(&gw.url()).await;
    let res = k8s
        .connect(connect_params(
            "worker",
            Some(json!({"method": "k8s-sa-trust", "token": "t"})),
            None,
        ))
        .await;
    assert_eq!(res["ok"], true);
    let key = DeviceKey::generate();
    let mut device = WsClient::open(&gw.url()).await;
    let nonce = device.nonce.clone();
    let res = device
        .connect(connect_params("worker", None, Some((&key, &nonce))))
        .await;
    let request_id = res["error"]["details"]["requestId"]
        .as_str()
        .unwrap()
        .to_string();

    let (_driver, url) = chromedriver().await;
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"],
        }
    });
    let browser = ClientBuilder::rustls()
        .expect("tls")
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&url)
        .await
        .expect("a WebDriver session with headless Chromium");
    browser
        .goto(&format!("{}/ui", gw.admin_url()))
        .await
        .unwrap();

    // A wrong token is refused on the page.
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    browser
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = browser
        .wait()
        .for_element(Locator::Css("#status.error"))
        .await
        .unwrap();
    assert!(status.text().await.unwrap().contains("refused"));

    // Sign in with the real one.
    let input = browser.find(Locator::Id("token")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(&gw.admin_token()).await.unwrap();
    browser
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // The k8s worker is live, the plugin is listed, the device's request is pending.
    browser
        .wait()
        .for_element(Locator::Css(
            r#"#sessions tr[data-subject="system:serviceaccount:workers:runner"]"#,
        ))
        .await
        .unwrap();
    let plugin_row = browser
        .wait()
        .for_element(Locator::Css(r#"#plugins tr[data-plugin="authn"]"#))
        .await
        .unwrap();
    let sha = trustgate_runtime::sha256_hex(
        &std::fs::read(trustgate_tests::guests::GUEST_SCRIPTED).unwrap(),
    );
    assert!(plugin_row.text().await.unwrap().contains(&sha[..16]));
    let approve = browser
        .wait()
        .for_element(Locator::Css(&format!(
            r#"#pending tr[data-request-id="{request_id}"] button.approve"#
        )))
        .await
        .unwrap();
    approve.click().await.unwrap();

    // The device connects, paired, and shows up in the sessions table.
    let mut device = WsClient::open(&gw.url()).await;
    let nonce = device.nonce.clone();
    let res = device
        .connect(connect_params("worker", None, Some((&key, &nonce))))
        .await;
    assert_eq!(res["payload"]["auth"]["pairing"], "paired", "{res}");
    browser
        .wait()
        .for_element(Locator::Css(&format!(
            r#"#sessions tr[data-subject="device:{}"]"#,
            key.id()
        )))
        .await
        .unwrap();
    let pending = browser
        .find(Locator::Id("pending"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!pending.contains(&request_id), "{pending}");

    // The device is listed as approved, by the admin token, with one live session; revoking it
    // takes two clicks, closes its session with 4401, and empties the table.
    let row = browser
        .wait()
        .for_element(Locator::Css(&format!(
            r#"#devices tr[data-device-id="{}"]"#,
            key.id()
        )))
        .await
        .unwrap();
    let text = row.text().await.unwrap();
    assert!(
        text.contains("admin-token") && text.contains("worker"),
        "{text}"
    );
    row.find(Locator::Css("button.revoke"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let armed = browser
        .wait()
        .for_element(Locator::Css(&format!(
            r#"#devices tr[data-device-id="{}"] button.revoke.confirm"#,
            key.id()
        )))
        .await
        .unwrap();
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/devices", gw.admin_url()))
        .bearer_auth(gw.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["devices"][0]["id"],
        key.id(),
        "one click must not revoke: {listed}"
    );
    assert_eq!(listed["devices"][0]["liveSessions"], 1, "{listed}");
    armed.click().await.unwrap();
    let (code, reason) = device.closed().await;
    assert_eq!((code, reason.as_str()), (4401, "device revoked"));
    browser
        .wait()
        .for_element(Locator::Css("#devices tr[data-empty]"))
        .await
        .unwrap();
    let status = browser
        .find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        status.contains("revoked") && status.contains("1 sessions closed"),
        "{status}"
    );
    browser.close().await.unwrap();
}
