//! The set of backends a replica knows, swapped whole ([`ArcSwap`]) so the request path takes
//! no lock.
//!
//! A backend is a *member* while some discovery source lists it; members that are ready
//! (`/readyz` 200) and not draining get new sessions, picked on a Ketama ring over all members.
//! A member that leaves discovery is *retained* for `--backend-retention`: it gets no new
//! sessions but stays routable by its tag, so its live sessions go on; it is forgotten early
//! when it stops answering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use pingora_ketama::{Bucket, Continuum};

use crate::config::Balance;
use crate::metrics::{BackendMetrics, Metrics};
use crate::routing::{Tag, TagKey};

/// Consecutive failures without an answer (a health check timing out or answering garbage, a
/// connection attempt timing out) that take a ready backend out of rotation: one slow answer
/// from a busy node must not stop every new session to it. An answer (a draining node's 503)
/// or a refused connection counts at once.
pub const MISSES_BEFORE_UNREADY: u32 = 3;

/// Ring points visited for a healthy backend before falling back to a linear scan.
const MAX_RING_STEPS: usize = 256;

/// A backend as one discovery round reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discovered {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Whether the node registry marks it draining.
    pub draining: bool,
}

/// One backend (a sio-node) and its live state.
#[derive(Debug)]
pub struct Backend {
    /// Where to connect; also its identity.
    pub addr: SocketAddr,
    /// Its tag in session ids.
    pub tag: Tag,
    /// Its metric label.
    pub label: String,
    ready: AtomicBool,
    /// Consecutive failures without an answer (see [`MISSES_BEFORE_UNREADY`]).
    misses: AtomicU32,
    draining: AtomicBool,
    active: AtomicUsize,
    metrics: BackendMetrics,
}

impl Backend {
    fn new(addr: SocketAddr, tag: Tag, metrics: &Metrics) -> Self {
        let label = addr.to_string();
        let backend_metrics = metrics.for_backend(&label);
        backend_metrics.set_healthy(false);
        backend_metrics.set_draining(false);
        Backend {
            addr,
            tag,
            label,
            ready: AtomicBool::new(false),
            misses: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            metrics: backend_metrics,
        }
    }

    /// Whether it may get new sessions: ready and not draining.
    pub fn accepts_new_sessions(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Whether the last health check passed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Records a definite result (an answer, a refused connection); returns the previous
    /// value.
    pub fn set_ready(&self, ready: bool) -> bool {
        self.misses.store(0, Ordering::Relaxed);
        self.metrics.set_healthy(ready);
        self.ready.swap(ready, Ordering::Relaxed)
    }

    /// Records a failure without an answer; after [`MISSES_BEFORE_UNREADY`] in a row the
    /// backend is not ready. Returns the previous readiness.
    pub fn missed(&self) -> bool {
        let misses = self.misses.fetch_add(1, Ordering::Relaxed) + 1;
        if misses >= MISSES_BEFORE_UNREADY {
            self.metrics.set_healthy(false);
            self.ready.swap(false, Ordering::Relaxed)
        } else {
            self.is_ready()
        }
    }

    /// Whether the registry marks it draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Records the registry's draining flag.
    pub fn set_draining(&self, draining: bool) {
        self.metrics.set_draining(draining);
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Open tunnels and in-flight requests through this replica.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one open tunnel or in-flight request until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.connection_opened();
        ActiveGuard(self.clone())
    }

    /// Its metric handles.
    pub fn metrics(&self) -> &BackendMetrics {
        &self.metrics
    }
}

/// Keeps a backend's active count up while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    /// The backend counted.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connection_closed();
    }
}

#[derive(Debug, Clone)]
struct Retained {
    backend: Arc<Backend>,
    until: Instant,
}

/// An immutable view of the backends, replaced whole on every change.
pub struct Snapshot {
    members: Vec<Arc<Backend>>,
    retained: Vec<Retained>,
    by_tag: HashMap<Tag, Arc<Backend>>,
    by_addr: HashMap<SocketAddr, usize>,
    ring: Continuum,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("members", &self.members)
            .field("retained", &self.retained)
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    fn build(mut members: Vec<Arc<Backend>>, retained: Vec<Retained>) -> Self {
        members.sort_by_key(|b| b.addr);
        let buckets: Vec<Bucket> = members.iter().map(|b| Bucket::new(b.addr, 1)).collect();
        let ring = Continuum::new(&buckets);
        let by_addr = members
            .iter()
            .enumerate()
            .map(|(i, b)| (b.addr, i))
            .collect();
        let mut by_tag = HashMap::with_capacity(members.len() + retained.len());
        for backend in members.iter().chain(retained.iter().map(|r| &r.backend)) {
            if let Some(other) = by_tag.insert(backend.tag, backend.clone()) {
                tracing::error!(
                    first = %other.addr, second = %backend.addr,
                    "two backends share a session tag; sessions of one of them will be refused"
                );
            }
        }
        Snapshot {
            members,
            retained,
            by_tag,
            by_addr,
            ring,
        }
    }

