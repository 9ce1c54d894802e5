//! Who may open connections and sessions: per client address, a cap on concurrent connections
//! and on connections still sending their request head, and a token bucket of handshakes;
//! across all addresses, a cap on connections still sending their head.
//!
//! An address is the client's IP (an IPv6 client counts by its /64, the block one subscriber
//! usually holds). A direct client is counted from its TCP connection, at accept; behind a
//! peer in `--trust-forwarded` (a load balancer holding many clients' connections) the client
//! is known only from `X-Forwarded-For`, so its requests in flight and its tunnels count as its
//! connections instead. The table is bounded: at most [`MAX_ADDRESSES`] addresses are
//! tracked, an idle one (no connection, full bucket) is forgotten, and beyond the bound new
//! addresses share one entry.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::IpNet;
use crate::metrics::{Metrics, Refusal};

/// Shards of the address table (short critical sections, no lock held across `.await`).
const SHARDS: usize = 64;
/// Most addresses tracked at once.
pub const MAX_ADDRESSES: usize = 65_536;
const MAX_PER_SHARD: usize = MAX_ADDRESSES / SHARDS;
/// The shared entry of addresses beyond [`MAX_ADDRESSES`].
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// The limits, from the configuration.
#[derive(Clone, Debug)]
pub struct AdmissionLimits {
    /// Time a connection has to send a complete request head.
    pub header_timeout: Duration,
    /// Connections still sending a request head, all addresses together.
    pub max_pending_heads: usize,
    /// Connections still sending a request head, per address.
    pub max_pending_heads_per_address: u32,
    /// Concurrent connections per address.
    pub max_connections_per_address: u32,
    /// Handshakes per second per address (the bucket's refill rate).
    pub handshake_rate: f64,
    /// Handshakes an address may make at once (the bucket's size).
    pub handshake_burst: f64,
}

#[derive(Debug)]
struct Entry {
    connections: u32,
    pending: u32,
    tokens: f64,
    refilled: Instant,
}

impl Entry {
    fn new(now: Instant, burst: f64) -> Self {
        Entry {
            connections: 0,
            pending: 0,
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant, limits: &AdmissionLimits) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limits.handshake_rate).min(limits.handshake_burst);
        self.refilled = now;
    }

    /// Holds nothing that a fresh entry would not: may be forgotten.
    fn is_idle(&mut self, now: Instant, limits: &AdmissionLimits) -> bool {
        if self.connections > 0 || self.pending > 0 {
            return false;
        }
        self.refill(now, limits);
        self.tokens >= limits.handshake_burst
    }
}

/// The admission state of one proxy process.
pub struct Admission {
    limits: AdmissionLimits,
    trusted: Vec<IpNet>,
    pending_heads: AtomicUsize,
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
    epoch: tokio::time::Instant,
}

/// The address an IP is counted under: IPv4 as is, IPv6 by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        v4 => v4,
    }
}

impl Admission {
    /// Admission with `limits`; peers in `trusted` are load balancers, not clients.
    pub fn new(limits: AdmissionLimits, trusted: Vec<IpNet>, metrics: Arc<Metrics>) -> Self {
        Admission {
            limits,
            trusted,
            pending_heads: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            metrics,
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &AdmissionLimits {
        &self.limits
    }

    /// Whether `peer` is a load balancer whose clients are named by `X-Forwarded-For`.
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(peer))
    }

