//! Fake Socket.IO clients on socketioxide's dummy sockets (feature `__test_harness`).
//!
//! Packets are the Engine.IO text frames a real client would get: `40{"sid":…}` for the
//! namespace CONNECT, `42["event",data]` for an event, `42<id>["event",data]` for an event
//! that wants an ack (answered with `43<id>[data]`), `41` for a DISCONNECT.

use std::str::FromStr;
use std::time::Duration;

use engineioxide::Packet;
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide_core::Sid;
use tokio::sync::mpsc;

/// How long a client waits for its next packet before the test fails.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connected to the `/` namespace of one node.
pub struct Client {
    /// Name used in failure messages.
    pub name: &'static str,
    /// The socket id the server gave it.
    pub sid: Sid,
    tx: mpsc::Sender<Packet>,
    rx: mpsc::Receiver<Packet>,
}

impl Client {
    /// Connects a client to namespace `/` of `io` and waits for its CONNECT packet.
    pub async fn connect<A: Adapter>(io: &SocketIo<A>, name: &'static str) -> Self {
        let (tx, rx) = io.new_dummy_sock("/", ()).await;
        let mut client = Self {
            name,
            sid: Sid::ZERO,
            tx,
            rx,
        };
        let connect = client.recv().await;
        let sid = connect
            .strip_prefix(r#"40{"sid":""#)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{name}: expected a CONNECT packet, got {connect}"));
        client.sid = Sid::from_str(sid).unwrap();
        client
    }

    /// The next Socket.IO packet sent to this client (Engine.IO frames that carry none, such
    /// as pings, are skipped).
    pub async fn recv(&mut self) -> String {
        loop {
            let packet = tokio::time::timeout(RECV_TIMEOUT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no packet within {RECV_TIMEOUT:?}", self.name))
                .unwrap_or_else(|| panic!("{}: the server closed the socket", self.name));
            if let Packet::Message(_) = packet {
                return String::from(packet);
            }
        }
    }

    /// Asserts that the next packet is `expected`.
    pub async fn expect(&mut self, expected: &str) {
        let got = self.recv().await;
        assert_eq!(got, expected, "{}: unexpected packet", self.name);
    }

    /// Asserts that the next packet is an event wanting an ack with arguments `args`
    /// (`["event",data]`), and returns its ack id.
    pub async fn expect_ack_request(&mut self, args: &str) -> u64 {
        let got = self.recv().await;
        let parsed = got
            .strip_prefix("42")
            .and_then(|rest| rest.split_once('['))
            .and_then(|(id, rest)| Some((id.parse::<u64>().ok()?, format!("[{rest}"))));
        match parsed {
            Some((id, rest)) if rest == args => id,
            _ => panic!(
                "{}: expected an event with ack and args {args}, got {got}",
                self.name
            ),
        }
    }

    /// Answers ack `id` with `data` (a JSON value).
    pub async fn ack(&self, id: u64, data: &str) {
        let packet = Packet::Message(format!("3{id}[{data}]").into());
        self.tx.send(packet).await.unwrap();
    }

    /// Waits for the ack request `args` and answers it with `data`.
    pub async fn answer(&mut self, args: &str, data: &str) {
        let id = self.expect_ack_request(args).await;
        self.ack(id, data).await;
    }
}
