//! Cross-node scenarios of the remote adapter, generic over the pub/sub [`Driver`]: the same
//! functions run on the in-memory bus (`memory_nodes.rs`) and on Redis with `SioDriver`
//! (`redis_nodes.rs`).
//!
//! Each scenario gets three nodes serving namespace `/` and connects fake clients to them.
//!
//! Ordering: a node delivers its own broadcasts to its local sockets at once, and the other
//! nodes' broadcasts when they come off the bus, so two messages from different nodes may
//! reach a client in either order. Scenarios therefore check each step's deliveries before
//! the next step. "Exactly once, and nobody else" is checked without sleeping: at the end
//! every node broadcasts a marker to the whole namespace; every client must get three
//! markers next. At least two of them come through the same request channel as everything
//! broadcast before, after it, so a duplicate or a stray message would show up first.

use std::any::Any;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use socketioxide::adapter::{Adapter, Emitter};
use socketioxide::operators::BroadcastOperators;
use socketioxide::{AckError, SocketIo};
use socketioxide_core::adapter::errors::SocketError;
use socketioxide_core::adapter::{
    AckStreamItem, BroadcastIter, CoreAdapter, CoreLocalAdapter, RemoteSocketData, SocketEmitter,
};
use socketioxide_core::packet::Packet;
use socketioxide_core::parser::Parse;
use socketioxide_core::{Sid, Str, Uid, Value};
use socketioxide_redis::drivers::Driver;
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

use super::client::Client;
use super::{WAIT, eventually};

/// The adapter of a node on driver `D` (`ClusterAdapter` when `D` is `SioDriver`).
pub type NodeAdapter<D> = CustomRedisAdapter<Emitter, D>;
/// A node: one Socket.IO server on the remote adapter.
pub type Io<D> = SocketIo<NodeAdapter<D>>;

/// Nodes of one test, each on its own driver, sharing one bus (or one Redis).
pub struct Nodes<D: Driver> {
    /// The Socket.IO servers, namespace `/` registered (and subscribed) on each.
    pub ios: Vec<Io<D>>,
    /// Each node's driver.
    pub drivers: Vec<D>,
    /// Each node's adapter configuration.
    pub configs: Vec<RedisAdapterConfig>,
    /// Whatever must outlive the nodes (the Redis server and connections).
    keep: Box<dyn Any + Send>,
}

impl<D: Driver> Nodes<D> {
    /// Builds a node per `(driver, config)` and registers namespace `/` on each.
    pub async fn start(nodes: Vec<(D, RedisAdapterConfig)>, keep: Box<dyn Any + Send>) -> Self {
        let mut ios = Vec::new();
        let mut drivers = Vec::new();
        let mut configs = Vec::new();
        for (driver, config) in nodes {
            let io = node(driver.clone(), config.clone());
            io.ns("/", async || ()).await.unwrap();
            ios.push(io);
            drivers.push(driver);
            configs.push(config);
        }
        Self {
            ios,
            drivers,
            configs,
            keep,
        }
    }

    /// What the fixture keeps alive with the nodes, as a `T`.
    pub fn keep_mut<T: 'static>(&mut self) -> &mut T {
        self.keep.downcast_mut().unwrap()
    }

    /// The first three nodes.
    pub fn three(&self) -> (&Io<D>, &Io<D>, &Io<D>) {
        (&self.ios[0], &self.ios[1], &self.ios[2])
    }
}

/// A node on `driver`, as sio-node builds it (`with_adapter` + `new_with_driver`).
pub fn node<D: Driver>(driver: D, config: RedisAdapterConfig) -> Io<D> {
    let ctr = RedisAdapterCtr::new_with_driver(driver, config);
    let (_svc, io) = SocketIo::builder()
        .with_adapter::<NodeAdapter<D>>(ctr)
        .build_svc();
    io
}

