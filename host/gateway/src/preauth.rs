//! The pre-auth budget: what a peer that has not authenticated yet may make the gateway spend,
//! kept apart from the capacity for sessions.
//!
//! - Unauthenticated sockets (accepted, not yet past `hello-ok`) are admitted at `accept`, in
//!   total and per client address — IPv6 addresses by their /64, since one host holds a whole
//!   /64. A socket over budget is closed at once, before TLS or the upgrade cost anything.
//!   Authenticated sessions never count here, so idle sockets from one address cannot keep an
//!   honest client from another address out.
//! - Failed handshakes drain a token bucket per address; an address with an empty bucket is
//!   answered `RATE_LIMITED` with `retryAfterMs` before its `connect` reaches the plugin chain,
//!   so a flood of bad credentials costs a table lookup per attempt, not a chain evaluation.
//!
//! The table of addresses is bounded: entries that hold no socket and whose bucket has refilled
//! carry no information and are dropped; past [`MAX_TRACKED`] addresses a new one is refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limits::ProtocolLimits;

/// Addresses tracked at most (sockets or recent failures); beyond it new addresses are refused.
pub(crate) const MAX_TRACKED: usize = 65_536;

/// The budget key of an address: IPv4 as is, IPv6 by its /64 (IPv4-mapped IPv6 as IPv4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum AddrKey {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for AddrKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(u32::from(v4)),
                None => AddrKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The gateway holds `max_unauthenticated` unauthenticated sockets.
    Total,
    /// This address holds `max_unauthenticated_per_address`.
    PerAddress,
    /// The address table is full.
    Tracking,
}

impl Refused {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "total",
            Refused::PerAddress => "per-address",
            Refused::Tracking => "tracking",
        }
    }
}

struct Entry {
    /// Unauthenticated sockets open from this address.
    open: usize,
    /// Failed-handshake tokens left, refilled at `rate` per second up to `burst`.
    tokens: f64,
    refilled: Instant,
}

struct Table {
    total: usize,
    by_addr: HashMap<AddrKey, Entry>,
}

/// The pre-auth budget of one gateway.
pub(crate) struct PreAuth {
    max_total: usize,
    max_per_addr: usize,
    rate: f64,
    burst: f64,
    table: Mutex<Table>,
}

impl std::fmt::Debug for PreAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreAuth")
            .field("max_total", &self.max_total)
            .field("max_per_addr", &self.max_per_addr)
            .finish_non_exhaustive()
    }
}

/// An admitted unauthenticated socket; dropping it (at `hello-ok` or when the socket ends)
/// gives its place back.
pub(crate) struct Admission {
    budget: Arc<PreAuth>,
    key: AddrKey,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.budget.release(self.key);
    }
}

