//! The per-store state of one plugin instance and the limits that fence it in: a CPU deadline
//! (epoch interruption), a memory cap (a resource limiter), a wall-clock timeout on host calls,
//! and a WASI context with no filesystem, environment, network or inherited stdio.

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

use super::bindings::{HostImports, LogLevel, ReviewError, TokenReviewStatus};
use super::services::HostServices;

/// How long one epoch tick lasts. The deadline is enforced to within about one tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// A guest running longer than this yields its thread back to the async executor before
/// continuing, so one slow plugin cannot hold a worker thread for its whole deadline.
const SLICE: Duration = Duration::from_millis(10);

/// Longest plugin log line kept; longer lines are cut so a plugin cannot flood the log.
const MAX_LOG_LINE: usize = 2048;

/// Per-call resource limits for every plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time a single `configure` or `authenticate` call may use inside the guest.
    /// Time the guest spends waiting on host calls does not count.
    pub deadline: Duration,
    /// Cap on each instance's linear memory (and table) growth, in bytes.
    pub memory_bytes: usize,
    /// Wall-clock limit on one host call (TokenReview, JWT verification).
    pub host_call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            memory_bytes: 64 << 20,
            host_call_timeout: Duration::from_secs(5),
        }
    }
}

impl Limits {
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
    plugin: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    services: Arc<dyn HostServices>,
    limits: Limits,
    clock: CallClock,
    tripped: Tripped,
}

impl StoreState {
    pub(crate) fn new(plugin: Arc<str>, services: Arc<dyn HostServices>, limits: Limits) -> Self {
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
        }
    }

    /// Starts the CPU clock for a new guest call; returns the epoch ticks to arm.
    pub(crate) fn begin_call(&mut self) -> u64 {
        self.clock.restart(self.limits.deadline);
        self.tripped = Tripped::Nothing;
        ticks(self.limits.deadline.min(SLICE))
    }

    pub(crate) fn tripped(&self) -> Tripped {
        self.tripped
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    async fn host_call<T>(
        &mut self,
        what: &str,
        call: impl Future<Output = Result<T, ReviewError>>,
    ) -> Result<T, ReviewError> {
        let started = Instant::now();
        let timeout = self.limits.host_call_timeout;
        let out = match tokio::time::timeout(timeout, call).await {
            Ok(out) => out,
            Err(_) => Err(ReviewError::Unavailable(format!(
                "{what} did not answer within {} ms",
                timeout.as_millis()
            ))),
        };
        self.clock.in_host += started.elapsed();
        out
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

impl super::bindings::trustgate::auth::types::Host for StoreState {}

impl HostImports for StoreState {
    async fn log(&mut self, level: LogLevel, message: String) {
        let message = clip(&message);
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }

    async fn now_ms(&mut self) -> u64 {
        crate::time::now_ms()
    }

    async fn token_review(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<TokenReviewStatus, ReviewError> {
        let services = self.services.clone();
        self.host_call("TokenReview", services.token_review(&token, &audiences))
            .await
    }

    async fn verify_jwt(
        &mut self,
        token: String,
        audiences: Vec<String>,
    ) -> Result<TokenReviewStatus, ReviewError> {
        let services = self.services.clone();
        self.host_call("JWT verification", services.verify_jwt(&token, &audiences))
            .await
    }
}

fn clip(s: &str) -> &str {
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
