//! An in-process pub/sub bus with the semantics the adapter relies on from Redis sharded
//! pub/sub: a publish reaches every current subscriber of the channel (the publisher included),
//! in publish order; `num_serv` is the number of subscribers of the channel.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::mpsc;

/// Subscribers of each channel: (driver id, its bounded queue for the channel).
type Subscribers = HashMap<String, Vec<(u64, mpsc::Sender<ChanItem>)>>;

/// The bus every [`MemoryDriver`] of one test shares (what Redis is to separate nodes).
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<BusInner>,
}

#[derive(Default)]
struct BusInner {
    subscribers: RwLock<Subscribers>,
    next_driver: AtomicU64,
    dropped: AtomicU64,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A driver for one more node (each has its own subscriptions, as a Redis connection).
    pub fn driver(&self) -> MemoryDriver {
        MemoryDriver {
            bus: self.clone(),
            id: self.inner.next_driver.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Messages lost because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// One node's connection to the [`MemoryBus`]; clones share the subscriptions.
#[derive(Clone)]
pub struct MemoryDriver {
    bus: MemoryBus,
    id: u64,
}

impl Driver for MemoryDriver {
    type Error = Infallible;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        let subscribers = self.bus.inner.subscribers.read().unwrap();
        for (_, tx) in subscribers.get(&chan).into_iter().flatten() {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                tx.try_send((chan.clone(), val.clone()))
            {
                self.bus.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size.max(1));
        let mut subscribers = self.bus.inner.subscribers.write().unwrap();
        let list = subscribers.entry(chan).or_default();
        list.retain(|(id, _)| *id != self.id);
        list.push((self.id, tx));
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        let mut subscribers = self.bus.inner.subscribers.write().unwrap();
        if let Some(list) = subscribers.get_mut(&chan) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                subscribers.remove(&chan);
            }
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        let subscribers = self.bus.inner.subscribers.read().unwrap();
        let live = subscribers.get(chan).map_or(0, |list| {
            list.iter().filter(|(_, tx)| !tx.is_closed()).count()
        });
        Ok(u16::try_from(live).unwrap())
    }
}

/// `n` nodes on one in-memory bus, socketioxide-redis's default adapter configuration.
pub async fn memory_nodes(n: usize) -> super::scenarios::Nodes<MemoryDriver> {
    let bus = MemoryBus::new();
    let nodes = (0..n)
        .map(|_| {
            (
                bus.driver(),
                socketioxide_redis::RedisAdapterConfig::default(),
            )
        })
        .collect();
    super::scenarios::Nodes::start(nodes, Box::new(bus)).await
}
