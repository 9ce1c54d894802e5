//! The payloads of the `@socket.io/admin-ui` protocol (0.5.x, `lib/typed-events.ts`), as the
//! UI reads them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the UI may offer; sent in `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Feature {
    /// The `emit` command.
    Emit,
    /// The `join` command.
    Join,
    /// The `leave` command.
    Leave,
    /// The `_disconnect` command.
    Disconnect,
    /// `join` applied to every socket matching a filter.
    Mjoin,
    /// `leave` applied to every socket matching a filter.
    Mleave,
    /// `_disconnect` applied to every socket matching a filter.
    Mdisconnect,
    /// `server_stats` carries `aggregatedEvents`.
    AggregatedEvents,
    /// Every socket and event is sent (development mode).
    AllEvents,
}

/// The `config` event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UiConfig {
    /// What the UI may offer.
    pub supported_features: Vec<Feature>,
}

/// Sockets of one namespace on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceDetails {
    /// Namespace path.
    pub name: String,
    /// Sockets connected to it on this node.
    pub sockets_count: u64,
}

/// A count of one kind of event during one second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatedEvent {
    /// Start of the second, unix milliseconds.
    pub timestamp: u64,
    /// `rawConnection`, `rawDisconnection`, `packetsIn`, `packetsOut`, `bytesIn`, `bytesOut`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The disconnect reason of a `rawDisconnection`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_type: Option<&'static str>,
    /// How many.
    pub count: u64,
}

/// The `server_stats` event: one node, every 2 s.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerStats {
    /// The node id (unique in the cluster).
    pub server_id: String,
    /// Host name of the machine or pod.
    pub hostname: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the node started.
    pub uptime: f64,
    /// Engine.IO sessions on this node.
    pub clients_count: u64,
    /// Of which on HTTP long-polling.
    pub polling_clients_count: u64,
    /// Events since the previous `server_stats`.
    pub aggregated_events: Vec<AggregatedEvent>,
    /// Sockets per namespace.
    pub namespaces: Vec<NamespaceDetails>,
}

/// The initial HTTP request of a socket, as the UI shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handshake {
    /// Client address (`X-Forwarded-For` when present).
    pub address: String,
    /// Request headers (cookies and credentials left out).
    pub headers: BTreeMap<String, String>,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// When the socket was first seen, unix milliseconds.
    pub issued: u64,
    /// Whether the request came over TLS (never: TLS ends before the node).
    pub secure: bool,
    /// `issued` as a date string.
    pub time: String,
    /// Request path and query.
    pub url: String,
    /// Whether the request came from another origin.
    pub xdomain: bool,
}

/// One socket, as `all_sockets` and `socket_connected` carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SerializedSocket {
    /// Socket id.
    pub id: String,
    /// Engine.IO connection the socket belongs to (shared by its namespaces).
    pub client_id: String,
    /// `polling` or `websocket`.
    pub transport: String,
    /// Namespace path.
    pub nsp: String,
    /// Application data: the authenticated `userId`, and the node holding the socket.
    pub data: serde_json::Value,
    /// The initial request.
    pub handshake: Handshake,
    /// Rooms the socket is in.
    pub rooms: Vec<String>,
}

/// Event arguments of the admin protocol (`Args<serde_json::Value>`).
pub use crate::args::Args;

/// An RFC 3339 date as JavaScript's `Date.toJSON()` writes it.
pub fn iso_date(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stats_have_the_ui_field_names() {
        let s = ServerStats {
            server_id: "node-1".into(),
            hostname: "h".into(),
            pid: 1,
            uptime: 1.5,
            clients_count: 2,
            polling_clients_count: 1,
            aggregated_events: vec![AggregatedEvent {
                timestamp: 1000,
                kind: "rawDisconnection",
                sub_type: Some("transport close"),
                count: 1,
            }],
            namespaces: vec![NamespaceDetails {
                name: "/".into(),
                sockets_count: 2,
            }],
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["serverId"], "node-1");
        assert_eq!(v["pollingClientsCount"], 1);
        assert_eq!(v["aggregatedEvents"][0]["type"], "rawDisconnection");
        assert_eq!(v["aggregatedEvents"][0]["subType"], "transport close");
        assert_eq!(v["namespaces"][0]["socketsCount"], 2);
        let c = serde_json::to_value(UiConfig {
            supported_features: vec![Feature::Mdisconnect, Feature::AggregatedEvents],
        })
        .unwrap();
        assert_eq!(
            c,
            json!({"supportedFeatures": ["MDISCONNECT", "AGGREGATED_EVENTS"]})
        );
    }

    #[test]
    fn args_are_separate_arguments() {
        use socketioxide_core::parser::{is_de_tuple, is_ser_tuple};
        assert!(is_ser_tuple(&Args(vec![json!(1)])));
        assert!(is_de_tuple::<Args<serde_json::Value>>());
        let a: Args<serde_json::Value> =
            serde_json::from_str(r#"["/", null, "ev", {"a": 1}]"#).unwrap();
        assert_eq!(a.0.len(), 4);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"["/",null,"ev",{"a":1}]"#
        );
    }
}
