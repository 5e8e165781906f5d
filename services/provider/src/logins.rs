//! The state of logins, bounded whatever clients do: the SRP handshakes
//! between `LoginStart` and `LoginFinish` ([`PendingLogins`]) and the failed
//! logins that make the next attempts wait ([`FailedLogins`]).
//!
//! **Pending logins** live for [`LOGIN_TIMEOUT`]. One client network holds
//! at most [`MAX_PENDING_PER_NETWORK`] (a new one makes it forget its
//! oldest), all networks together at most [`MAX_PENDING_LOGINS`] (a new
//! one makes the provider forget the oldest of all). Nothing is ever
//! refused for lack of room: a flood from one network only replaces its own
//! logins, and a flood from many must outrun a real login's two steps by
//! [`MAX_PENDING_LOGINS`] starts to push it out. There is no bound per
//! address: it would hand the eviction of the real user's login to whoever
//! starts logins as that user.
//!
//! **Failed logins** are counted per (address, client network). After the
//! n-th wrong proof in a row from a network for an address, that network's
//! next proof for that address is taken only `min(n, 30)` seconds later
//! (an earlier one is refused unchecked, saying how long to wait). Each
//! address also has a budget of failures from all networks together
//! ([`ADDRESS_FAILURE_BURST`], then one per [`ADDRESS_FAILURE_REFILL`]);
//! while it is spent, only networks without a recent failure for that
//! address are still checked. So guesses cannot run in parallel, a flood of
//! wrong passphrases never delays another address nor the real user on
//! another network (checked at once), and the real user on the attacker's
//! own network waits at most 30 seconds for a turn. Counts are forgotten
//! [`FAILURE_MEMORY`] after a network's last failure, and a right proof
//! clears its network's count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bitmask_auth::ServerLogin;
use tokio::time::Instant;

use crate::limits::{Network, TokenBucket};

/// How long a login may take between its two steps.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Logins under way at once, over all networks.
pub const MAX_PENDING_LOGINS: usize = 10_000;
/// Logins under way at once from one client network.
pub const MAX_PENDING_PER_NETWORK: usize = 64;
/// A network's failures for an address are forgotten this long after its last.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// The longest wait after a failed login.
pub const MAX_FAILURE_DELAY_SECONDS: u32 = 30;
/// Failures of one address from all networks before only new networks are checked.
pub const ADDRESS_FAILURE_BURST: u32 = 30;
/// How fast an address's failure budget comes back.
pub const ADDRESS_FAILURE_REFILL: Duration = Duration::from_secs(30);
/// Networks remembered per address; beyond, an unlisted network counts as one that failed.
pub const MAX_NETWORKS_PER_ADDRESS: usize = 32;
/// Addresses with failures remembered at once.
pub const MAX_FAILING_ADDRESSES: usize = 10_000;

/// One login between LoginStart and LoginFinish.
struct Pending<T> {
    age: u64,
    address: String,
    network: Network,
    server: T,
    started: Instant,
}

/// The logins under way, each with its server state `T` (SRP's
/// [`ServerLogin`]).
pub struct PendingLogins<T = ServerLogin> {
    next_age: u64,
    by_id: HashMap<String, Pending<T>>,
    /// Login ids, oldest first.
    by_age: BTreeMap<u64, String>,
    by_network: HashMap<Network, BTreeSet<u64>>,
}

impl<T> Default for PendingLogins<T> {
    fn default() -> Self {
        Self { next_age: 0, by_id: HashMap::new(), by_age: BTreeMap::new(), by_network: HashMap::new() }
    }
}

impl<T> std::fmt::Debug for PendingLogins<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLogins").field("pending", &self.by_id.len()).finish_non_exhaustive()
    }
}

impl<T> PendingLogins<T> {
    /// Keeps a login under `login_id`, forgetting others as the bounds say.
    pub fn insert(&mut self, login_id: String, address: String, network: Network, server: T, now: Instant) {
        // Expired ones first: they are the oldest.
        while let Some((&age, id)) = self.by_age.first_key_value() {
            let expired = self.by_id.get(id).is_none_or(|login| now.duration_since(login.started) >= LOGIN_TIMEOUT);
            if !expired {
                break;
            }
            self.remove(age);
        }
        while self.by_network.get(&network).is_some_and(|ages| ages.len() >= MAX_PENDING_PER_NETWORK) {
            let Some(oldest) = self.by_network.get(&network).and_then(|ages| ages.first().copied()) else { break };
            self.remove(oldest);
        }
        while self.by_id.len() >= MAX_PENDING_LOGINS {
            let Some((&oldest, _)) = self.by_age.first_key_value() else { break };
            self.remove(oldest);
        }
        let age = self.next_age;
        self.next_age += 1;
        self.by_age.insert(age, login_id.clone());
        self.by_network.entry(network).or_default().insert(age);
        self.by_id.insert(login_id, Pending { age, address, network, server, started: now });
    }

    /// The login `login_id` (once): its address and server state, if it is
    /// under way and not expired.
    pub fn take(&mut self, login_id: &str, now: Instant) -> Option<(String, T)> {
        let age = self.by_id.get(login_id)?.age;
        let login = self.remove(age)?;
        (now.duration_since(login.started) < LOGIN_TIMEOUT).then_some((login.address, login.server))
    }