impl PreAuth {
    pub(crate) fn new(limits: &ProtocolLimits) -> Self {
        Self {
            max_total: limits.max_unauthenticated,
            max_per_addr: limits.unauthenticated_per_address(),
            rate: f64::from(limits.failed_handshakes_per_second),
            burst: f64::from(limits.failed_handshake_burst),
            table: Mutex::new(Table {
                total: 0,
                by_addr: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every update leaves the table consistent, so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refill(&self, e: &mut Entry, now: Instant) {
        let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
        e.tokens = (e.tokens + elapsed * self.rate).min(self.burst);
        e.refilled = now;
    }

    /// Whether an entry says nothing a fresh one would not.
    fn idle(&self, e: &Entry) -> bool {
        e.open == 0 && e.tokens >= self.burst
    }

    /// Admits an unauthenticated socket from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admission, Refused> {
        let key = AddrKey::from(ip);
        let now = Instant::now();
        let mut t = self.lock();
        if t.total >= self.max_total {
            return Err(Refused::Total);
        }
        if !t.by_addr.contains_key(&key) && t.by_addr.len() >= MAX_TRACKED {
            // Forget addresses whose buckets have refilled before refusing a new one.
            let (rate, burst) = (self.rate, self.burst);
            t.by_addr.retain(|_, e| {
                let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
                e.open > 0 || e.tokens + elapsed * rate < burst
            });
            if t.by_addr.len() >= MAX_TRACKED {
                return Err(Refused::Tracking);
            }
        }
        let burst = self.burst;
        let entry = t.by_addr.entry(key).or_insert(Entry {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if entry.open >= self.max_per_addr {
            return Err(Refused::PerAddress);
        }
        entry.open += 1;
        t.total += 1;
        Ok(Admission {
            budget: self.clone(),
            key,
        })
    }

    fn release(&self, key: AddrKey) {
        let now = Instant::now();
        let mut t = self.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(mut e) = t.by_addr.remove(&key) {
            e.open = e.open.saturating_sub(1);
            self.refill(&mut e, now);
            if !self.idle(&e) {
                t.by_addr.insert(key, e);
            }
        }
    }

    /// Whether `ip` may attempt a handshake now; `Err(retry after)` if its failures used up
    /// its bucket.
    pub(crate) fn may_attempt(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = AddrKey::from(ip);
        let now = Instant::now();
        let mut t = self.lock();
        let Some(e) = t.by_addr.get_mut(&key) else {
            return Ok(());
        };
        self.refill(e, now);
        if e.tokens >= 1.0 {
            Ok(())
        } else {
            let wait = (1.0 - e.tokens) / self.rate.max(f64::MIN_POSITIVE);
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }

    /// Records a failed handshake from `ip` (a refusal or a protocol violation).
    pub(crate) fn failed(&self, ip: IpAddr) {
        let key = AddrKey::from(ip);
        let now = Instant::now();
        let mut t = self.lock();
        let burst = self.burst;
        let len = t.by_addr.len();
        let e = match t.by_addr.get_mut(&key) {
            Some(e) => e,
            // Usually the socket's own entry exists; a failure after it is gone is recorded
            // only while the table has room.
            None if len < MAX_TRACKED => t.by_addr.entry(key).or_insert(Entry {
                open: 0,
                tokens: burst,
                refilled: now,
            }),
            None => return,
        };
        self.refill(e, now);
        e.tokens = (e.tokens - 1.0).max(0.0);
    }

    /// Unauthenticated sockets open now.
    pub(crate) fn open(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(total: usize, per: usize, rate: u32, burst: u32) -> Arc<PreAuth> {
        Arc::new(PreAuth::new(&ProtocolLimits {
            max_unauthenticated: total,
            max_unauthenticated_per_address: Some(per),
            failed_handshakes_per_second: rate,
            failed_handshake_burst: burst,
            ..ProtocolLimits::default()
        }))
    }

    #[test]
    fn sockets_are_budgeted_per_address_and_in_total_and_given_back() {
        let b = budget(3, 2, 1, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let c: IpAddr = "10.0.0.2".parse().unwrap();
        let x1 = b.admit(a).unwrap();
        let _x2 = b.admit(a).unwrap();
        assert_eq!(b.admit(a).err(), Some(Refused::PerAddress));
        let _y1 = b.admit(c).unwrap();
        assert_eq!(b.admit(c).err(), Some(Refused::Total));
        drop(x1);
        assert_eq!(b.open(), 2);
        assert!(b.admit(a).is_ok());
    }

    #[test]
    fn ipv6_is_budgeted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let b = budget(100, 1, 1, 1);
        let _a = b.admit("2001:db8:0:1::1".parse().unwrap()).unwrap();
        assert_eq!(
            b.admit("2001:db8:0:1::ffff".parse().unwrap()).err(),
            Some(Refused::PerAddress),
            "same /64"
        );
        assert!(b.admit("2001:db8:0:2::1".parse().unwrap()).is_ok());
        let _v4 = b.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(
            b.admit("::ffff:192.0.2.1".parse().unwrap()).err(),
            Some(Refused::PerAddress)
        );
    }

    #[test]
    fn failures_drain_the_bucket_and_time_refills_it() {
        let b = budget(10, 10, 1000, 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let _s = b.admit(a).unwrap();
        for _ in 0..3 {
            assert!(b.may_attempt(a).is_ok());
            b.failed(a);
        }
        let wait = b.may_attempt(a).unwrap_err();
        assert!(wait <= Duration::from_millis(2), "{wait:?}");
        // Another address is unaffected.
        assert!(b.may_attempt("10.0.0.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn idle_entries_are_forgotten() {
        let b = budget(10, 10, 1, 5);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(b.admit(a).unwrap());
        assert!(b.lock().by_addr.is_empty(), "nothing to remember");
        let s = b.admit(a).unwrap();
        b.failed(a);
        drop(s);
        assert_eq!(b.lock().by_addr.len(), 1, "a recent failure is remembered");
    }
}
