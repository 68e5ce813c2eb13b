//! The one wasmtime `Engine` of a runtime, its linker, and the epoch ticker that drives CPU
//! deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use super::bindings::{v0_1, v0_2};
use super::sandbox::{StoreState, TICK};

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
    Engine::new(&config)
}

pub(crate) fn new_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    let mut linker = Linker::new(engine);
    // WASI is linked because Rust (and most languages') std imports it; the context in
    // `StoreState` grants nothing, so the interfaces exist but reach nothing.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // Both contract versions: a component links against the one it was built for.
    v0_2::AuthPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    v0_1::AuthPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Increments the engine's epoch every [`TICK`] on a dedicated thread while plugin calls are
/// running, and parks after a tick in which no call started, so an idle gateway does not wake
/// up a thousand times a second and a busy one does not pay a wake-up per call.
pub(crate) struct EpochTicker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    stop: AtomicBool,
    active: AtomicUsize,
    /// Set by every call that starts; cleared by the ticker each tick.
    recent: AtomicBool,
    parked: AtomicBool,
}

/// Keeps the ticker running while alive; one per plugin call.
pub(crate) struct Busy<'a> {
    ticker: &'a EpochTicker,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.ticker.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let shared = Arc::new(TickerShared {
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            recent: AtomicBool::new(false),
            parked: AtomicBool::new(false),
        });
        let engine = engine.clone();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("trustgate-epoch".into())
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    let idle = s.active.load(Ordering::SeqCst) == 0;
                    if idle && !s.recent.swap(false, Ordering::SeqCst) {
                        s.parked.store(true, Ordering::SeqCst);
                        // Re-check after announcing the park: a call that started in between
                        // either sees `parked` and unparks us, or is seen here.
                        if s.active.load(Ordering::SeqCst) == 0
                            && !s.recent.load(Ordering::SeqCst)
                            && !s.stop.load(Ordering::SeqCst)
                        {
                            std::thread::park();
                        }
                        s.parked.store(false, Ordering::SeqCst);
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

    /// Marks a plugin call as running until the guard drops.
    pub(crate) fn busy(&self) -> Busy<'_> {
        self.shared.active.fetch_add(1, Ordering::SeqCst);
        self.shared.recent.store(true, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst)
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
        Busy { ticker: self }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}
