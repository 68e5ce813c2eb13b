//! The commands a worker runs for operators.

use serde_json::{Value, json};

/// Runs one `invoke.request` and builds the `invoke.result` params.
pub(crate) fn handle(request: &Value) -> Value {
    let invoke_id = request
        .get("invokeId")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let command = request
        .get("command")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let args = request.get("args").cloned().unwrap_or_else(|| json!({}));
    match command {
        "echo" => json!({"invokeId": invoke_id, "ok": true, "result": args}),
        "sysinfo" => json!({"invokeId": invoke_id, "ok": true, "result": sysinfo()}),
        other => json!({
            "invokeId": invoke_id,
            "ok": false,
            "error": {"code": "UNKNOWN_COMMAND", "message": format!("this worker has no command `{other}` (it has: echo, sysinfo)")},
        }),
    }
}

fn sysinfo() -> Value {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok());
    json!({
        "hostname": hostname,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "pid": std::process::id(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
