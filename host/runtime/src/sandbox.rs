//! The sandbox: the per-store state of one plugin instance and the fences around it.
//!
//! - **CPU**: a deadline per call by epoch interruption; time in host calls and time parked
//!   after yielding does not count. Long guests yield every slice.
//! - **Wall clock**: one bound per call (`call_timeout_ms`) covering guest code, host calls and
//!   anything a guest may wait on through WASI (a clock, a poll); each host call is also capped
//!   by `host_call_timeout_ms` and by what remains of the call.
//! - **Memory**: a cap per instance and a budget shared by every instance of the runtime, both
//!   charged by a resource limiter as memories and tables grow.
//! - **Output**: log lines cut and escaped, at most [`MAX_LOG_PER_CALL`] bytes per call across
//!   `log`, stdout and stderr; the rest is dropped and counted.
//! - **Nothing else**: a WASI context with no filesystem, environment, arguments, network or
//!   name lookup.
//!
//! What plugins *are* given lives in `contract.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bounds::{MAX_LOG_LINE, MAX_LOG_PER_CALL, clip, escape_text};
use crate::contract::Tracked;
use crate::pool::PluginStats;
use crate::services::{CachePolicy, HostServices};
use crate::settings::RuntimeSettings;
use crate::types::{LogLevel, Review, ReviewError};

/// How long one epoch tick lasts. The deadline is enforced to within about one tick.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// A guest running longer than this yields its thread back to the async executor before
/// continuing, so one slow plugin cannot hold a worker thread for its whole deadline.
const SLICE: Duration = Duration::from_millis(10);

/// The per-call limits of every instance, read from [`RuntimeSettings`] once, in the form the
/// hot path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SandboxLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub host_call_timeout: Duration,
    pub call_timeout: Duration,
}

impl From<&RuntimeSettings> for SandboxLimits {
    fn from(s: &RuntimeSettings) -> Self {
        Self {
            deadline: s.deadline(),
            memory_bytes: s.memory_bytes(),
            host_call_timeout: s.host_call_timeout(),
            call_timeout: s.call_timeout(),
        }
    }
}

/// What a plugin may do beyond the contract's defaults, granted by the operator per plugin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// May read the raw bearer token and device token (`credentials = "read"`).
    pub read_credentials: bool,
}

/// Memory all instances of one runtime may hold together. Instances reserve from it as their
/// memories and tables grow and give it back when they are dropped.
#[derive(Debug)]
pub(crate) struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes currently reserved.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
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
    /// The runtime-wide memory budget is spent (load, not the plugin's fault).
    Budget,
}

/// Which verification a plugin asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReviewKind {
    TokenReview,
    LocalJwt,
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

/// The log output one call may still produce, shared by the `log` import and the guest's
/// stdout and stderr.
#[derive(Debug)]
struct LogBudget {
    remaining: AtomicUsize,
    stats: Arc<PluginStats>,
}

impl LogBudget {
    /// Takes up to `want` bytes from the budget; returns how many may be written.
    fn take(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                granted = want.min(left);
                Some(left - granted)
            });
        if granted < want {
            self.stats
                .log_dropped_bytes
                .fetch_add((want - granted) as u64, Ordering::Relaxed);
        }
        granted
    }
}

/// Writes one plugin log line: cut to the line limit and to what the call's budget allows,
/// escaped, tagged with the plugin (and the stream it came from).
fn emit(plugin: &str, stream: &str, level: LogLevel, budget: &LogBudget, text: &str) {
    let line = clip(text, MAX_LOG_LINE);
    let line = clip(line, budget.take(line.len()));
    if line.is_empty() {
        return;
    }
    let line = escape_text(line);
    match level {
        LogLevel::Trace => tracing::trace!(plugin, stream, "{line}"),
        LogLevel::Debug => tracing::debug!(plugin, stream, "{line}"),
        LogLevel::Info => tracing::info!(plugin, stream, "{line}"),
        LogLevel::Warn => tracing::warn!(plugin, stream, "{line}"),
        LogLevel::Error => tracing::error!(plugin, stream, "{line}"),
    }
}

/// Store data of one plugin instance.
pub(crate) struct StoreState {
    pub(crate) plugin: Arc<str>,
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    services: Arc<dyn HostServices>,
    limits: SandboxLimits,
    clock: CallClock,
    tripped: Tripped,
    /// Whether host verifications during the current call may use the embedder's cache.
    cache: CachePolicy,
    /// Where the current call's verifications record the subject they found.
    witness: Option<crate::chain::Witness>,
    pub(crate) grants: Grants,
    /// Handles (credentials, reviews) the current call created and the guest still holds.
    pub(crate) handles: Vec<(u32, Tracked)>,
    log: Arc<LogBudget>,
    budget: Arc<MemoryBudget>,
    /// Bytes this instance has reserved from `budget`.
    reserved: usize,
}

/// What a new store is made of.
pub(crate) struct StoreParts {
    pub plugin: Arc<str>,
    pub services: Arc<dyn HostServices>,
    pub limits: SandboxLimits,
    pub grants: Grants,
    pub stats: Arc<PluginStats>,
    pub budget: Arc<MemoryBudget>,
}

