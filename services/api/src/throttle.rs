//! Limits on guessing credentials and on request rates, kept per process.
//!
//! - Failed credential checks (the token endpoint's HTTP Basic secret, a
//!   Passage bearer) are counted per client address and per API key. An
//!   address over its limit is refused every check, whatever key it names.
//!   A key over its limit is refused only to addresses that have not proved
//!   that key recently: the holder, at another address, keeps working while
//!   someone elsewhere guesses its secret.
//! - `--rate-limit N` admits N requests a second per credential (bursts of
//!   N); off by default.
//! - Every limit is a leaky bucket: each counted event adds one, the level
//!   drains at the limit's rate, and an event that would overflow waits for
//!   `Retry-After` seconds. The buckets read [`Clock`], so tests move time.
//! - Counters live in this process: with several instances behind a load
//!   balancer an address gets each instance's allowance. The maps are
//!   bounded: when one is full, buckets that have drained are dropped, and
//!   if none has, the map is cleared (an attacker who fills it resets it,
//!   which gains him no more than new addresses would).

use crate::clock::Clock;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Failed checks an address may make at once, and per minute after that.
pub const ADDRESS_FAILURES: Rate = Rate { burst: 10, per_second: 10.0 / 60.0 };
/// Failed checks of one key (from all addresses it has not been proved at).
pub const KEY_FAILURES: Rate = Rate { burst: 20, per_second: 20.0 / 60.0 };
/// How long a successful check marks an address as the key's holder.
const PROVEN_FOR: Duration = Duration::from_secs(24 * 3600);
/// Most buckets one map holds.
const MAX_ENTRIES: usize = 100_000;

/// A bucket's size and how fast it drains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: f64,
}

impl Bucket {
    fn drained(self, now: f64, rate: Rate) -> Bucket {
        Bucket { level: (self.level - (now - self.at).max(0.0) * rate.per_second).max(0.0), at: now }
    }

    /// How long until one more event fits, if it does not now.
    fn wait(self, rate: Rate) -> Option<Duration> {
        let over = self.level + 1.0 - f64::from(rate.burst);
        (over > 0.0).then(|| Duration::from_secs_f64(over / rate.per_second))
    }
}

