//! Shared helpers of trustgate's end-to-end tests: paths of the test guests built from
//! `tests/guests/` and small constructors for requests and runtimes.

#![allow(clippy::expect_used)] // test setup failing is a test failure

use std::sync::Arc;

use trustgate_runtime::{
    CachePolicy, Call, Credentials, Decision, Grants, Identity, NoServices, Peer, PluginFailure,
    PluginSource, PluginSpec, Request, Runtime, RuntimeSettings, WasmPlugin,
};

/// Paths of the compiled test guests.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// A worker request with the given auth method and token.
pub fn request(method: &str, token: Option<&str>) -> Arc<Request> {
    Arc::new(Request {
        credentials: Credentials {
            method: method.into(),
            token: token.map(str::to_string),
            device_token: None,
        },
        device: None,
        peer: Peer {
            remote_addr: "10.1.2.3:40000".into(),
            tls: false,
            client_id: "test-client".into(),
            client_version: "1.0.0".into(),
            platform: None,
            instance_id: None,
            conn_id: "conn-test".into(),
        },
        role: "worker".into(),
        scopes: vec![],
    })
}

/// A call on `request` with `so_far`, answers from caches allowed.
pub fn call(request: &Arc<Request>, so_far: Option<&Identity>) -> Call {
    Call {
        request: request.clone(),
        so_far: so_far.cloned().map(Arc::new),
        cache: CachePolicy::Use,
        witness: Default::default(),
    }
}

/// One plugin call on `request` with `so_far`, answers from caches allowed.
pub async fn decide(
    plugin: &WasmPlugin,
    request: &Arc<Request>,
    so_far: Option<&Identity>,
) -> Result<Decision, PluginFailure> {
    use trustgate_runtime::AuthProvider;
    plugin.authenticate(&call(request, so_far)).await
}

/// Runtime settings for tests: the given deadline, a 32 MiB memory cap, 2 s host calls, no
/// compile cache, 4 idle instances.
pub fn limits(deadline_ms: u64) -> RuntimeSettings {
    RuntimeSettings {
        deadline_ms,
        memory_mib: 32,
        host_call_timeout_ms: 2_000,
        call_timeout_ms: Some(2_000 + deadline_ms),
        cache_dir: None,
        max_idle_instances: 4,
        ..RuntimeSettings::default()
    }
}

/// A runtime with no host services (every verification is `not-configured`).
pub fn runtime(settings: RuntimeSettings) -> Runtime {
    Runtime::new(settings, Arc::new(NoServices::default())).expect("runtime")
}

/// A spec loading a file-based plugin with a JSON configuration.
pub fn spec(name: &str, path: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        source: PluginSource::File {
            path: path.into(),
            sha256: None,
        },
        config,
        grants: Grants::default(),
    }
}

/// [`spec`] with the credentials grant (`credentials = "read"`).
pub fn spec_reading_credentials(name: &str, path: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        grants: Grants {
            read_credentials: true,
        },
        ..spec(name, path, config)
    }
}

pub mod bench;
pub mod client;
pub mod floor;
pub mod layering;
pub mod nats;
pub mod policies;
pub mod tls;

/// A gateway running in this test process on ephemeral loopback ports, with its state in a
/// temporary directory.
pub struct TestGateway {
    /// The running gateway.
    pub running: trustgate_gateway::Running,
    /// Its state directory (pairing store, admin token).
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// `ws://` URL of the gateway.
    pub fn url(&self) -> String {
        format!("ws://{}", self.running.ws_addr)
    }

    /// `http://` base URL of the admin API.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.running.admin_addr)
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin-token"))
            .expect("admin token")
            .trim()
            .to_string()
    }
}

/// A finished command's exit status and everything it printed (stdout, then stderr), for
/// tests of the command line.
pub fn status_and_text(out: &std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The TOML of one `[[auth.plugins]]` entry running the scripted test guest with an inline
/// config table, e.g. `scripted("k8s", r#"decision = "allow", roles = ["worker"]"#)`. It
/// holds the credentials grant: its `token` and `subject_from_token` read the token.
pub fn scripted(name: &str, config: &str) -> String {
    format!(
        "[[auth.plugins]]\nname = \"{name}\"\npath = {:?}\ncredentials = \"read\"\nconfig = {{ {config} }}\n",
        guests::GUEST_SCRIPTED
    )
}

/// Starts a gateway with `sections` (extra TOML such as `[limits]`) and the given chain TOML.
pub async fn gateway(sections: &str, chain: &str) -> TestGateway {
    gateway_with(sections, chain, None).await
}

/// [`gateway`] with `services` behind the plugins' host calls (`None`: from `[kubernetes]`).
pub async fn gateway_with(
    sections: &str,
    chain: &str,
    services: Option<Arc<dyn trustgate_runtime::HostServices>>,
) -> TestGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{sections}\n\n{chain}",
        dir.path().display().to_string()
    );
    let config = trustgate_gateway::config::Config::parse(&text, "test.toml", dir.path())
        .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
    let running = match services {
        Some(services) => trustgate_gateway::start_with(&config, services).await,
        None => trustgate_gateway::start(&config).await,
    }
    .unwrap_or_else(|e| panic!("gateway start: {e}"));
    TestGateway { running, dir }
}

/// Log lines written while a [`LogCapture`] is installed on this thread, as text.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Captures every event at `debug` and above on this thread (and on the tasks of a
    /// current-thread runtime driven from it) until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