    fn remove(&mut self, age: u64) -> Option<Pending<T>> {
        let id = self.by_age.remove(&age)?;
        let login = self.by_id.remove(&id)?;
        if let Some(ages) = self.by_network.get_mut(&login.network) {
            ages.remove(&age);
            if ages.is_empty() {
                self.by_network.remove(&login.network);
            }
        }
        Some(login)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// One network's failures for one address.
#[derive(Debug)]
struct NetworkFailures {
    count: u32,
    next_allowed: Instant,
    last: Instant,
}

/// One address's failures.
#[derive(Debug)]
struct AddressFailures {
    budget: TokenBucket,
    networks: HashMap<Network, NetworkFailures>,
    last: Instant,
}

impl AddressFailures {
    fn forget_old(&mut self, now: Instant) {
        self.networks.retain(|_, failures| now.duration_since(failures.last) < FAILURE_MEMORY);
    }

    fn forgettable(&mut self, now: Instant) -> bool {
        self.forget_old(now);
        self.networks.is_empty() && self.budget.is_full(now)
    }
}

/// Failed logins per address and network.
#[derive(Debug, Default)]
pub struct FailedLogins {
    addresses: HashMap<String, AddressFailures>,
}

/// The wait after `count` failures in a row.
pub fn failure_delay(count: u32) -> Duration {
    Duration::from_secs(u64::from(count.clamp(1, MAX_FAILURE_DELAY_SECONDS)))
}

impl FailedLogins {
    /// Whether a proof for `address` from `network` is checked now; if not,
    /// how long until it would be.
    pub fn gate(&mut self, address: &str, network: Network, now: Instant) -> Result<(), Duration> {
        let Some(failures) = self.addresses.get_mut(address) else { return Ok(()) };
        failures.forget_old(now);
        let known = failures.networks.get(&network);
        if let Some(known) = known
            && now < known.next_allowed
        {
            return Err(known.next_allowed.duration_since(now));
        }
        if failures.budget.has_token(now) {
            return Ok(());
        }
        let full = failures.networks.len() >= MAX_NETWORKS_PER_ADDRESS;
        if known.is_some() || full { Err(failures.budget.wait(now).max(Duration::from_secs(1))) } else { Ok(()) }
    }

    /// A right proof: `network`'s count for `address` is cleared.
    pub fn succeeded(&mut self, address: &str, network: Network, now: Instant) {
        if let Some(failures) = self.addresses.get_mut(address) {
            failures.networks.remove(&network);
            if failures.forgettable(now) {
                self.addresses.remove(address);
            }
        }
    }

    /// A wrong proof: counted; the wait before `network`'s next proof for
    /// `address`.
    pub fn failed(&mut self, address: &str, network: Network, now: Instant) -> Duration {
        if !self.addresses.contains_key(address) && self.addresses.len() >= MAX_FAILING_ADDRESSES {
            self.make_room(now);
        }
        let failures = self.addresses.entry(address.to_owned()).or_insert_with(|| AddressFailures {
            budget: TokenBucket::full(ADDRESS_FAILURE_BURST, ADDRESS_FAILURE_REFILL, now),
            networks: HashMap::new(),
            last: now,
        });
        failures.last = now;
        failures.budget.spend(now);
        failures.forget_old(now);
        let room = failures.networks.len() < MAX_NETWORKS_PER_ADDRESS;
        match failures.networks.get_mut(&network) {
            Some(known) => {
                known.count = known.count.saturating_add(1);
                known.last = now;
                let delay = failure_delay(known.count);
                known.next_allowed = now + delay;
                delay
            }
            None if room => {
                let delay = failure_delay(1);
                failures.networks.insert(network, NetworkFailures { count: 1, next_allowed: now + delay, last: now });
                delay
            }
            // Not remembered: the address's budget is what holds it back.
            None => failure_delay(1),
        }
    }

    /// Forgets what is forgettable, then, if still full, the address whose
    /// last failure is oldest.
    fn make_room(&mut self, now: Instant) {
        self.addresses.retain(|_, failures| !failures.forgettable(now));
        if self.addresses.len() >= MAX_FAILING_ADDRESSES {
            let oldest = self.addresses.iter().min_by_key(|(_, failures)| failures.last).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.addresses.remove(&oldest);
            }
        }
    }

    pub fn addresses(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn network(last: u8) -> Network {
        Network::of(std::net::IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn pending_logins_are_bounded_per_network_and_in_all_and_expire() {
        let now = Instant::now();
        let mut pending = PendingLogins::<()>::default();
        pending.insert("real".into(), "alice@example.org".into(), network(1), (), now);
        // A flood from one network replaces its own logins only.
        for n in 0..200 {
            pending.insert(format!("flood-{n}"), "alice@example.org".into(), network(2), (), now);
        }
        assert_eq!(pending.len(), 1 + MAX_PENDING_PER_NETWORK);
        assert!(pending.take("flood-0", now).is_none());
        assert!(pending.take("flood-199", now).is_some());
        assert_eq!(pending.take("real", now).unwrap().0, "alice@example.org");
        assert!(pending.take("real", now).is_none(), "once");
        // Expired ones are gone, and swept when the next comes.
        pending.insert("late".into(), "bob@example.org".into(), network(3), (), now);
        let later = now + LOGIN_TIMEOUT;
        assert!(pending.take("late", later).is_none());
        pending.insert("new".into(), "bob@example.org".into(), network(3), (), later);
        assert_eq!(pending.len(), 1);

        // Many networks: the oldest of all make room, nothing is refused.
        for n in 0..MAX_PENDING_LOGINS + 10 {
            let spread = Network::of(std::net::IpAddr::from((n as u32 + (10 << 24)).to_be_bytes()));
            pending.insert(format!("spread-{n}"), "x@example.org".into(), spread, (), later);
        }
        assert_eq!(pending.len(), MAX_PENDING_LOGINS);
        assert!(pending.take("new", later).is_none());
        assert!(pending.take("spread-9", later).is_none());
        assert!(pending.take("spread-10", later).is_some());
    }
}