impl StoreState {
    /// The time plugins see (`now-ms`): the embedder's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.services.now_ms()
    }

    pub(crate) fn new(p: StoreParts) -> Self {
        let log = Arc::new(LogBudget {
            remaining: AtomicUsize::new(MAX_LOG_PER_CALL),
            stats: p.stats,
        });
        // Deliberately nothing: no preopened directories, no environment, no arguments, no
        // sockets, no name lookup. Output goes to the diagnostic log, tagged with the plugin.
        let stream = |name| LogStream {
            plugin: p.plugin.clone(),
            stream: name,
            budget: log.clone(),
        };
        let wasi = WasiCtx::builder()
            .stdout(stream("stdout"))
            .stderr(stream("stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            plugin: p.plugin,
            wasi,
            table: ResourceTable::new(),
            services: p.services,
            limits: p.limits,
            clock: CallClock::new(p.limits.deadline),
            tripped: Tripped::Nothing,
            cache: CachePolicy::Use,
            witness: None,
            grants: p.grants,
            handles: Vec::new(),
            log,
            budget: p.budget,
            reserved: 0,
        }
    }

    /// Starts the clocks and the log budget for a new guest call; returns the epoch ticks to
    /// arm.
    pub(crate) fn begin_call(
        &mut self,
        cache: CachePolicy,
        witness: Option<crate::chain::Witness>,
    ) -> u64 {
        self.clock.restart(self.limits.deadline);
        self.tripped = Tripped::Nothing;
        self.cache = cache;
        self.witness = witness;
        self.log
            .remaining
            .store(MAX_LOG_PER_CALL, Ordering::Release);
        ticks(self.limits.deadline.min(SLICE))
    }

    pub(crate) fn tripped(&self) -> Tripped {
        self.tripped
    }

    /// When the current call's wall-clock bound runs out.
    pub(crate) fn call_deadline(&self) -> Instant {
        self.clock.started + self.limits.call_timeout
    }

    /// Wall time since the current call started.
    pub(crate) fn call_elapsed(&self) -> Duration {
        self.clock.started.elapsed()
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    /// A plugin's log line (the `log` import of either contract version).
    pub(crate) fn plugin_log(&self, level: LogLevel, message: &str) {
        emit(&self.plugin, "log", level, &self.log, message);
    }

    /// A verification on the plugin's behalf, under the host-call timeout and within what
    /// remains of the call's wall-clock bound; its time does not count as guest CPU.
    pub(crate) async fn review(
        &mut self,
        kind: ReviewKind,
        token: &str,
        audiences: &[String],
    ) -> Result<Arc<dyn Review>, ReviewError> {
        // Leave the guest a deadline's worth of the call to finish after the host call.
        let started = Instant::now();
        let left = self
            .limits
            .call_timeout
            .saturating_sub(started - self.clock.started)
            .saturating_sub(self.limits.deadline);
        let timeout = self.limits.host_call_timeout.min(left);
        let (services, cache) = (self.services.clone(), self.cache);
        let call = async {
            match kind {
                ReviewKind::TokenReview => services.token_review(token, audiences, cache).await,
                ReviewKind::LocalJwt => services.verify_jwt(token, audiences).await,
            }
        };
        let out =
            tokio::time::timeout_at(tokio::time::Instant::from_std(started + timeout), call).await;
        self.clock.in_host += started.elapsed();
        if let (Ok(Ok(review)), Some(witness)) = (&out, &self.witness)
            && review.authenticated()
        {
            witness.saw(review.username());
        }
        out.unwrap_or_else(|_| {
            Err(ReviewError::Unavailable(format!(
                "{} did not answer within {} ms",
                match kind {
                    ReviewKind::TokenReview => "TokenReview",
                    ReviewKind::LocalJwt => "JWT verification",
                },
                timeout.as_millis()
            )))
        })
    }

    /// Charges `delta` bytes of growth to the instance cap and the runtime's budget.
    fn grow(&mut self, current: usize, desired: usize, cap: usize) -> wasmtime::Result<bool> {
        if desired > cap {
            self.tripped = Tripped::Memory;
            // An error (rather than `Ok(false)`) traps right here, so a guest cannot keep
            // running after a refused growth with half-initialised state.
            wasmtime::bail!("memory cap of {cap} bytes reached (wanted {desired})");
        }
        let delta = desired.saturating_sub(current);
        if !self.budget.reserve(delta) {
            self.tripped = Tripped::Budget;
            wasmtime::bail!(
                "the runtime's plugin memory budget of {} bytes is spent",
                self.budget.limit
            );
        }
        self.reserved += delta;
        Ok(true)
    }
}

impl Drop for StoreState {
    fn drop(&mut self) {
        self.budget.release(self.reserved);
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
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let cap = self.limits.memory_bytes;
        self.grow(current, desired, cap)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Each table element costs a pointer; count tables against the same cap and budget.
        let cap = self.limits.memory_bytes;
        let bytes = |n: usize| n.saturating_mul(size_of::<usize>());
        self.grow(bytes(current), bytes(desired), cap)
    }
}

/// A guest's stdout or stderr: complete lines become log events tagged with the plugin,
/// within the call's log budget. Written synchronously as the guest writes (no background
/// task), so the budget of a call covers exactly what that call wrote.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        // Only reached through `p2_stream`'s default, which is overridden below.
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
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
        let t = &self.target;
        emit(
            &t.plugin,
            t.stream,
            LogLevel::Info,
            &t.budget,
            text.trim_end(),
        );
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

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        // Past the budget nothing more is buffered: the bytes are counted and dropped here.
        if self.target.budget.remaining.load(Ordering::Acquire) == 0 {
            self.target
                .budget
                .stats
                .log_dropped_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.pending.extend_from_slice(&bytes);
        self.flush_lines();
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LOG_LINE)
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let rest = std::mem::take(&mut self.pending);
        self.emit(&rest);
    }
}
