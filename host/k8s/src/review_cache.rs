//! The review cache. Entries are keyed by an HMAC of (token, audiences) under a key that
//! lives only in this process, so neither memory dumps of the map nor timing of lookups reveal
//! a token. Accepted tokens are trusted for at most the TTL and never past their own expiry;
//! rejected tokens for a shorter TTL; failures are never cached. Concurrent reviews of the same
//! (token, audiences) share one API call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;

use super::{ReviewFailure, ReviewOutcome};
use crate::now_ms;

type Key = [u8; 32];
type Shared = Option<Result<Arc<ReviewOutcome>, ReviewFailure>>;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// From the cache.
    Hit,
    /// This call performed the review.
    Miss,
    /// Waited on an identical review in flight.
    Coalesced,
}

enum Slot {
    Ready {
        outcome: Arc<ReviewOutcome>,
        until: Instant,
    },
    InFlight(watch::Receiver<Shared>),
}

pub(super) struct ReviewCache {
    mac_key: [u8; 32],
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<Key, Slot>>,
}

/// Removes an in-flight marker whose review was abandoned (its caller was cancelled), so
/// waiters get an error instead of hanging and the next caller starts afresh.
struct InFlightGuard<'a> {
    cache: &'a ReviewCache,
    key: Key,
    armed: bool,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut slots = self.cache.lock();
            if matches!(slots.get(&self.key), Some(Slot::InFlight(_))) {
                slots.remove(&self.key);
            }
        }
    }
}

impl ReviewCache {
    pub(super) fn new(ttl: Duration, negative_ttl: Duration, max_entries: usize) -> Self {
        let mut mac_key = [0u8; 32];
        rand::fill(&mut mac_key);
        Self {
            mac_key,
            ttl,
            negative_ttl,
            max_entries: max_entries.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, token: &str, audiences: &[String]) -> Key {
        #[allow(clippy::expect_used)] // HMAC accepts keys of any length
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.mac_key).expect("any key length");
        mac.update(token.as_bytes());
        for a in audiences {
            mac.update(&[0]);
            mac.update(a.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn lifetime(&self, outcome: &ReviewOutcome) -> Duration {
        if !outcome.authenticated {
            return self.negative_ttl;
        }
        match outcome.expires_at_ms {
            Some(exp) => self
                .ttl
                .min(Duration::from_millis(exp.saturating_sub(now_ms()))),
            None => self.ttl,
        }
    }

    fn store(&self, key: Key, outcome: &Arc<ReviewOutcome>) {
        let lifetime = self.lifetime(outcome);
        let mut slots = self.lock();
        if lifetime.is_zero() {
            slots.remove(&key);
            return;
        }
        slots.insert(
            key,
            Slot::Ready {
                outcome: outcome.clone(),
                until: Instant::now() + lifetime,
            },
        );
        if slots.len() > self.max_entries {
            let now = Instant::now();
            slots.retain(|_, s| !matches!(s, Slot::Ready { until, .. } if *until <= now));
        }
        while slots.len() > self.max_entries {
            // Evict the entry closest to expiry (never one in flight: others wait on it).
            let victim = slots
                .iter()
                .filter(|(k, _)| **k != key)
                .filter_map(|(k, s)| match s {
                    Slot::Ready { until, .. } => Some((*until, *k)),
                    Slot::InFlight(_) => None,
                })
                .min()
                .map(|(_, k)| k);
            match victim {
                Some(k) => {
                    slots.remove(&k);
                }
                None => break,
            }
        }
    }

    pub(super) async fn get_or_review<F, Fut>(
        &self,
        token: &str,
        audiences: &[String],
        fresh: bool,
        review: F,
    ) -> Result<(Arc<ReviewOutcome>, CacheOutcome), ReviewFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ReviewOutcome, ReviewFailure>>,
    {
        enum Action {
            Hit(Arc<ReviewOutcome>),
            Wait(watch::Receiver<Shared>),
            Lead(watch::Sender<Shared>),
        }
        let key = self.key(token, audiences);
        let action = {
            let mut slots = self.lock();
            match slots.get(&key) {
                Some(Slot::Ready { outcome, until }) if !fresh && *until > Instant::now() => {
                    Action::Hit(outcome.clone())
                }
                Some(Slot::InFlight(rx)) if !fresh => Action::Wait(rx.clone()),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    slots.insert(key, Slot::InFlight(rx));
                    Action::Lead(tx)
                }
            }
        };
        let mut rx = match action {
            Action::Hit(outcome) => return Ok((outcome, CacheOutcome::Hit)),
            Action::Lead(tx) => return self.lead(key, tx, review).await,
            Action::Wait(rx) => rx,
        };
        loop {
            if let Some(result) = rx.borrow_and_update().clone() {
                return result.map(|o| (o, CacheOutcome::Coalesced));
            }
            if rx.changed().await.is_err() {
                return Err(ReviewFailure::Unavailable {
                    message: "the review this request was waiting on was abandoned".into(),
                    retry_after: None,
                });
            }
        }
    }

    async fn lead<F, Fut>(
        &self,
        key: Key,
        tx: watch::Sender<Shared>,
        review: F,
    ) -> Result<(Arc<ReviewOutcome>, CacheOutcome), ReviewFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ReviewOutcome, ReviewFailure>>,
    {
        let mut guard = InFlightGuard {
            cache: self,
            key,
            armed: true,
        };
        let result = review().await.map(Arc::new);
        guard.armed = false;
        match &result {
            Ok(outcome) => self.store(key, outcome),
            Err(_) => {
                let mut slots = self.lock();
                if matches!(slots.get(&key), Some(Slot::InFlight(_))) {
                    slots.remove(&key);
                }
            }
        }
        let _ = tx.send(Some(result.clone()));
        result.map(|o| (o, CacheOutcome::Miss))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn ok(expires_at_ms: Option<u64>) -> ReviewOutcome {
        ReviewOutcome {
            authenticated: true,
            username: "u".into(),
            uid: String::new(),
            groups: vec![],
            extra: Default::default(),
            audiences: vec!["a".into()],
            error: None,
            expires_at_ms,
        }
    }

    #[tokio::test]
    async fn concurrent_identical_reviews_share_one_call() {
        let cache = Arc::new(ReviewCache::new(
            Duration::from_secs(60),
            Duration::from_secs(5),
            100,
        ));
        let calls = Arc::new(AtomicU32::new(0));
        let (release_tx, release_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls, mut release) = (cache.clone(), calls.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_review("tok", &["a".into()], false, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        while !*release.borrow_and_update() {
                            let _ = release.changed().await;
                        }
                        Ok(ok(None))
                    })
                    .await
            }));
        }
        // Let every task reach the cache before the one review completes.
        while Arc::strong_count(&calls) > 1 && calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        let mut kinds = Vec::new();
        for t in tasks {
            kinds.push(t.await.unwrap().unwrap().1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            kinds.iter().filter(|k| **k == CacheOutcome::Miss).count(),
            1
        );
        let (_, again) = cache
            .get_or_review("tok", &["a".into()], false, || async { unreachable!() })
            .await
            .unwrap();
        assert_eq!(again, CacheOutcome::Hit);
    }

