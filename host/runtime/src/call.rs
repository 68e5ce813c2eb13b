//! The bounds of one guest call besides the CPU deadline (which the epoch callback in
//! `sandbox.rs` enforces while the guest computes).
//!
//! Both are built to cost nothing on the common path: a plugin call or a cached review
//! finishes on its first poll, and a timer is armed only if it does not. Both are plain
//! future types holding the bounded future in place: an `async fn` taking a future by value
//! would keep a second copy of it, and these futures are large (a guest call is a wasmtime
//! fiber future), so every layer's copy showed up as memmove in profiles.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::time::Sleep;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How much longer than its CPU deadline (plus the time excused: host calls, parked after
/// yields) a call may take before a wait of its own — a WASI clock, a poll — cuts it off. It
/// absorbs timer and scheduling jitter, not guest work.
pub(crate) const WAIT_MARGIN: Duration = Duration::from_millis(100);

/// The time of the call in progress that is not the guest's: spent in host calls (reviews) and
/// parked after yielding to the executor. Shared with the call's wall-clock bound, which runs
/// while the store is borrowed by the call.
#[derive(Debug, Default)]
pub(crate) struct CallClock {
    /// Microseconds spent in host calls that finished.
    in_host_us: AtomicU64,
    /// Microseconds spent parked after yields.
    parked_us: AtomicU64,
    /// How many host calls are in progress (0 or 1: a guest makes one at a time).
    in_host_now: AtomicUsize,
}

impl CallClock {
    pub(crate) fn reset(&self) {
        self.in_host_us.store(0, Ordering::Relaxed);
        self.parked_us.store(0, Ordering::Relaxed);
        self.in_host_now.store(0, Ordering::Relaxed);
    }

    /// Time of the call so far that the guest does not answer for.
    pub(crate) fn excused(&self) -> Duration {
        Duration::from_micros(
            self.in_host_us.load(Ordering::Relaxed) + self.parked_us.load(Ordering::Relaxed),
        )
    }

    /// A host call starts.
    pub(crate) fn enter_host(&self) {
        self.in_host_now.fetch_add(1, Ordering::Relaxed);
    }

    /// A host call ended.
    pub(crate) fn leave_host(&self) {
        self.in_host_now.fetch_sub(1, Ordering::Relaxed);
    }

    /// Time in a host call the guest does not answer for.
    pub(crate) fn excuse_host(&self, d: Duration) {
        self.in_host_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Time parked after a yield, which the guest does not answer for.
    pub(crate) fn excuse_parked(&self, d: Duration) {
        self.parked_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Whether the guest is waiting on a host call right now (bounded by its own timeout).
    pub(crate) fn in_host_call(&self) -> bool {
        self.in_host_now.load(Ordering::Relaxed) > 0
    }
}

pin_project_lite::pin_project! {
    /// `fut`'s output, or `None` if it has not finished by `deadline` (see [`bounded_by`]).
    pub(crate) struct Bounded<F> {
        #[pin]
        fut: F,
        deadline: Instant,
        timer: Option<Pin<Box<Sleep>>>,
        // Whether `fut` needed more than its first poll.
        waited: bool,
    }
}

/// `fut`, bounded by `deadline`.
pub(crate) fn bounded_by<F: Future>(deadline: Instant, fut: F) -> Bounded<F> {
    Bounded {
        fut,
        deadline,
        timer: None,
        waited: false,
    }
}

impl<F: Future> Future for Bounded<F> {
    /// The output (`None`: the deadline passed) and whether it had to be waited for.
    type Output = (Option<F::Output>, bool);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready((Some(out), *this.waited));
        }
        *this.waited = true;
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        timer.as_mut().poll(cx).map(|()| (None, true))
    }
}

/// Why a guest call was cut off by [`guest_call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// It waited (not in a host call) past its CPU deadline.
    Waited,
    /// It reached the call's wall-clock bound (`call_timeout_ms`).
    Timeout,
}

pin_project_lite::pin_project! {
    /// One guest call under its wall-clock bounds (see [`guest_call`]).
    pub(crate) struct GuestCall<F> {
        #[pin]
        fut: F,
        started: Instant,
        // The guest's CPU deadline and the call's wall-clock bound.
        deadline: Duration,
        call_timeout: Duration,
        clock: Arc<CallClock>,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

/// Runs one guest call (`fut`, started at `started`) under its wall-clock bounds: the whole
/// call within `call_timeout`, and any wait that is not a host call within the CPU
/// `deadline`.
/// A guest has nothing to wait for but the host calls it makes, so wall time outside them and
/// outside the executor's parking counts as if the guest had computed it.
pub(crate) fn guest_call<F: Future>(
    fut: F,
    started: Instant,
    (deadline, call_timeout): (Duration, Duration),
    clock: Arc<CallClock>,
) -> GuestCall<F> {
    GuestCall {
        fut,
        started,
        deadline,
        call_timeout,
        clock,
        timer: None,
    }
}

impl<F: Future> Future for GuestCall<F> {
    type Output = Result<F::Output, Cut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(out) = this.fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            let now = Instant::now();
            let hard = *this.started + *this.call_timeout;
            if now >= hard {
                return Poll::Ready(Err(Cut::Timeout));
            }
            // A host call bounds itself (`host_call_timeout_ms`, within the call's bound); look
            // again when the call as a whole would be over.
            let wake = if this.clock.in_host_call() {
                hard
            } else {
                let allowed = *this.started + *this.deadline + this.clock.excused() + WAIT_MARGIN;
                if now >= allowed {
                    return Poll::Ready(Err(Cut::Waited));
                }
                allowed.min(hard)
            };
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake.into())));
            if timer.deadline() != wake.into() {
                timer.as_mut().reset(wake.into());
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(deadline_ms: u64, call_ms: u64) -> (Duration, Duration) {
        (
            Duration::from_millis(deadline_ms),
            Duration::from_millis(call_ms),
        )
    }

    #[tokio::test]
    async fn a_finished_future_arms_no_timer() {
        assert_eq!(
            bounded_by(Instant::now(), async { 7 }).await,
            (Some(7), false)
        );
        let pending = std::future::pending::<()>();
        let at = Instant::now() + Duration::from_millis(20);
        assert_eq!(bounded_by(at, pending).await, (None, true));
        assert!(Instant::now() >= at);
    }

    #[tokio::test]
    async fn a_wait_outside_host_calls_is_cut_at_the_deadline() {
        let started = Instant::now();
        let clock = Arc::new(CallClock::default());
        let sleep = tokio::time::sleep(Duration::from_secs(10));
        let out = guest_call(sleep, started, limits(50, 5_000), clock).await;
        assert_eq!(out, Err(Cut::Waited));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(50) + WAIT_MARGIN, "{took:?}");
        assert!(
            took < Duration::from_millis(50) + WAIT_MARGIN * 3,
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_host_call_is_not_a_wait_but_the_call_bound_still_holds() {
        let started = Instant::now();
        let clock = Arc::new(CallClock::default());
        clock.enter_host();
        let host = tokio::time::sleep(Duration::from_millis(300));
        let out = guest_call(host, started, limits(10, 5_000), clock.clone()).await;
        assert_eq!(out, Ok(()));
        let never = std::future::pending::<()>();
        let out = guest_call(never, Instant::now(), limits(10, 200), clock).await;
        assert_eq!(out, Err(Cut::Timeout));
    }
}