/// A driver that may route rooms by interest: a node must hold a room's channel before its
/// sockets join the room (as sio-node's `join-room` does).
pub trait RoomJoin {
    /// Holds the channel of `room` of namespace `ns` for one more local member.
    fn join_room(&self, ns: &str, room: &str) -> impl std::future::Future<Output = ()>;
}

impl RoomJoin for sio_redis_adapter::SioDriver {
    async fn join_room(&self, ns: &str, room: &str) {
        sio_redis_adapter::SioDriver::join_room(self, ns, room)
            .await
            .unwrap();
    }
}

impl RoomJoin for super::memory::MemoryDriver {
    async fn join_room(&self, _: &str, _: &str) {}
}

/// Joins `client`'s socket, on node `i`, to `rooms` (as a handler on that node would: the
/// room's channel first, then the socket).
async fn join<D: Driver + RoomJoin>(
    nodes: &Nodes<D>,
    i: usize,
    client: &Client,
    rooms: &'static [&'static str],
) {
    for room in rooms {
        nodes.drivers[i].join_room("/", room).await;
    }
    nodes.ios[i].get_socket(client.sid).unwrap().join(rooms);
}

/// Broadcasts a marker from every node to the whole namespace and checks that the next
/// packets of every client in `clients` are these markers (see the module docs).
async fn markers<D: Driver>(nodes: &Nodes<D>, clients: &mut [&mut Client]) {
    for io in &nodes.ios {
        io.emit("marker", "end").await.unwrap();
    }
    for c in clients.iter_mut() {
        for _ in &nodes.ios {
            c.expect(r#"42["marker","end"]"#).await;
        }
    }
}

/// `(sid, server id)` of sockets, sorted.
fn sockets_of(list: &[(&Client, Uid)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(c, uid)| (c.sid.to_string(), uid.to_string()))
        .collect();
    v.sort();
    v
}

/// `(sid, server id)` of the sockets `op` selects on every node, sorted; all must be in `/`.
async fn fetch<A: Adapter>(op: BroadcastOperators<A>) -> Vec<(String, String)> {
    let sockets = op.fetch_sockets().await.unwrap();
    let mut v: Vec<_> = sockets
        .into_iter()
        .map(|s| {
            let RemoteSocketData { id, server_id, ns } = s.into_data();
            assert_eq!(ns, "/");
            (id.to_string(), server_id.to_string())
        })
        .collect();
    v.sort();
    v
}

fn uid<D: Driver>(io: &Io<D>) -> Uid {
    io.config().server_id
}

/// Every item of an ack stream (which must end within [`WAIT`]), by socket:
/// `Ok(answer)` or `Err("timeout")`.
async fn collect_acks(
    stream: impl Stream<Item = (Sid, Result<String, AckError>)>,
) -> BTreeMap<Sid, Result<String, String>> {
    let items: Vec<_> = tokio::time::timeout(WAIT, stream.collect())
        .await
        .expect("the ack stream did not end");
    let mut acks = BTreeMap::new();
    for (sid, res) in items {
        let res = res.map_err(|e| match e {
            AckError::Timeout => "timeout".to_owned(),
            e => e.to_string(),
        });
        assert!(acks.insert(sid, res).is_none(), "two acks from {sid}");
    }
    acks
}

fn ok(client: &Client) -> (Sid, Result<String, String>) {
    (client.sid, Ok(client.name.to_owned()))
}

/// The JSON string of the client's name, what it answers acks with.
fn name_json(client: &Client) -> String {
    format!("\"{}\"", client.name)
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// `io.emit` from any node reaches every socket of the namespace on every node exactly once;
/// a socket's `broadcast()` reaches all the others but not itself.
pub async fn broadcast_to_namespace<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let mut a1 = Client::connect(n1, "a1").await;
    let mut b1 = Client::connect(n1, "b1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let mut d3 = Client::connect(n3, "d3").await;

    n1.emit("hello", "from n1").await.unwrap();
    for c in [&mut a1, &mut b1, &mut c2, &mut d3] {
        c.expect(r#"42["hello","from n1"]"#).await;
    }
    n3.get_socket(d3.sid)
        .unwrap()
        .broadcast()
        .emit("hello", "from d3")
        .await
        .unwrap();
    for c in [&mut a1, &mut b1, &mut c2] {
        c.expect(r#"42["hello","from d3"]"#).await;
    }
    markers(&nodes, &mut [&mut a1, &mut b1, &mut c2, &mut d3]).await;
}

/// `to(room)` reaches the members of the room on every node, a socket in several target rooms
/// once, and a socket's `to(room)` skips the sender.
pub async fn broadcast_to_rooms<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let mut c1 = Client::connect(n1, "c1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let mut c3 = Client::connect(n3, "c3").await;
    let mut c4 = Client::connect(n3, "c4").await;
    join(&nodes, 0, &c1, &["a"]).await;
    join(&nodes, 1, &c2, &["a", "b"]).await;
    join(&nodes, 2, &c3, &["b"]).await;

    n3.to("a").emit("to", "a").await.unwrap();
    c1.expect(r#"42["to","a"]"#).await;
    c2.expect(r#"42["to","a"]"#).await;

    n1.to(["a", "b"]).emit("to", "a+b").await.unwrap();
    for c in [&mut c1, &mut c2, &mut c3] {
        c.expect(r#"42["to","a+b"]"#).await;
    }

    n2.get_socket(c2.sid)
        .unwrap()
        .to("a")
        .emit("to", "a from c2")
        .await
        .unwrap();
    c1.expect(r#"42["to","a from c2"]"#).await;
    markers(&nodes, &mut [&mut c1, &mut c2, &mut c3, &mut c4]).await;
}

/// `except(room)` leaves out the room's members on every node, combined with `to` too.
pub async fn broadcast_with_except<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let mut c1 = Client::connect(n1, "c1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let mut c3 = Client::connect(n3, "c3").await;
    let mut c4 = Client::connect(n3, "c4").await;
    join(&nodes, 0, &c1, &["a"]).await;
    join(&nodes, 1, &c2, &["a", "b"]).await;
    join(&nodes, 2, &c3, &["b"]).await;

    n1.except("b").emit("ex", &1).await.unwrap();
    c1.expect(r#"42["ex",1]"#).await;
    c4.expect(r#"42["ex",1]"#).await;

    n2.to("a").except("b").emit("ex", &2).await.unwrap();
    c1.expect(r#"42["ex",2]"#).await;

    n3.except(["a", "b"]).emit("ex", &3).await.unwrap();
    c4.expect(r#"42["ex",3]"#).await;

    // from a socket: neither the room's members nor the sender
    n3.get_socket(c4.sid)
        .unwrap()
        .except("a")
        .emit("ex", &4)
        .await
        .unwrap();
    c3.expect(r#"42["ex",4]"#).await;
    markers(&nodes, &mut [&mut c1, &mut c2, &mut c3, &mut c4]).await;
}

/// `emit_with_ack` collects the acks of sockets on every node, to the namespace or a room.
pub async fn broadcast_with_acks_from_every_node<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let mut c1 = Client::connect(n1, "c1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let mut c3 = Client::connect(n3, "c3").await;
    let mut c3b = Client::connect(n3, "c3b").await;

    let stream = n2
        .timeout(WAIT)
        .emit_with_ack::<_, String>("ask", "q")
        .await
        .unwrap();
    for c in [&mut c1, &mut c2, &mut c3, &mut c3b] {
        let answer = name_json(c);
        c.answer(r#"["ask","q"]"#, &answer).await;
    }
    let acks = collect_acks(stream).await;
    assert_eq!(acks, BTreeMap::from([ok(&c1), ok(&c2), ok(&c3), ok(&c3b)]));

    join(&nodes, 0, &c1, &["quiz"]).await;
    join(&nodes, 2, &c3b, &["quiz"]).await;
    let stream = n2
        .to("quiz")
        .timeout(WAIT)
        .emit_with_ack::<_, String>("ask", "room")
        .await
        .unwrap();
    for c in [&mut c1, &mut c3b] {
        let answer = name_json(c);
        c.answer(r#"["ask","room"]"#, &answer).await;
    }
    let acks = collect_acks(stream).await;
    assert_eq!(acks, BTreeMap::from([ok(&c1), ok(&c3b)]));
    markers(&nodes, &mut [&mut c1, &mut c2, &mut c3, &mut c3b]).await;
}

/// A socket that does not answer in time is reported as a timeout by its own node, local or
/// remote (a remote one missing from the results would mean its node never reported it).
pub async fn broadcast_with_acks_reports_timeouts<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let mut c1 = Client::connect(n1, "c1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let mut c3 = Client::connect(n3, "c3").await;
    let mut silent1 = Client::connect(n1, "silent1").await;
    let mut silent3 = Client::connect(n3, "silent3").await;
    // long enough for the other clients to answer on a loaded machine
    let ack_timeout = Duration::from_secs(1);

    let started = Instant::now();
    let stream = n2
        .timeout(ack_timeout)
        .emit_with_ack::<_, String>("ask", "q")
        .await
        .unwrap();
    for c in [&mut c1, &mut c2, &mut c3] {
        let answer = name_json(c);
        c.answer(r#"["ask","q"]"#, &answer).await;
    }
    silent1.expect_ack_request(r#"["ask","q"]"#).await;
    silent3.expect_ack_request(r#"["ask","q"]"#).await;
    let acks = collect_acks(stream).await;
    let elapsed = started.elapsed();

    let timeout = |c: &Client| (c.sid, Err("timeout".to_owned()));
    assert_eq!(
        acks,
        BTreeMap::from([
            ok(&c1),
            ok(&c2),
            ok(&c3),
            timeout(&silent1),
            timeout(&silent3)
        ])
    );
    assert!(
        elapsed >= ack_timeout,
        "timeouts reported after {elapsed:?}"
    );
}

/// `fetch_sockets` returns the sockets of every node with their node's id, from any node,
/// for the namespace or a room; a remote socket's `rooms()` asks its node.
pub async fn fetch_sockets_from_every_node<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let c1 = Client::connect(n1, "c1").await;
    let c2 = Client::connect(n2, "c2").await;
    let c3 = Client::connect(n3, "c3").await;
    join(&nodes, 0, &c1, &["a"]).await;
    join(&nodes, 1, &c2, &["a", "b"]).await;
    join(&nodes, 2, &c3, &["b", "c"]).await;

    let all = sockets_of(&[(&c1, uid(n1)), (&c2, uid(n2)), (&c3, uid(n3))]);
    for io in [n1, n2, n3] {
        assert_eq!(fetch(io.broadcast()).await, all);
    }
    assert_eq!(
        fetch(n1.to("b")).await,
        sockets_of(&[(&c2, uid(n2)), (&c3, uid(n3))])
    );
    assert_eq!(
        fetch(n3.to("a").except("b")).await,
        sockets_of(&[(&c1, uid(n1))])
    );

    let remote = n1
        .fetch_sockets()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.data().id == c3.sid)
        .unwrap();
    assert_eq!(sorted(remote.rooms().await.unwrap()), ["b", "c"]);
}

/// Operations on a `RemoteSocket` fetched from another node act on its node: join, leave,
/// emit, emit with ack, disconnect.
pub async fn remote_socket_operations<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, _n2, n3) = nodes.three();
    let mut c1 = Client::connect(n1, "c1").await;
    let mut c3 = Client::connect(n3, "c3").await;
    join(&nodes, 2, &c3, &["b"]).await;
    let sid3 = c3.sid;
    let remote = n1
        .fetch_sockets()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.data().id == sid3)
        .unwrap();
    assert_eq!(remote.data().server_id, uid(n3));
    let local_rooms = || sorted(n3.get_socket(sid3).map(|s| s.rooms()).unwrap_or_default());

    remote.join("x").await.unwrap();
    eventually("the remote socket to join x", async || {
        local_rooms() == ["b", "x"]
    })
    .await;
    assert_eq!(fetch(n1.to("x")).await, sockets_of(&[(&c3, uid(n3))]));

    remote.leave("b").await.unwrap();
    eventually("the remote socket to leave b", async || {
        local_rooms() == ["x"]
    })
    .await;

    remote.emit("direct", "hi").await.unwrap();
    c3.expect(r#"42["direct","hi"]"#).await;

    let stream = remote
        .emit_with_ack::<_, String>("ask", "direct")
        .await
        .unwrap();
    c3.answer(r#"["ask","direct"]"#, r#""c3""#).await;
    assert_eq!(collect_acks(stream).await, BTreeMap::from([ok(&c3)]));

    remote.disconnect().await.unwrap();
    c3.expect("41").await;
    eventually("the socket to leave its node", async || {
        n3.get_socket(sid3).is_none()
    })
    .await;
    assert_eq!(fetch(n1.broadcast()).await, sockets_of(&[(&c1, uid(n1))]));
    markers(&nodes, &mut [&mut c1]).await;
}

/// `io.to(..).join/leave/disconnect` act on the selected sockets of every node.
pub async fn operators_join_leave_disconnect<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let mut c1 = Client::connect(n1, "c1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let mut c3 = Client::connect(n3, "c3").await;
    let mut c4 = Client::connect(n3, "c4").await;
    join(&nodes, 0, &c1, &["a"]).await;
    join(&nodes, 1, &c2, &["a", "b"]).await;
    join(&nodes, 2, &c3, &["b"]).await;

    n1.to("a").join("d").await.unwrap();
    let in_d = sockets_of(&[(&c1, uid(n1)), (&c2, uid(n2))]);
    eventually("a's members on every node to join d", async || {
        fetch(n3.to("d")).await == in_d
    })
    .await;
    assert_eq!(
        sorted(n2.get_socket(c2.sid).unwrap().rooms()),
        ["a", "b", "d"]
    );

    n2.to("d").leave("a").await.unwrap();
    eventually("d's members on every node to leave a", async || {
        sorted(n1.rooms().await.unwrap()) == ["b", "d"]
    })
    .await;
    assert!(fetch(n3.to("a")).await.is_empty());

    n3.to("b").disconnect().await.unwrap();
    c2.expect("41").await;
    c3.expect("41").await;
    let left = sockets_of(&[(&c1, uid(n1)), (&c4, uid(n3))]);
    eventually("b's members on every node to be disconnected", async || {
        fetch(n2.broadcast()).await == left
    })
    .await;
    markers(&nodes, &mut [&mut c1, &mut c4]).await;
}

/// `rooms()` lists the rooms of every node, for the namespace or the rooms of a selection.
pub async fn rooms_of_every_node<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    let c1 = Client::connect(n1, "c1").await;
    let c2 = Client::connect(n2, "c2").await;
    let c3 = Client::connect(n3, "c3").await;
    join(&nodes, 0, &c1, &["r1", "r2"]).await;
    join(&nodes, 1, &c2, &["r2", "r3"]).await;
    join(&nodes, 2, &c3, &["r3", "r4"]).await;

    for io in [n1, n2, n3] {
        assert_eq!(sorted(io.rooms().await.unwrap()), ["r1", "r2", "r3", "r4"]);
    }
    assert_eq!(sorted(n2.to("r1").rooms().await.unwrap()), ["r1", "r2"]);
    assert_eq!(
        sorted(n1.to("r3").rooms().await.unwrap()),
        ["r2", "r3", "r4"]
    );
    assert_eq!(sorted(n1.local().rooms().await.unwrap()), ["r1", "r2"]);
}

/// The server count the adapter computes from the driver: the nodes serving the namespace.
/// A node that closes leaves it, and requests stop waiting for it.
pub async fn server_count_follows_nodes<D: Driver + RoomJoin>(nodes: Nodes<D>) {
    let (n1, n2, n3) = nodes.three();
    for (driver, config) in nodes.drivers.iter().zip(&nodes.configs) {
        assert_eq!(server_count(driver, config, "/").await, 3);
        let request_channel = format!("{}-request#/#", config.prefix);
        assert_eq!(driver.num_serv(&request_channel).await.unwrap(), 3);
    }
    let (driver, config) = (&nodes.drivers[0], &nodes.configs[0]);
    n1.ns("/two", async || ()).await.unwrap();
    n2.ns("/two", async || ()).await.unwrap();
    assert_eq!(server_count(driver, config, "/two").await, 2);
    assert_eq!(server_count(driver, config, "/none").await, 0);

    n3.close().await;
    eventually("the closed node to leave the server count", async || {
        server_count(driver, config, "/").await == 2
    })
    .await;

    let mut c1 = Client::connect(n1, "c1").await;
    let mut c2 = Client::connect(n2, "c2").await;
    let started = Instant::now();
    let stream = n1
        .timeout(WAIT)
        .emit_with_ack::<_, String>("ask", "q")
        .await
        .unwrap();
    for c in [&mut c1, &mut c2] {
        let answer = name_json(c);
        c.answer(r#"["ask","q"]"#, &answer).await;
    }
    assert_eq!(
        collect_acks(stream).await,
        BTreeMap::from([ok(&c1), ok(&c2)])
    );
    assert_eq!(
        fetch(n2.broadcast()).await,
        sockets_of(&[(&c1, uid(n1)), (&c2, uid(n2))])
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < config.request_timeout,
        "took {elapsed:?}: requests waited for the closed node"
    );
}

/// The number of servers the remote adapter of namespace `ns` counts through `driver`
/// (socketioxide keeps the adapter private, so this builds one with a socketless emitter).
pub async fn server_count<D: Driver>(
    driver: &D,
    config: &RedisAdapterConfig,
    ns: &'static str,
) -> u16 {
    let ctr = RedisAdapterCtr::new_with_driver(driver.clone(), config.clone());
    let local = CoreLocalAdapter::new(NoSockets {
        path: Str::from(ns),
        uid: Uid::new(),
    });
    let adapter = <CustomRedisAdapter<NoSockets, D> as CoreAdapter<NoSockets>>::new(&ctr, local);
    adapter.server_count().await.unwrap()
}

/// A namespace without sockets: enough for an adapter that is only asked its server count.
struct NoSockets {
    path: Str,
    uid: Uid,
}

impl SocketEmitter for NoSockets {
    type AckError = AckError;
    type AckStream = futures::stream::Empty<AckStreamItem<AckError>>;

    fn get_all_sids(&self, _: impl Fn(&Sid) -> bool) -> Vec<Sid> {
        Vec::new()
    }
    fn get_remote_sockets(&self, _: BroadcastIter<'_>) -> Vec<RemoteSocketData> {
        Vec::new()
    }
    fn send_many(&self, _: BroadcastIter<'_>, _: Value) -> Result<(), Vec<SocketError>> {
        Ok(())
    }
    fn send_many_volatile(&self, _: BroadcastIter<'_>, _: Value) {}
    fn send_many_with_ack(
        &self,
        _: BroadcastIter<'_>,
        _: Packet,
        _: Option<Duration>,
    ) -> (Self::AckStream, u32) {
        (futures::stream::empty(), 0)
    }
    fn disconnect_many(&self, _: Vec<Sid>) -> Result<(), Vec<SocketError>> {
        Ok(())
    }
    fn path(&self) -> &Str {
        &self.path
    }
    fn parser(&self) -> impl Parse {
        socketioxide_parser_common::CommonParser
    }
    fn server_id(&self) -> Uid {
        self.uid
    }
    fn ack_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }
}
