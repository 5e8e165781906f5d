//! The provider's limits on what one client or one account may hold or do,
//! in one place: the client [`Network`] they are kept by, a
//! [`TokenBucket`] for rates, and [`ConnectionLimits`] for the SMTP
//! listeners' concurrent connections.
//!
//! Every table here is bounded: a client who makes up new keys (addresses,
//! networks) fills it up to its bound and no further.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The client a limit is kept for: an IPv4 address, or the /64 network of
/// an IPv6 address (what one customer is usually given: counting each of
/// its addresses apart would let one machine be 2^64 clients). An
/// IPv4-mapped IPv6 address counts as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network(IpAddr);

impl Network {
    pub fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = v6.to_bits() & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from_bits(prefix)))
                }
            },
        }
    }

    /// A request whose peer is not known (an in-process call): all such
    /// share one network.
    pub fn unknown() -> Self {
        Self(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A rate: up to `capacity` at once, one more each `refill_every`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: u32,
    refill_every: Duration,
    /// Tokens at `updated`.
    tokens: u32,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket. A zero `refill_every` refills at once.
    pub fn full(capacity: u32, refill_every: Duration, now: Instant) -> Self {
        Self { capacity, refill_every, tokens: capacity, updated: now }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.capacity || self.refill_every.is_zero() {
            self.tokens = self.capacity;
            self.updated = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.updated);
        let earned = elapsed.as_nanos() / self.refill_every.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.capacity);
            // The part of a period not yet earned is kept.
            let spent = self.refill_every.saturating_mul(earned);
            self.updated = if self.tokens >= self.capacity { now } else { self.updated + spent };
        }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            return Ok(());
        }
        Err(self.wait(now))
    }

    /// Takes a token if there is one (a cost that is paid whatever).
    pub fn spend(&mut self, now: Instant) {
        let _ = self.take(now);
    }

    /// Whether a token is there now.
    pub fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0
    }

    /// Whether the bucket is full (nothing to remember about it).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// How long until the next token.
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens > 0 {
            return Duration::ZERO;
        }
        (self.updated + self.refill_every).saturating_duration_since(now)
    }
}

/// Concurrent connections of one listener: at most `total`, and at most
/// `per_network` from one [`Network`].
#[derive(Debug)]
pub struct ConnectionLimits {
    total: usize,
    per_network: usize,
    open: Mutex<OpenConnections>,
}

#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    by_network: HashMap<Network, usize>,
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionRefused {
    /// The listener has `total` connections.
    Full,
    /// The client's network has `per_network` of them.
    FromNetwork,
}

/// A connection counted in its [`ConnectionLimits`] until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    network: Network,
}

impl ConnectionLimits {
    pub fn new(total: usize, per_network: usize) -> Arc<Self> {
        Arc::new(Self { total, per_network, open: Mutex::default() })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, OpenConnections> {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a connection from `address`, or why not.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, ConnectionRefused> {
        let network = Network::of(address);
        let mut open = self.open();
        let from_network = open.by_network.get(&network).copied().unwrap_or(0);
        if from_network >= self.per_network {
            return Err(ConnectionRefused::FromNetwork);
        }
        if open.total >= self.total {
            return Err(ConnectionRefused::Full);
        }
        open.total += 1;
        open.by_network.insert(network, from_network + 1);
        Ok(ConnectionSlot { limits: Arc::clone(self), network })
    }

    /// Connections open now (from `address`'s network, and in all).
    pub fn open_from(&self, address: IpAddr) -> (usize, usize) {
        let open = self.open();
        (open.by_network.get(&Network::of(address)).copied().unwrap_or(0), open.total)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open();
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.by_network.get_mut(&self.network) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.by_network.remove(&self.network);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn networks_are_ipv4_addresses_and_ipv6_slash_64s() {
        let of = |text: &str| Network::of(text.parse().unwrap());
        assert_eq!(of("192.0.2.1"), of("192.0.2.1"));
        assert_ne!(of("192.0.2.1"), of("192.0.2.2"));
        assert_eq!(of("2001:db8:1:2:aaaa::1"), of("2001:db8:1:2:ffff::9"));
        assert_ne!(of("2001:db8:1:2::1"), of("2001:db8:1:3::1"));
        assert_eq!(of("::ffff:192.0.2.1"), of("192.0.2.1"));
        assert_eq!(of("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::/64");
        assert_eq!(of("127.0.0.2").to_string(), "127.0.0.2");
    }

    #[test]
    fn a_bucket_refills_one_token_per_period_up_to_its_capacity() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(3, Duration::from_secs(10), start);
        assert!(bucket.is_full(start));
        for _ in 0..3 {
            bucket.take(start).unwrap();
        }
        assert_eq!(bucket.take(start), Err(Duration::from_secs(10)));
        assert_eq!(bucket.take(start + Duration::from_secs(4)), Err(Duration::from_secs(6)));
        // One period later one token; the time already earned towards the next is kept.
        bucket.take(start + Duration::from_secs(15)).unwrap();
        assert_eq!(bucket.wait(start + Duration::from_secs(15)), Duration::from_secs(5));
        assert!(bucket.has_token(start + Duration::from_secs(20)));
        // A long wait fills it, and no more.
        assert!(bucket.is_full(start + Duration::from_secs(1000)));
        for _ in 0..3 {
            bucket.take(start + Duration::from_secs(1000)).unwrap();
        }
        assert!(bucket.take(start + Duration::from_secs(1000)).is_err());
        // Spending an empty bucket does not go below zero.
        bucket.spend(start + Duration::from_secs(1000));
        assert!(bucket.take(start + Duration::from_secs(1010)).is_ok());
    }

    #[test]
    fn connections_are_limited_per_network_and_in_all() {
        let limits = ConnectionLimits::new(3, 2);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let three: IpAddr = "192.0.2.3".parse().unwrap();
        let first = limits.admit(one).unwrap();
        let _second = limits.admit(one).unwrap();
        assert_eq!(limits.admit(one).unwrap_err(), ConnectionRefused::FromNetwork);
        let _third = limits.admit(two).unwrap();
        assert_eq!(limits.admit(three).unwrap_err(), ConnectionRefused::Full);
        assert_eq!(limits.open_from(one), (2, 3));
        drop(first);
        assert_eq!(limits.open_from(one), (1, 2));
        let _fourth = limits.admit(three).unwrap();
    }
}