/// Leaky buckets by key, bounded in number.
struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Buckets { rate, map: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Bucket>> {
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Some(wait)` when one more event would overflow `key`'s bucket.
    fn over(&self, key: &K, now: f64) -> Option<Duration> {
        self.lock().get(key).and_then(|b| b.drained(now, self.rate).wait(self.rate))
    }

    /// Counts one event.
    fn add(&self, key: &K, now: f64) {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
            map.retain(|_, b| b.drained(now, self.rate).level > 0.0);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let bucket = map.entry(key.clone()).or_insert(Bucket { level: 0.0, at: now });
        *bucket = bucket.drained(now, self.rate);
        bucket.level += 1.0;
    }

    /// Counts one event unless it would overflow; then how long to wait.
    fn take(&self, key: &K, now: f64) -> Result<(), Duration> {
        match self.over(key, now) {
            Some(wait) => Err(wait),
            None => {
                self.add(key, now);
                Ok(())
            }
        }
    }
}

/// Why a caller must wait, and for how long (the `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after: Duration,
}

impl Refused {
    /// Whole seconds, at least 1, for the `Retry-After` header.
    pub fn seconds(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

pub struct Throttle {
    clock: Clock,
    addresses: Buckets<IpAddr>,
    keys: Buckets<String>,
    /// (key, address) → when the address last proved the key.
    proven: Mutex<HashMap<(String, IpAddr), f64>>,
    requests: Option<Buckets<String>>,
}

impl Throttle {
    /// `rate_limit`: requests a second per credential, `None` for no limit.
    pub fn new(clock: Clock, rate_limit: Option<u32>) -> Throttle {
        Throttle {
            clock,
            addresses: Buckets::new(ADDRESS_FAILURES),
            keys: Buckets::new(KEY_FAILURES),
            proven: Mutex::new(HashMap::new()),
            requests: rate_limit.filter(|n| *n > 0).map(|n| Buckets::new(Rate { burst: n, per_second: f64::from(n) })),
        }
    }

    fn now(&self) -> f64 {
        let now = self.clock.now();
        now.unix_timestamp() as f64 + f64::from(now.nanosecond()) / 1e9
    }

    fn is_proven(&self, key: &str, address: Option<IpAddr>, now: f64) -> bool {
        let Some(address) = address else { return false };
        let proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        proven.get(&(key.to_string(), address)).is_some_and(|at| now - at < PROVEN_FOR.as_secs_f64())
    }

    /// Before a credential check: refused when the address, or the key (at
    /// an address that has not proved it), has failed too often. `key` is
    /// the API key the caller names, `None` when it names none.
    pub fn before_check(&self, address: Option<IpAddr>, key: Option<&str>) -> Result<(), Refused> {
        let now = self.now();
        let by_address = address.and_then(|a| self.addresses.over(&a, now));
        let by_key = key.filter(|k| !self.is_proven(k, address, now)).and_then(|k| self.keys.over(&k.to_string(), now));
        match by_address.into_iter().chain(by_key).max() {
            Some(retry_after) => Err(Refused { retry_after }),
            None => Ok(()),
        }
    }

    /// A check failed: counts against the address and the key.
    pub fn failed(&self, address: Option<IpAddr>, key: Option<&str>) {
        let now = self.now();
        if let Some(address) = address {
            self.addresses.add(&address, now);
        }
        if let Some(key) = key.filter(|k| !self.is_proven(k, address, now)) {
            self.keys.add(&key.to_string(), now);
        }
    }

    /// A check succeeded: the address is now a holder of the key. Its
    /// failures still count (a valid key must not reset a guesser's limit).
    pub fn succeeded(&self, address: Option<IpAddr>, key: &str) {
        let Some(address) = address else { return };
        let now = self.now();
        let mut proven = self.proven.lock().unwrap_or_else(|p| p.into_inner());
        if proven.len() >= MAX_ENTRIES {
            proven.retain(|_, at| now - *at < PROVEN_FOR.as_secs_f64());
            if proven.len() >= MAX_ENTRIES {
                proven.clear();
            }
        }
        proven.insert((key.to_string(), address), now);
    }

    /// One request of a credential, under `--rate-limit`.
    pub fn request(&self, key_id: &str) -> Result<(), Refused> {
        match &self.requests {
            None => Ok(()),
            Some(buckets) => {
                buckets.take(&key_id.to_string(), self.now()).map_err(|retry_after| Refused { retry_after })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn throttle(rate_limit: Option<u32>) -> (Throttle, Clock) {
        let clock = Clock::manual(OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000));
        (Throttle::new(clock.clone(), rate_limit), clock)
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn an_address_that_keeps_failing_waits_then_may_try_again() {
        let (t, clock) = throttle(None);
        for n in 0..ADDRESS_FAILURES.burst {
            assert_eq!(t.before_check(ip(1), Some(&format!("k{n}"))), Ok(()));
            t.failed(ip(1), Some(&format!("k{n}")));
        }
        let refused = t.before_check(ip(1), Some("another")).expect_err("over the address limit");
        assert_eq!(refused.seconds(), 6);
        assert_eq!(t.before_check(ip(2), Some("another")), Ok(()));
        clock.advance(time::Duration::seconds(6));
        assert_eq!(t.before_check(ip(1), Some("another")), Ok(()));
    }

    #[test]
    fn guessing_a_key_from_many_addresses_does_not_lock_out_its_holder() {
        let (t, _) = throttle(None);
        t.succeeded(ip(200), "k");
        for n in 0..KEY_FAILURES.burst {
            t.failed(ip(n as u8), Some("k"));
        }
        assert!(t.before_check(ip(100), Some("k")).is_err(), "a new address is refused the key");
        assert_eq!(t.before_check(ip(100), Some("other")), Ok(()), "but not other keys");
        assert_eq!(t.before_check(ip(200), Some("k")), Ok(()), "the holder's address goes on");
    }

    #[test]
    fn the_request_rate_is_per_credential_and_off_by_default() {
        let (t, clock) = throttle(Some(2));
        assert_eq!(t.request("a"), Ok(()));
        assert_eq!(t.request("a"), Ok(()));
        assert_eq!(t.request("a").map_err(|r| r.seconds()), Err(1));
        assert_eq!(t.request("b"), Ok(()));
        clock.advance(time::Duration::milliseconds(500));
        assert_eq!(t.request("a"), Ok(()));
        let (off, _) = throttle(None);
        assert!((0..10_000).all(|_| off.request("a").is_ok()));
    }
}
