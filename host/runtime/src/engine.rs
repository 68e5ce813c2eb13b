//! The one wasmtime `Engine` of a runtime and the epoch ticker that drives CPU deadlines. Knows
//! nothing of plugins or contracts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{Config, Engine};

/// How long one epoch tick lasts while calls are running.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// How long the ticker sleeps while no call is running before it looks again. A call that
/// starts meanwhile is not woken for (no syscall on the call path); it is ticked from the
/// ticker's next look, so a CPU deadline is enforced within about this much of its end.
pub(crate) const IDLE_LOOK: Duration = Duration::from_millis(10);

/// Guest stack limit. Deep recursion traps with a stack overflow well before this is exceeded
/// on the host side.
const MAX_WASM_STACK: usize = 512 << 10;

pub(crate) fn new_engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        // Fibers need room for the guest stack plus the host frames of async host calls.
        .async_stack_size(MAX_WASM_STACK + (1 << 20))
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    // For profiling plugins: `TRUSTGATE_PERF_MAP=1` writes `/tmp/perf-<pid>.map`, so `perf`
    // names the guest functions it samples (docs/operations.md).
    if std::env::var_os("TRUSTGATE_PERF_MAP").is_some_and(|v| v == "1") {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config)
}

/// Increments the engine's epoch every [`TICK`] on a dedicated thread while plugin calls are
/// running. While none is, it sleeps [`IDLE_LOOK`] at a time and looks again: a call only
/// counts itself in and out (one atomic each way), so neither a busy gateway nor one that
/// serves a handshake now and then pays a thread wake-up per call, and an idle one wakes a
/// hundred times a second at most.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    stop: AtomicBool,
    /// Calls running now.
    active: AtomicUsize,
}

/// Counts a plugin call in while alive.
pub(crate) struct Busy<'a> {
    ticker: &'a EpochTicker,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.ticker.shared.active.fetch_sub(1, Ordering::Release);
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let engine = engine.clone();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("trustgate-epoch".into())
            .spawn(move || {
                while !s.stop.load(Ordering::Acquire) {
                    if s.active.load(Ordering::Acquire) == 0 {
                        std::thread::park_timeout(IDLE_LOOK);
                        continue;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Counts a plugin call in until the guard drops.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        Busy { ticker: self }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