    fn shard(&self, key: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update of plain counters.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the entry of `ip` (created when absent; forgotten after `f` when idle).
    fn with_entry<R>(&self, ip: IpAddr, f: impl FnOnce(&mut Entry) -> R) -> R {
        let now = Instant::now();
        let limits = &self.limits;
        let mut key = address_key(ip);
        let mut shard = self.shard(&key);
        if !shard.contains_key(&key) && shard.len() >= MAX_PER_SHARD {
            shard.retain(|_, e| !e.is_idle(now, limits));
            if shard.len() >= MAX_PER_SHARD {
                drop(shard);
                key = OVERFLOW;
                shard = self.shard(&key);
            }
        }
        let entry = shard
            .entry(key)
            .or_insert_with(|| Entry::new(now, limits.handshake_burst));
        entry.refill(now, limits);
        let result = f(entry);
        if entry.is_idle(now, limits) {
            shard.remove(&key);
        }
        result
    }

    /// Admits a new TCP connection from `peer`, which starts sending its head at once.
    /// A direct client's connection counts towards its address; a trusted peer's does not.
    pub fn accept(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Ticket, Refusal> {
        if self.pending_heads.fetch_add(1, Ordering::AcqRel) >= self.limits.max_pending_heads {
            self.pending_heads.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PendingHeads);
        }
        let client = peer.filter(|ip| !self.is_trusted(*ip));
        if let Some(ip) = client {
            let admitted = self.with_entry(ip, |e| {
                if e.connections >= self.limits.max_connections_per_address {
                    Err(Refusal::ConnectionsPerAddress)
                } else if e.pending >= self.limits.max_pending_heads_per_address {
                    Err(Refusal::PendingHeadsPerAddress)
                } else {
                    e.connections += 1;
                    e.pending += 1;
                    Ok(())
                }
            });
            if let Err(refusal) = admitted {
                self.pending_heads.fetch_sub(1, Ordering::AcqRel);
                return Err(refusal);
            }
        }
        self.metrics.pending_heads_changed(1);
        let clock = Arc::new(HeadClock {
            state: AtomicU64::new(self.now_state()),
            changed: Notify::new(),
        });
        Ok(Ticket {
            admission: self.clone(),
            client,
            clock,
        })
    }

    /// Takes one handshake from `client`'s bucket; `false` when it is empty.
    pub fn take_handshake(&self, client: IpAddr) -> bool {
        self.with_entry(client, |e| {
            if e.tokens >= 1.0 {
                e.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Counts a request or tunnel of `client` behind a trusted peer as one of its connections.
    pub fn client_slot(self: &Arc<Self>, client: IpAddr) -> Result<ClientSlot, Refusal> {
        self.with_entry(client, |e| {
            if e.connections >= self.limits.max_connections_per_address {
                Err(Refusal::ConnectionsPerAddress)
            } else {
                e.connections += 1;
                Ok(())
            }
        })?;
        Ok(ClientSlot {
            admission: self.clone(),
            client,
        })
    }

    /// Addresses tracked now (for tests and sizing).
    pub fn tracked_addresses(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    fn release_connection(&self, client: IpAddr) {
        self.with_entry(client, |e| e.connections = e.connections.saturating_sub(1));
    }

    fn head_started(&self, client: Option<IpAddr>) {
        self.pending_heads.fetch_add(1, Ordering::AcqRel);
        self.metrics.pending_heads_changed(1);
        if let Some(ip) = client {
            self.with_entry(ip, |e| e.pending += 1);
        }
    }

    fn head_finished(&self, client: Option<IpAddr>) {
        self.pending_heads.fetch_sub(1, Ordering::AcqRel);
        self.metrics.pending_heads_changed(-1);
        if let Some(ip) = client {
            self.with_entry(ip, |e| e.pending = e.pending.saturating_sub(1));
        }
    }

    /// A [`HeadClock`] state meaning "waiting for a head since now".
    fn now_state(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + WAITING_SINCE
    }

    fn deadline_of(&self, state: u64) -> tokio::time::Instant {
        self.epoch + Duration::from_millis(state - WAITING_SINCE) + self.limits.header_timeout
    }
}

/// [`HeadClock`] state: a request is being served (its head arrived).
const IN_REQUEST: u64 = 0;
/// [`HeadClock`] state: between two requests of a keep-alive connection.
const BETWEEN_REQUESTS: u64 = 1;
/// [`HeadClock`] states from here on: waiting for a head since `state - WAITING_SINCE` ms
/// after the admission's epoch.
const WAITING_SINCE: u64 = 2;

/// Where a connection is in its requests: sending a head (since when), being served, or idle
/// between two requests. Shared by the connection's stream (which sees the first byte of the
/// next head), the proxy's hooks (which see a head complete and a request end), and the
/// deadline (which closes a connection whose head is late).
#[derive(Debug)]
pub struct HeadClock {
    state: AtomicU64,
    changed: Notify,
}

/// One admitted connection: releases its counts when dropped (the connection closed).
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    client: Option<IpAddr>,
    clock: Arc<HeadClock>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("limits", &self.limits)
            .field("pending_heads", &self.pending_heads)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The complete head of a request arrived (also one that pingora had already read ahead,
    /// while the connection seemed idle between two requests).
    pub fn head_done(&self) {
        let state = self.clock.state.swap(IN_REQUEST, Ordering::AcqRel);
        if state >= WAITING_SINCE {
            self.admission.head_finished(self.client);
            self.clock.changed.notify_one();
        }
    }

    /// The request was answered; the connection may carry another one.
    pub fn request_done(&self) {
        let _ = self.clock.state.compare_exchange(
            IN_REQUEST,
            BETWEEN_REQUESTS,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Bytes arrived: between requests, they start the next head (and its deadline).
    pub(crate) fn bytes_arrived(&self) {
        if self.clock.state.load(Ordering::Relaxed) == BETWEEN_REQUESTS
            && self
                .clock
                .state
                .compare_exchange(
                    BETWEEN_REQUESTS,
                    self.admission.now_state(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.admission.head_started(self.client);
            self.clock.changed.notify_one();
        }
    }

    /// Resolves when a head has been awaited longer than `--header-timeout`.
    pub async fn head_late(&self) {
        loop {
            let changed = self.clock.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let state = self.clock.state.load(Ordering::Acquire);
            if state < WAITING_SINCE {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(self.admission.deadline_of(state)) => {
                    if self.clock.state.load(Ordering::Acquire) == state {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.head_done();
        if let Some(ip) = self.client {
            self.admission.release_connection(ip);
        }
    }
}

/// A request or tunnel of a client behind a trusted peer, counted as one of its connections
/// until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.admission.release_connection(self.client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            header_timeout: Duration::from_secs(5),
            max_pending_heads: 10,
            max_pending_heads_per_address: 3,
            max_connections_per_address: 5,
            handshake_rate: 10.0,
            handshake_burst: 4.0,
        }
    }

    fn admission(trusted: &[&str]) -> Arc<Admission> {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        Arc::new(Admission::new(
            limits(),
            trusted.iter().map(|s| s.parse().expect("net")).collect(),
            metrics,
        ))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn pending_heads_are_capped_per_address_and_in_all() {
        let a = admission(&[]);
        let held: Vec<Ticket> = (0..3)
            .map(|_| a.accept(Some(ip("192.0.2.1"))).expect("ok"))
            .collect();
        assert_eq!(
            a.accept(Some(ip("192.0.2.1"))).err(),
            Some(Refusal::PendingHeadsPerAddress)
        );
        // a head that arrives frees its slot
        held[0].head_done();
        let again = a.accept(Some(ip("192.0.2.1"))).expect("slot freed");
        let others: Vec<Ticket> = (0..7)
            .map(|i| a.accept(Some(ip(&format!("198.51.100.{i}")))).expect("ok"))
            .collect();
        assert_eq!(
            a.accept(Some(ip("203.0.113.1"))).err(),
            Some(Refusal::PendingHeads)
        );
        drop(others);
        drop(again);
        drop(held);
        assert_eq!(a.pending_heads.load(Ordering::Acquire), 0);
        assert_eq!(a.tracked_addresses(), 0, "idle addresses are forgotten");
    }

    #[test]
    fn connections_are_capped_per_address_and_released() {
        let a = admission(&[]);
        let held: Vec<Ticket> = (0..5)
            .map(|_| {
                let t = a.accept(Some(ip("2001:db8::1"))).expect("ok");
                t.head_done();
                t
            })
            .collect();
        // the same /64 is the same address
        assert_eq!(
            a.accept(Some(ip("2001:db8::ffff"))).err(),
            Some(Refusal::ConnectionsPerAddress)
        );
        assert!(a.accept(Some(ip("2001:db8:0:1::1"))).is_ok());
        drop(held);
        assert!(a.accept(Some(ip("2001:db8::1"))).is_ok());
    }

    #[test]
    fn trusted_peers_count_their_clients_per_request() {
        let a = admission(&["10.0.0.0/8"]);
        let lb: Vec<Ticket> = (0..8)
            .map(|_| a.accept(Some(ip("10.0.0.2"))).expect("ok"))
            .collect();
        assert_eq!(a.tracked_addresses(), 0, "the balancer is not a client");
        drop(lb);
        let slots: Vec<ClientSlot> = (0..5)
            .map(|_| a.client_slot(ip("192.0.2.7")).expect("ok"))
            .collect();
        assert_eq!(
            a.client_slot(ip("192.0.2.7")).err(),
            Some(Refusal::ConnectionsPerAddress)
        );
        drop(slots);
        assert!(a.client_slot(ip("192.0.2.7")).is_ok());
    }

    #[test]
    fn handshakes_follow_a_token_bucket() {
        let a = admission(&[]);
        let client = ip("192.0.2.9");
        for _ in 0..4 {
            assert!(a.take_handshake(client));
        }
        assert!(!a.take_handshake(client));
        assert!(
            a.take_handshake(ip("192.0.2.10")),
            "another address has its own bucket"
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(a.take_handshake(client), "refilled at 10/s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_head_is_noticed_and_a_timely_one_is_not() {
        let a = admission(&[]);
        let late = a.accept(Some(ip("192.0.2.1"))).expect("ok");
        let started = tokio::time::Instant::now();
        late.head_late().await;
        assert!(started.elapsed() >= Duration::from_secs(5));

        let timely = a.accept(Some(ip("192.0.2.2"))).expect("ok");
        tokio::time::sleep(Duration::from_secs(1)).await;
        timely.head_done();
        // served, then idle between requests: no deadline
        timely.request_done();
        assert!(
            tokio::time::timeout(Duration::from_secs(60), timely.head_late())
                .await
                .is_err()
        );
        // a head read ahead while idle is complete: no deadline while it is served
        timely.head_done();
        timely.bytes_arrived();
        assert!(
            tokio::time::timeout(Duration::from_secs(60), timely.head_late())
                .await
                .is_err()
        );
        // the next head starts with its first byte and has its own deadline
        timely.request_done();
        timely.bytes_arrived();
        assert_eq!(a.pending_heads.load(Ordering::Acquire), 2);
        let started = tokio::time::Instant::now();
        timely.head_late().await;
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}
