//! Well-behaved clients that live through the fuzzing: one sender and several receivers in one
//! room (over WebSocket and long-polling, at the node and through the proxy). The sender sends a
//! numbered `room-message` at a steady pace with an acknowledgement; every client, the sender
//! too, must receive every acknowledged number exactly once.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::client::{Conn, Transport};
use crate::target::Target;

/// Pause between two messages of the sender.
pub const SEND_PERIOD: Duration = Duration::from_millis(100);
/// Longest wait for one step of connecting.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// What one well-behaved client saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Seen {
    /// Its name (`sender`, `ws-node`, `polling-proxy`, …).
    pub name: String,
    /// Sequence numbers received, in arrival order.
    #[serde(skip)]
    pub received: Vec<u64>,
    /// Count of `received`.
    pub received_count: usize,
    /// Why its session ended early, if it did.
    pub ended: Option<String>,
}

/// A client of the room, connected and joined.
pub struct Member {
    name: String,
    conn: Conn,
    room: String,
}

/// The sender's tally.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Sent {
    /// Messages sent.
    pub attempted: u64,
    /// Sequence numbers acknowledged with an id.
    #[serde(skip)]
    pub acked: Vec<u64>,
    /// Count of `acked`.
    pub acked_count: usize,
    /// Refusals, `code` of each.
    pub refused: Vec<String>,
}

fn event(packet: &[u8]) -> Option<(String, Value)> {
    let text = std::str::from_utf8(packet.strip_prefix(b"42")?).ok()?;
    let v: Value = serde_json::from_str(text).ok()?;
    let name = v.get(0)?.as_str()?.to_owned();
    Some((name, v.get(1).cloned().unwrap_or(Value::Null)))
}

fn seq_of(data: &Value, room: &str) -> Option<u64> {
    if data.get("room")?.as_str()? != room {
        return None;
    }
    data.get("text")?
        .as_str()?
        .strip_prefix("seq-")?
        .parse()
        .ok()
}

impl Member {
    /// Connects with `token` over `transport` to `target` and joins `room`.
    pub async fn join(
        name: &str,
        transport: Transport,
        target: &Target,
        token: &str,
        room: &str,
    ) -> anyhow::Result<Member> {
        let source = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut conn = tokio::time::timeout(STEP_TIMEOUT, Conn::open(transport, target, source))
            .await
            .context("open timed out")??;
        conn.keep_send_connection();
        let mut m = Member {
            name: name.to_owned(),
            conn,
            room: room.to_owned(),
        };
        m.expect(b"0{").await?;
        m.conn
            .send(&[format!("40{{\"token\":\"{token}\"}}").as_bytes()])
            .await?;
        m.expect(b"40").await?;
        m.conn
            .send(&[format!("420[\"join-room\",\"{room}\"]").as_bytes()])
            .await?;
        let ack = m.expect(b"430").await?;
        if !String::from_utf8_lossy(&ack).contains("\"ok\":true") {
            bail!("{name}: join refused: {}", String::from_utf8_lossy(&ack));
        }
        Ok(m)
    }

