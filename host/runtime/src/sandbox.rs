//! The sandbox: the per-store state of one plugin instance and the fences around it — a CPU
//! deadline (epoch interruption), a memory cap (a resource limiter), a wall-clock timeout on
//! host calls, and a WASI context with no filesystem, environment, network or inherited stdio.
//! The capabilities plugins *are* given live in `host_imports.rs`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::services::{CachePolicy, HostServices};
use super::settings::RuntimeSettings;

/// How long one epoch tick lasts. The deadline is enforced to within about one tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// A guest running longer than this yields its thread back to the async executor before
/// continuing, so one slow plugin cannot hold a worker thread for its whole deadline.
const SLICE: Duration = Duration::from_millis(10);

/// Longest plugin log line kept; longer lines are cut so a plugin cannot flood the log.
pub(crate) const MAX_LOG_LINE: usize = 2048;

/// The per-call limits of every instance, read from [`RuntimeSettings`] once, in the form the
/// hot path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SandboxLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub host_call_timeout: Duration,
}

impl From<&RuntimeSettings> for SandboxLimits {
    fn from(s: &RuntimeSettings) -> Self {
        Self {
            deadline: s.deadline(),
            memory_bytes: s.memory_bytes(),
            host_call_timeout: s.host_call_timeout(),
        }
    }
}

impl SandboxLimits {
    /// The outer wall-clock bound of one guest call: the CPU deadline plus room for host calls.
    /// It only matters if a host service ignores its own timeout; the instance is then discarded.
    pub(crate) fn wall_clock_bound(&self) -> Duration {
        self.deadline * 4 + self.host_call_timeout * 2 + Duration::from_millis(100)
    }
}

/// Why a guest call was cut short, recorded by the fences as they fire so the failure can be
/// classified without parsing error text.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tripped {
    #[default]
    Nothing,
    Deadline,
    Memory,
}

/// Guest CPU accounting for the call in progress: wall time since the call started minus the
/// time spent inside host calls and the time spent parked after yielding to the executor.
#[derive(Debug)]
struct CallClock {
    started: Instant,
    in_host: Duration,
    /// Microseconds spent parked after yields; written by the yield future, which cannot
    /// borrow the store.
    parked_us: Arc<AtomicU64>,
    budget: Duration,
}

impl CallClock {
    fn new(budget: Duration) -> Self {
        Self {
            started: Instant::now(),
            in_host: Duration::ZERO,
            parked_us: Arc::new(AtomicU64::new(0)),
            budget,
        }
    }

    /// Restarts the clock for a new call, reusing the parked-time counter.
    fn restart(&mut self, budget: Duration) {
        self.started = Instant::now();
        self.in_host = Duration::ZERO;
        self.parked_us.store(0, Ordering::Relaxed);
        self.budget = budget;
    }

    fn guest_time(&self) -> Duration {
        let parked = Duration::from_micros(self.parked_us.load(Ordering::Relaxed));
        self.started
            .elapsed()
            .saturating_sub(self.in_host)
            .saturating_sub(parked)
    }
}

/// Store data of one plugin instance.
pub(crate) struct StoreState {
    pub(crate) plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) services: Arc<dyn HostServices>,
    limits: SandboxLimits,
    clock: CallClock,
    tripped: Tripped,
    /// Whether host verifications during the current call may use the embedder's cache.
    pub(crate) cache: CachePolicy,
}

impl StoreState {
    pub(crate) fn new(
        plugin: Arc<str>,
        services: Arc<dyn HostServices>,
        limits: SandboxLimits,
    ) -> Self {
        // Deliberately nothing: no preopened directories, no environment, no arguments, no
        // sockets, no name lookup. Output goes to the diagnostic log, tagged with the plugin.
        let wasi = WasiCtx::builder()
            .stdout(LogStream::new(plugin.clone(), "stdout"))
            .stderr(LogStream::new(plugin.clone(), "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            plugin,
            wasi,
            table: ResourceTable::new(),
            services,
            limits,
            clock: CallClock::new(limits.deadline),
            tripped: Tripped::Nothing,
            cache: CachePolicy::Use,
        }
    }

    /// Starts the CPU clock for a new guest call; returns the epoch ticks to arm.
    pub(crate) fn begin_call(&mut self, cache: CachePolicy) -> u64 {
        self.clock.restart(self.limits.deadline);
        self.tripped = Tripped::Nothing;
        self.cache = cache;
        ticks(self.limits.deadline.min(SLICE))
    }

    pub(crate) fn tripped(&self) -> Tripped {
        self.tripped
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Runs a host call under the host-call timeout; its time does not count as guest CPU.
    /// `None`: the call did not finish in time.
    pub(crate) async fn host_call<T>(&mut self, call: impl Future<Output = T>) -> Option<T> {
        let started = Instant::now();
        let out = tokio::time::timeout(self.limits.host_call_timeout, call)
            .await
            .ok();
        self.clock.in_host += started.elapsed();
        out
    }

    /// The host-call timeout, for messages.
    pub(crate) fn host_call_timeout(&self) -> Duration {
        self.limits.host_call_timeout
    }
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros() / TICK.as_micros()).max(1) as u64
}

/// Called by wasmtime each time the guest has run for a slice: trap if the guest has used its
/// CPU budget, otherwise yield to the executor and re-arm for the next slice.
pub(crate) fn on_epoch_deadline(
    mut ctx: StoreContextMut<'_, StoreState>,
) -> wasmtime::Result<UpdateDeadline> {
    let state = ctx.data_mut();
    let used = state.clock.guest_time();
    if used >= state.clock.budget {
        state.tripped = Tripped::Deadline;
        return Ok(UpdateDeadline::Interrupt);
    }
    let next = ticks((state.clock.budget - used).min(SLICE));
    let parked = state.clock.parked_us.clone();
    Ok(UpdateDeadline::YieldCustom(
        next,
        Box::pin(async move {
            let started = Instant::now();
            tokio::task::yield_now().await;
            parked.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }),
    ))
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for StoreState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.tripped = Tripped::Memory;
            // An error (rather than `Ok(false)`) traps right here, so a guest cannot keep
            // running after a refused growth with half-initialised state.
            return Err(wasmtime::Error::msg(format!(
                "memory cap of {} bytes reached (wanted {desired})",
                self.limits.memory_bytes
            )));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Each table element costs a pointer; count tables against the same cap.
        if desired.saturating_mul(size_of::<usize>()) > self.limits.memory_bytes {
            self.tripped = Tripped::Memory;
            return Err(wasmtime::Error::msg("table growth beyond the memory cap"));
        }
        Ok(true)
    }
}

pub(crate) fn clip(s: &str) -> &str {
    if s.len() <= MAX_LOG_LINE {
        return s;
    }
    let mut end = MAX_LOG_LINE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A guest's stdout or stderr: complete lines become log events tagged with the plugin.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
}

impl LogStream {
    fn new(plugin: Arc<str>, stream: &'static str) -> Self {
        Self { plugin, stream }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            target: self.clone(),
            pending: Vec::new(),
        })
    }
}

struct LineWriter {
    target: LogStream,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = clip(text.trim_end());
        if !text.is_empty() {
            tracing::info!(
                plugin = &*self.target.plugin,
                stream = self.target.stream,
                "{text}"
            );
        }
    }

    fn flush_lines(&mut self) {
        while let Some(pos) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            self.emit(&line);
        }
        if self.pending.len() > MAX_LOG_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        self.flush_lines();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest);
    }
}
