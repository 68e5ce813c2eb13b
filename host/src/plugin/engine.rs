//! The one wasmtime `Engine` of a runtime, its linker, and the epoch ticker that drives CPU
//! deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use super::bindings::AuthPlugin;
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
    AuthPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Increments the engine's epoch every [`TICK`] on a dedicated thread until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("trustgate-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
