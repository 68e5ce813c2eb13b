//! The sandbox: the per-store state of one plugin instance and the fences around it.
//!
//! - **CPU**: a deadline per call by epoch interruption; time in host calls and time parked
//!   after yielding does not count. Long guests yield every slice.
//! - **Waiting**: a guest has nothing to wait for but the host calls it makes. Any other wait
//!   (a WASI clock, a poll) counts against the CPU deadline as if it were computing, so a guest
//!   that sleeps fails within its deadline (the call's bound is enforced in `call.rs`, from the
//!   [`CallClock`] shared here).
//! - **Wall clock**: besides, one bound per call (`call_timeout_ms`) covering everything; each
//!   host call is also capped by `host_call_timeout_ms` and by what remains of the call.
//! - **Memory**: a cap per instance and a budget shared by every instance of the runtime, both
//!   charged by a resource limiter as memories and tables grow.
//! - **Output**: log lines cut at [`MAX_LOG_LINE`] and escaped; per call at most
//!   [`MAX_LOG_PER_CALL`] bytes *as written to the gateway's log* across `log`, stdout and
//!   stderr, each line charged its escaped length plus [`LOG_LINE_FRAMING`]; the rest is dropped
//!   and counted.
//! - **Handles**: valid during the call that created them only (`handles.rs`).
//! - **Nothing else**: a WASI context with no filesystem, environment, arguments, network or
//!   name lookup.
//!
//! What plugins *are* given lives in `contract/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bounds::{MAX_LOG_LINE, MAX_LOG_PER_CALL, clip, escape_text};
use crate::call::CallClock;
use crate::chain::Call;
use crate::engine::TICK;
use crate::handles::Handles;
use crate::services::HostServices;
use crate::settings::RuntimeSettings;
use crate::stats::PluginStats;
use crate::types::{LogLevel, Review, ReviewError};

/// A guest running longer than this yields its thread back to the async executor before
/// continuing, so one slow plugin cannot hold a worker thread for its whole deadline.
const SLICE: Duration = Duration::from_millis(10);

/// What each plugin log line is charged for the gateway log's own framing (timestamp, level,
/// target, the connection's span, the `plugin` and `stream` fields; human or JSON format),
/// besides its escaped text and the plugin's name.
pub const LOG_LINE_FRAMING: usize = 256;

/// The per-call limits of every instance, read from [`RuntimeSettings`] once, in the form the
/// hot path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SandboxLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub host_call_timeout: Duration,
    pub call_timeout: Duration,
}

impl SandboxLimits {
    /// The CPU deadline and the wall-clock bound of one call (what `call.rs` enforces).
    pub(crate) fn bounds(&self) -> (Duration, Duration) {
        (self.deadline, self.call_timeout)
    }
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

impl ReviewKind {
    fn what(self) -> &'static str {
        match self {
            Self::TokenReview => "TokenReview",
            Self::LocalJwt => "JWT verification",
        }
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
    fn dropped(&self, bytes: usize) {
        self.stats
            .log_dropped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Takes `cost` bytes from the budget if they are all left.
    fn take(&self, cost: usize) -> bool {
        self.remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(cost)
            })
            .is_ok()
    }
}

/// Writes one plugin log line: cut to the line limit (the cut counted as dropped), escaped,
/// tagged with the plugin and the stream it came from, if the call's budget still covers what
/// it costs the gateway's log; otherwise all of it is dropped and counted.
fn emit(plugin: &str, stream: &str, level: LogLevel, budget: &LogBudget, text: &str) {
    let line = clip(text, MAX_LOG_LINE);
    if line.len() < text.len() {
        budget.dropped(text.len() - line.len());
    }
    if line.is_empty() {
        return;
    }
    let escaped = escape_text(line);
    let cost = escaped.len() + LOG_LINE_FRAMING + plugin.len() + stream.len();
    if !budget.take(cost) {
        budget.dropped(line.len());
        return;
    }
    match level {
        LogLevel::Trace => tracing::trace!(plugin, stream, "{escaped}"),
        LogLevel::Debug => tracing::debug!(plugin, stream, "{escaped}"),
        LogLevel::Info => tracing::info!(plugin, stream, "{escaped}"),
        LogLevel::Warn => tracing::warn!(plugin, stream, "{escaped}"),
        LogLevel::Error => tracing::error!(plugin, stream, "{escaped}"),
    }
}