    async fn expect(&mut self, prefix: &[u8]) -> anyhow::Result<bytes::Bytes> {
        let wait = async {
            loop {
                let Some(p) = self.conn.recv().await? else {
                    bail!(
                        "closed while waiting for {}",
                        String::from_utf8_lossy(prefix)
                    );
                };
                if p.starts_with(prefix) {
                    return Ok(p);
                }
                if p.as_ref() == b"2" {
                    self.conn.send(&[b"3"]).await?;
                } else if p.starts_with(b"44") {
                    bail!("connect refused: {}", String::from_utf8_lossy(&p));
                }
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, wait)
            .await
            .with_context(|| format!("{}: nothing in time", self.name))?
    }

    /// Handles one packet: answers pings, records room messages. False when the session ended.
    async fn handle(&mut self, packet: Option<bytes::Bytes>, seen: &Mutex<Seen>) -> bool {
        let Some(p) = packet else {
            lock(seen)
                .ended
                .get_or_insert_with(|| "closed by the server".into());
            return false;
        };
        if p.as_ref() == b"2" {
            if let Err(e) = self.conn.send(&[b"3"]).await {
                lock(seen)
                    .ended
                    .get_or_insert_with(|| format!("pong failed: {e}"));
                return false;
            }
        } else if p.as_ref() == b"1" {
            lock(seen)
                .ended
                .get_or_insert_with(|| "Engine.IO close".into());
            return false;
        } else if let Some((name, data)) = event(&p)
            && name == "room-message"
            && let Some(seq) = seq_of(&data, &self.room)
        {
            let mut s = lock(seen);
            s.received.push(seq);
            s.received_count = s.received.len();
        }
        true
    }

    /// Receives until `stop` turns true, recording into `seen`.
    pub async fn receive(mut self, seen: Arc<Mutex<Seen>>, mut stop: watch::Receiver<bool>) {
        lock(&seen).name = self.name.clone();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                p = self.conn.recv() => {
                    let p = match p {
                        Ok(p) => p,
                        Err(e) => {
                            lock(&seen).ended.get_or_insert_with(|| format!("receive failed: {e}"));
                            return;
                        }
                    };
                    if !self.handle(p, &seen).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sends `seq-N` messages every [`SEND_PERIOD`] until `stop_sending`, and receives (its
    /// own messages too) until `stop`.
    pub async fn send(
        mut self,
        seen: Arc<Mutex<Seen>>,
        sent: Arc<Mutex<Sent>>,
        mut stop_sending: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        lock(&seen).name = self.name.clone();
        let mut tick = tokio::time::interval(SEND_PERIOD);
        let mut seq = 0u64;
        let mut sending = true;
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = stopped(&mut stop_sending), if sending => sending = false,
                _ = tick.tick(), if sending => {
                    seq += 1;
                    let ack = seq + 100;
                    let packet = format!(
                        "42{ack}[\"room-message\",{{\"room\":\"{}\",\"text\":\"seq-{seq}\"}}]",
                        self.room
                    );
                    lock(&sent).attempted += 1;
                    if let Err(e) = self.conn.send(&[packet.as_bytes()]).await {
                        lock(&seen).ended.get_or_insert_with(|| format!("send failed: {e}"));
                        return;
                    }
                }
                p = self.conn.recv() => {
                    let p = match p {
                        Ok(p) => p,
                        Err(e) => {
                            lock(&seen).ended.get_or_insert_with(|| format!("receive failed: {e}"));
                            return;
                        }
                    };
                    if let Some(p) = &p
                        && let Some(rest) = p.strip_prefix(b"43")
                    {
                        record_ack(rest, &sent);
                        continue;
                    }
                    if !self.handle(p, &seen).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Records the acknowledgement `<ack id>[answer]` of message `ack id - 100`.
fn record_ack(rest: &[u8], sent: &Mutex<Sent>) {
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let Some(ack) = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let answer: Value = serde_json::from_slice(&rest[digits..]).unwrap_or(Value::Null);
    let mut s = lock(sent);
    match answer.get(0) {
        Some(a) if a.get("id").is_some() => {
            s.acked.push(ack.saturating_sub(100));
            s.acked_count = s.acked.len();
        }
        Some(a) => s.refused.push(
            a.pointer("/error/code")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
        ),
        None => s.refused.push("unreadable ack".into()),
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Locks, ignoring poisoning (a panicking task already failed the run).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks one receiver: every acknowledged number exactly once. `None` when all is well.
pub fn missing(seen: &Seen, acked: &[u64]) -> Option<String> {
    let mut got = seen.received.clone();
    got.sort_unstable();
    let before = got.len();
    got.dedup();
    let duplicates = before - got.len();
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| got.binary_search(n).is_err())
        .copied()
        .collect();
    if lost.is_empty() && duplicates == 0 && seen.ended.is_none() {
        return None;
    }
    Some(format!(
        "{}: {} of {} acknowledged messages missing (first {:?}), {duplicates} duplicates, \
         session ended: {:?}",
        seen.name,
        lost.len(),
        acked.len(),
        lost.iter().take(5).collect::<Vec<_>>(),
        seen.ended
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(received: &[u64], ended: Option<&str>) -> Seen {
        Seen {
            name: "c".into(),
            received: received.to_vec(),
            received_count: received.len(),
            ended: ended.map(str::to_owned),
        }
    }

    #[test]
    fn losses_duplicates_and_ended_sessions_are_reported() {
        assert_eq!(missing(&seen(&[2, 1, 3], None), &[1, 2, 3]), None);
        assert!(missing(&seen(&[1, 3], None), &[1, 2, 3]).is_some_and(|m| m.contains("1 of 3")));
        assert!(
            missing(&seen(&[1, 2, 2, 3], None), &[1, 2, 3])
                .is_some_and(|m| m.contains("1 duplicates"))
        );
        assert!(missing(&seen(&[1, 2, 3], Some("closed")), &[1, 2, 3]).is_some());
    }

    #[test]
    fn room_messages_and_acks_are_read() {
        let (name, data) =
            event(br#"42["room-message",{"room":"r","text":"seq-7"}]"#).expect("event");
        assert_eq!(name, "room-message");
        assert_eq!(seq_of(&data, "r"), Some(7));
        assert_eq!(seq_of(&data, "other"), None);
        let sent = Mutex::new(Sent::default());
        record_ack(br#"107[{"id":"x"}]"#, &sent);
        record_ack(
            br#"108[{"error":{"code":"rate_limited","message":"m"}}]"#,
            &sent,
        );
        let s = lock(&sent);
        assert_eq!(s.acked, vec![7]);
        assert_eq!(s.refused, vec!["rate_limited".to_owned()]);
    }
}