    /// Backends currently listed by discovery.
    pub fn members(&self) -> &[Arc<Backend>] {
        &self.members
    }

    /// Backends that left discovery but still serve their live sessions.
    pub fn retained(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.retained.iter().map(|r| &r.backend)
    }

    /// The backend a session tag names, member or retained.
    pub fn by_tag(&self, tag: &Tag) -> Option<&Arc<Backend>> {
        self.by_tag.get(tag)
    }

    /// Picks a backend for a new session: ready, not draining, not in `exclude`.
    pub fn pick(
        &self,
        balance: Balance,
        key: &[u8],
        exclude: &[SocketAddr],
    ) -> Option<Arc<Backend>> {
        let eligible = |b: &Backend| b.accepts_new_sessions() && !exclude.contains(&b.addr);
        match balance {
            Balance::IpHash => {
                let from_ring = self
                    .ring
                    .node_iter(key)
                    .take(MAX_RING_STEPS)
                    .filter_map(|addr| self.by_addr.get(addr).map(|i| &self.members[*i]))
                    .find(|b| eligible(b));
                from_ring
                    .or_else(|| self.rotated(key).find(|b| eligible(b)))
                    .cloned()
            }
            Balance::LeastConn => self
                .rotated(key)
                .filter(|b| eligible(b))
                .min_by_key(|b| b.active())
                .cloned(),
        }
    }

    /// Members starting at a position derived from `key`, so ties spread across clients.
    fn rotated(&self, key: &[u8]) -> impl Iterator<Item = &Arc<Backend>> {
        let n = self.members.len().max(1);
        let start = key.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        }) as usize
            % n;
        self.members[start..]
            .iter()
            .chain(self.members[..start].iter())
    }
}

/// The current backends of this replica.
pub struct BackendSet {
    current: ArcSwap<Snapshot>,
    tag_key: TagKey,
    retention: Duration,
    metrics: Arc<Metrics>,
    /// Serialises writers (discovery, health); never taken on the request path.
    update: Mutex<()>,
}

impl BackendSet {
    /// An empty set.
    pub fn new(tag_key: TagKey, retention: Duration, metrics: Arc<Metrics>) -> Self {
        BackendSet {
            current: ArcSwap::from_pointee(Snapshot::build(Vec::new(), Vec::new())),
            tag_key,
            retention,
            metrics,
            update: Mutex::new(()),
        }
    }

    /// The current snapshot (cheap, lock-free).
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The tag of a backend address.
    pub fn tag_for(&self, addr: SocketAddr) -> Tag {
        self.tag_key.tag_for(addr)
    }

    /// Replaces the members with one discovery round's result (duplicates merged, draining if
    /// any source says so). Returns the backends seen for the first time, which are not ready
    /// until their first health check.
    pub fn apply_discovery(&self, discovered: &[Discovered]) -> Vec<Arc<Backend>> {
        let _writer = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let now = Instant::now();
        let mut wanted: HashMap<SocketAddr, bool> = HashMap::with_capacity(discovered.len());
        for d in discovered {
            *wanted.entry(d.addr).or_default() |= d.draining;
        }
        let known = |addr: &SocketAddr| {
            old.members
                .iter()
                .find(|b| b.addr == *addr)
                .or_else(|| old.retained().find(|b| b.addr == *addr))
                .cloned()
        };
        let mut added = Vec::new();
        let mut members = Vec::with_capacity(wanted.len());
        for (addr, draining) in &wanted {
            let backend = match known(addr) {
                Some(backend) => backend,
                None => {
                    let backend = Arc::new(Backend::new(
                        *addr,
                        self.tag_key.tag_for(*addr),
                        &self.metrics,
                    ));
                    tracing::info!(backend = %addr, tag = %backend.tag, "backend discovered");
                    added.push(backend.clone());
                    backend
                }
            };
            if backend.is_draining() != *draining {
                tracing::info!(backend = %addr, draining, "backend draining flag changed");
            }
            backend.set_draining(*draining);
            members.push(backend);
        }
        let mut retained: Vec<Retained> = old
            .retained
            .iter()
            .filter(|r| !wanted.contains_key(&r.backend.addr))
            .cloned()
            .collect();
        for backend in &old.members {
            if !wanted.contains_key(&backend.addr) {
                tracing::info!(
                    backend = %backend.addr,
                    retention = ?self.retention,
                    "backend left discovery; kept for its live sessions"
                );
                retained.push(Retained {
                    backend: backend.clone(),
                    until: now + self.retention,
                });
            }
        }
        retained.retain(|r| {
            let keep = r.until >= now;
            if !keep {
                tracing::info!(backend = %r.backend.addr, "retention over; backend forgotten");
                self.metrics.remove_backend(&r.backend.label);
            }
            keep
        });
        self.store(members, retained);
        added
    }