/// Store data of one plugin instance.
pub(crate) struct StoreState {
    pub(crate) plugin: Arc<str>,
    wasi: WasiCtx,
    /// WASI's resources (streams, pollables).
    table: ResourceTable,
    /// The contract's handles, valid for one call each.
    pub(crate) handles: Handles,
    services: Arc<dyn HostServices>,
    limits: SandboxLimits,
    /// When the call in progress started.
    started: Instant,
    clock: Arc<CallClock>,
    tripped: Tripped,
    /// The call in progress (`None` while instantiating and configuring).
    call: Option<Call>,
    /// The call's last successful review (what `allow-reviewed` forms an identity from).
    last_review: Option<Arc<dyn Review>>,
    pub(crate) grants: Grants,
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
            handles: Handles::default(),
            services: p.services,
            limits: p.limits,
            started: Instant::now(),
            clock: Arc::default(),
            tripped: Tripped::Nothing,
            call: None,
            last_review: None,
            grants: p.grants,
            log,
            budget: p.budget,
            reserved: 0,
        }
    }

    /// Starts the clocks, the log budget and a fresh handle generation for a guest call
    /// (`call` is `None` for instantiation and `configure`); returns the epoch ticks to arm.
    pub(crate) fn begin_call(&mut self, call: Option<Call>) -> u64 {
        self.started = Instant::now();
        self.clock.reset();
        self.tripped = Tripped::Nothing;
        self.call = call;
        self.last_review = None;
        self.handles.begin_call();
        self.log
            .remaining
            .store(MAX_LOG_PER_CALL, Ordering::Release);
        ticks(self.limits.deadline.min(SLICE))
    }

    /// Ends a call: its handles and its request are gone.
    pub(crate) fn end_call(&mut self) {
        self.handles.end_call();
        self.call = None;
        self.last_review = None;
    }

    /// The call's last successful review.
    pub(crate) fn last_review(&self) -> Option<&dyn Review> {
        self.last_review.as_deref()
    }

    /// The call in progress, for host functions that are about it.
    pub(crate) fn call(&self) -> wasmtime::Result<&Call> {
        self.call.as_ref().ok_or_else(|| {
            wasmtime::format_err!(
                "the plugin asked about the request outside `authenticate` (there is no call in progress)"
            )
        })
    }

    pub(crate) fn tripped(&self) -> Tripped {
        self.tripped
    }

    /// Records that the call's wall-clock bound cut the guest off for waiting.
    pub(crate) fn trip_deadline(&mut self) {
        self.tripped = Tripped::Deadline;
    }

    /// When the call in progress started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The clock of the call in progress, for the call's bound.
    pub(crate) fn clock(&self) -> Arc<CallClock> {
        self.clock.clone()
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The time plugins see (`now-ms`): the embedder's clock.
    pub(crate) fn now_ms(&self) -> u64 {
        self.services.now_ms()
    }

    /// A plugin's log line (the `log` import of every contract version).
    pub(crate) fn plugin_log(&self, level: LogLevel, message: &str) {
        emit(&self.plugin, "log", level, &self.log, message);
    }

    /// A verification on the plugin's behalf of the current call's bearer token (`token`
    /// given explicitly by contract 0.1), under the host-call timeout and within what remains
    /// of the call's wall-clock bound; its time does not count as guest CPU.
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
            .saturating_sub(started - self.started)
            .saturating_sub(self.limits.deadline);
        let timeout = self.limits.host_call_timeout.min(left);
        let cache = self.call.as_ref().map(|c| c.cache).unwrap_or_default();
        let services = self.services.clone();
        let call = async {
            match kind {
                ReviewKind::TokenReview => services.token_review(token, audiences, cache).await,
                ReviewKind::LocalJwt => services.verify_jwt(token, audiences).await,
            }
        };
        self.clock.enter_host();
        let (out, waited) = crate::call::bounded_by(started + timeout, call).await;
        self.clock.leave_host();
        // An answer at once (a cached review) is too short to excuse; a wait is excused.
        if waited {
            self.clock.excuse_host(started.elapsed());
        }
        if let Some(Ok(review)) = &out {
            if let Some(call) = &self.call
                && review.authenticated()
            {
                call.witness.saw(review.username());
            }
            self.last_review = Some(review.clone());
        }
        out.unwrap_or_else(|| {
            Err(ReviewError::Unavailable(format!(
                "{} did not answer within {} ms",
                kind.what(),
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
    let used = state
        .started
        .elapsed()
        .saturating_sub(state.clock.excused());
    let budget = state.limits.deadline;
    if used >= budget {
        state.tripped = Tripped::Deadline;
        return Ok(UpdateDeadline::Interrupt);
    }
    let next = ticks((budget - used).min(SLICE));
    let clock = state.clock.clone();
    Ok(UpdateDeadline::YieldCustom(
        next,
        Box::pin(async move {
            let started = Instant::now();
            tokio::task::yield_now().await;
            clock.excuse_parked(started.elapsed());
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
            cutting: false,
        })
    }
}

/// Splits a stream into lines. A line longer than [`MAX_LOG_LINE`] is logged once with its
/// first [`MAX_LOG_LINE`] bytes; the rest of it, up to its line break, is dropped and counted
/// (never logged as a line of its own).
struct LineWriter {
    target: LogStream,
    /// The start of the line being written (at most `MAX_LOG_LINE` bytes).
    pending: Vec<u8>,
    /// Whether the current line was already cut and logged: its remaining bytes are dropped.
    cutting: bool,
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

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let (line, rest, complete) = match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.cutting {
                self.target.budget.dropped(line.len());
            } else {
                let room = MAX_LOG_LINE - self.pending.len();
                let keep = line.len().min(room);
                self.pending.extend_from_slice(&line[..keep]);
                if keep < line.len() {
                    // Over the line limit: log the first MAX_LOG_LINE bytes now, drop the rest
                    // of this line.
                    self.target.budget.dropped(line.len() - keep);
                    let cut = std::mem::take(&mut self.pending);
                    self.emit(&cut);
                    self.cutting = true;
                }
            }
            if complete {
                if !self.cutting {
                    let line = std::mem::take(&mut self.pending);
                    self.emit(&line);
                }
                self.cutting = false;
            }
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
            self.target.budget.dropped(bytes.len());
            return Ok(());
        }
        self.write_bytes(&bytes);
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
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(budget: usize) -> (LineWriter, Arc<LogBudget>) {
        let budget = Arc::new(LogBudget {
            remaining: AtomicUsize::new(budget),
            stats: Arc::default(),
        });
        let w = LineWriter {
            target: LogStream {
                plugin: Arc::from("p"),
                stream: "stdout",
                budget: budget.clone(),
            },
            pending: Vec::new(),
            cutting: false,
        };
        (w, budget)
    }

    fn dropped(b: &LogBudget) -> u64 {
        b.stats.log_dropped_bytes.load(Ordering::Relaxed)
    }

    #[test]
    fn a_long_line_is_cut_once_and_its_tail_counted() {
        let (mut w, budget) = writer(MAX_LOG_PER_CALL);
        let line = format!("{}\nnext\n", "x".repeat(5_000));
        // Written in pieces, as a guest's buffered stdout does.
        for chunk in line.as_bytes().chunks(700) {
            w.write_bytes(chunk);
        }
        assert_eq!(dropped(&budget), 5_000 - MAX_LOG_LINE as u64);
        let spent = MAX_LOG_PER_CALL - budget.remaining.load(Ordering::Relaxed);
        // Two lines logged: the cut one and `next`, each with its framing.
        let framing = LOG_LINE_FRAMING + "p".len() + "stdout".len();
        assert_eq!(spent, MAX_LOG_LINE + framing + "next".len() + framing);
    }

    #[test]
    fn the_budget_counts_framing_and_escapes() {
        let (mut w, budget) = writer(MAX_LOG_PER_CALL);
        for _ in 0..16_384 {
            w.write_bytes(b"x\n");
        }
        let per_line = 1 + LOG_LINE_FRAMING + "p".len() + "stdout".len();
        let logged = MAX_LOG_PER_CALL / per_line;
        assert_eq!(dropped(&budget), (16_384 - logged) as u64);
        let (mut w, budget) = writer(MAX_LOG_PER_CALL);
        w.write_bytes(&[1u8; 2_000]);
        w.write_bytes(b"\n");
        // Each control byte is written escaped (`\u{1}`): what is charged.
        let spent = MAX_LOG_PER_CALL - budget.remaining.load(Ordering::Relaxed);
        let escaped = escape_text(&"\u{1}".repeat(2_000)).len();
        assert!(escaped >= 2_000 * 5, "{escaped}");
        assert_eq!(
            spent,
            escaped + LOG_LINE_FRAMING + "p".len() + "stdout".len()
        );
    }
}
