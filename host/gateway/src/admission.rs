//! Session admission: `limits.max_connections` as slots taken atomically when a `connect`
//! arrives, before the chain runs, and held for the life of the session. A handshake refused
//! anywhere after that drops its slot; so does a session when its connection ends. The count
//! is therefore exact under any concurrency: a slow chain (a TokenReview) cannot let more
//! handshakes through a check that something else counts later.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The session slots of one gateway.
#[derive(Debug)]
pub(crate) struct SessionSlots {
    max: usize,
    taken: AtomicUsize,
}

/// One taken slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct SessionSlot(Arc<SessionSlots>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.taken.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SessionSlots {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            taken: AtomicUsize::new(0),
        })
    }

    /// A slot, or `None` when all `max` are taken (by sessions and by handshakes deciding).
    pub(crate) fn take(self: &Arc<Self>) -> Option<SessionSlot> {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| SessionSlot(self.clone()))
    }

    /// Slots taken now.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_max_whatever_the_threads() {
        let slots = SessionSlots::new(50);
        let held = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if let Some(slot) = slots.take() {
                            held.lock().unwrap().push(slot);
                        }
                    }
                });
            }
        });
        assert_eq!(held.lock().unwrap().len(), 50);
        assert_eq!(slots.taken(), 50);
        held.lock().unwrap().clear();
        assert_eq!(slots.taken(), 0);
        assert!(slots.take().is_some());
    }
}