    /// Forgets a retained backend that stopped answering: its sessions are gone.
    pub fn forget_retained(&self, addr: SocketAddr) {
        let _writer = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        if !old.retained().any(|b| b.addr == addr) {
            return;
        }
        let retained = old
            .retained
            .iter()
            .filter(|r| r.backend.addr != addr)
            .cloned()
            .collect();
        tracing::info!(backend = %addr, "retained backend stopped answering; forgotten");
        self.metrics.remove_backend(&addr.to_string());
        self.store(old.members.clone(), retained);
    }

    fn store(&self, members: Vec<Arc<Backend>>, retained: Vec<Retained>) {
        self.metrics
            .set_backend_counts(members.len(), retained.len());
        self.current
            .store(Arc::new(Snapshot::build(members, retained)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn set(retention: Duration) -> BackendSet {
        BackendSet::new(
            TagKey::new(b"k"),
            retention,
            Arc::new(Metrics::new().expect("metrics")),
        )
    }

    fn discovered(ports: &[u16]) -> Vec<Discovered> {
        ports
            .iter()
            .map(|p| Discovered {
                addr: addr(*p),
                draining: false,
            })
            .collect()
    }

    #[test]
    fn new_backends_wait_for_their_first_health_check() {
        let set = set(Duration::from_secs(60));
        let added = set.apply_discovery(&discovered(&[1, 2]));
        assert_eq!(added.len(), 2);
        assert!(set.snapshot().pick(Balance::IpHash, b"k", &[]).is_none());
        added[0].set_ready(true);
        let picked = set
            .snapshot()
            .pick(Balance::IpHash, b"k", &[])
            .expect("a backend");
        assert_eq!(picked.addr, added[0].addr);
        // A second round with the same backends adds nothing and keeps their state.
        assert!(set.apply_discovery(&discovered(&[2, 1])).is_empty());
        assert!(set.snapshot().members().iter().any(|b| b.is_ready()));
    }

    #[test]
    fn only_repeated_misses_take_a_ready_backend_out() {
        let set = set(Duration::from_secs(60));
        let b = set.apply_discovery(&discovered(&[1])).remove(0);
        b.set_ready(true);
        for _ in 1..MISSES_BEFORE_UNREADY {
            assert!(b.missed(), "was ready");
            assert!(b.is_ready(), "one slow answer keeps it in rotation");
        }
        assert!(b.missed(), "was ready until this miss");
        assert!(!b.is_ready());
        // an answer resets the count, and a definite "no" counts at once
        b.set_ready(true);
        b.missed();
        b.set_ready(true);
        for _ in 1..MISSES_BEFORE_UNREADY {
            b.missed();
        }
        assert!(b.is_ready(), "misses separated by a pass do not add up");
        b.set_ready(false);
        assert!(!b.is_ready());
    }

    #[test]
    fn duplicate_sources_merge_draining() {
        let set = set(Duration::from_secs(60));
        let mut round = discovered(&[1]);
        round.push(Discovered {
            addr: addr(1),
            draining: true,
        });
        set.apply_discovery(&round);
        let snapshot = set.snapshot();
        assert_eq!(snapshot.members().len(), 1);
        assert!(snapshot.members()[0].is_draining());
    }

    #[test]
    fn retention_expires_and_forget_removes() {
        let set = set(Duration::ZERO);
        set.apply_discovery(&discovered(&[1, 2]));
        set.apply_discovery(&discovered(&[2]));
        // Zero retention: kept for this round only, gone at the next.
        assert_eq!(set.snapshot().retained().count(), 1);
        set.apply_discovery(&discovered(&[2]));
        assert_eq!(set.snapshot().retained().count(), 0);

        let set = super::tests::set(Duration::from_secs(60));
        set.apply_discovery(&discovered(&[1, 2]));
        set.apply_discovery(&discovered(&[2]));
        let tag = set.tag_for(addr(1));
        assert!(set.snapshot().by_tag(&tag).is_some());
        set.forget_retained(addr(1));
        assert!(set.snapshot().by_tag(&tag).is_none());
        // A retained backend that comes back is a member again, with its state.
        set.apply_discovery(&discovered(&[1, 2]));
        assert_eq!(set.snapshot().members().len(), 2);
    }

    #[test]
    fn least_conn_prefers_the_idlest_backend() {
        let set = set(Duration::from_secs(60));
        for b in set.apply_discovery(&discovered(&[1, 2, 3])) {
            b.set_ready(true);
        }
        let snapshot = set.snapshot();
        let busy: Vec<ActiveGuard> = snapshot.members()[..2].iter().map(|b| b.track()).collect();
        let picked = snapshot
            .pick(Balance::LeastConn, b"any", &[])
            .expect("backend");
        assert_eq!(picked.addr, snapshot.members()[2].addr);
        drop(busy);
        assert!(snapshot.members().iter().all(|b| b.active() == 0));
    }
}