    #[tokio::test]
    async fn failures_are_not_cached_and_expiry_caps_the_ttl() {
        let cache = ReviewCache::new(Duration::from_secs(60), Duration::from_secs(5), 100);
        let fail = cache
            .get_or_review("t", &[], false, || async {
                Err(ReviewFailure::Failed("boom".into()))
            })
            .await;
        assert!(fail.is_err());
        assert_eq!(cache.len(), 0);
        // a token that already expired is not cached at all
        cache
            .get_or_review("t", &[], false, || async { Ok(ok(Some(now_ms() - 1))) })
            .await
            .unwrap();
        assert_eq!(cache.len(), 0);
        // audiences are part of the key
        cache
            .get_or_review("t", &["x".into()], false, || async { Ok(ok(None)) })
            .await
            .unwrap();
        let (_, k) = cache
            .get_or_review("t", &["y".into()], false, || async { Ok(ok(None)) })
            .await
            .unwrap();
        assert_eq!(k, CacheOutcome::Miss);
        // fresh bypasses a hit
        let (_, k) = cache
            .get_or_review("t", &["x".into()], true, || async { Ok(ok(None)) })
            .await
            .unwrap();
        assert_eq!(k, CacheOutcome::Miss);
    }

    #[tokio::test]
    async fn the_cache_is_bounded() {
        let cache = ReviewCache::new(Duration::from_secs(60), Duration::from_secs(5), 3);
        for i in 0..10 {
            cache
                .get_or_review(&format!("t{i}"), &[], false, || async { Ok(ok(None)) })
                .await
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
    }
}
