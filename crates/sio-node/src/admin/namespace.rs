//! The admin namespace (`--admin-namespace`, default `/admin`): log-in, `session`, `config`,
//! `all_sockets` (development mode), and the UI's commands `emit`, `join`, `leave` and
//! `_disconnect`, applied to the matching sockets of every node.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::Value;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, Data, SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use super::Admin;
use super::auth::LoginError;
use super::bus::Request;
use super::local::Command;
use super::protocol::Args;
use crate::state::NodeState;
use crate::validate;

/// Most sockets `all_sockets` lists (the UI slows down well before).
pub const ALL_SOCKETS_LIMIT: usize = 10_000;

/// A session id opened by the connect middleware, sent once connected.
#[derive(Debug, Clone)]
struct NewSession(String);

/// The address a log-in is counted against: `X-Real-IP` as sio-proxy sets it (the client it
/// resolved, after its `--trust-forwarded`; a client's own is replaced), else the last
/// `X-Forwarded-For` hop (added by the proxy in front), else the peer. Never the leftmost
/// `X-Forwarded-For` entry, which the client writes itself.
fn client_addr<A: Adapter>(socket: &SocketRef<A>) -> IpAddr {
    let parts = socket.req_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    header("x-real-ip")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| {
            header("x-forwarded-for")
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok())
        })
        .or_else(|| {
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<crate::conn::ConnInfo>>()
                .map(|c| c.0.peer.ip())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Connect middleware: logs the UI in.
pub async fn middleware<A: Adapter>(
    socket: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    State(node): State<Arc<NodeState>>,
    TryData(auth): TryData<Value>,
) -> Result<(), LoginError> {
    let addr = client_addr(&socket);
    match admin.login.login(auth.ok().as_ref(), addr).await {
        Ok(session) => {
            if let Some(id) = session {
                tracing::info!(%addr, "admin UI logged in");
                socket.extensions.insert(NewSession(id));
            }
            Ok(())
        }
        Err(e) => {
            node.metrics
                .auth_failures
                .with_label_values(&[socket.ns(), "admin_login"])
                .inc();
            tracing::info!(%addr, "admin UI log-in refused: {e}");
            Err(e)
        }
    }
}

/// Connect handler: `session`, `config`, the command handlers and, in development mode,
/// `all_sockets`.
pub async fn on_connect<A: Adapter>(
    socket: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    State(node): State<Arc<NodeState>>,
) {
    node.metrics
        .connects
        .with_label_values(&[socket.ns()])
        .inc();
    if let Some(NewSession(id)) = socket.extensions.get::<NewSession>() {
        let _ = socket.emit("session", &id);
    }
    let _ = socket.emit("config", &admin.ui_config());
    socket.on("emit", on_emit::<A>);
    socket.on("join", on_join::<A>);
    socket.on("leave", on_leave::<A>);
    socket.on("_disconnect", on_disconnect_command::<A>);
    socket.on_disconnect(on_disconnect::<A>);
    if admin.development() {
        let Some(bus) = admin.bus.get().cloned() else {
            return;
        };
        match bus
            .ask(Request::Sockets {
                limit: ALL_SOCKETS_LIMIT,
            })
            .await
        {
            Ok(gathered) => {
                let mut sockets: Vec<_> = gathered
                    .answers
                    .into_iter()
                    .flat_map(|a| a.sockets)
                    .collect();
                if sockets.len() > ALL_SOCKETS_LIMIT {
                    tracing::warn!(
                        total = sockets.len(),
                        shown = ALL_SOCKETS_LIMIT,
                        "all_sockets: too many sockets for the admin UI; showing the first"
                    );
                    sockets.truncate(ALL_SOCKETS_LIMIT);
                }
                let _ = socket.emit("all_sockets", &sockets);
            }
            Err(e) => tracing::warn!("all_sockets not sent: {e}"),
        }
    }
}

async fn on_disconnect<A: Adapter>(
    s: SocketRef<A>,
    reason: DisconnectReason,
    State(node): State<Arc<NodeState>>,
) {
    node.metrics
        .disconnects
        .with_label_values(&[s.ns(), crate::connect::reason_label(reason)])
        .inc();
}

/// A command refused before it was applied.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("{0}")]
    Input(#[from] validate::InputError),
    #[error("unknown namespace {0:?}")]
    UnknownNamespace(String),
    #[error("{0} must be {1}")]
    Type(&'static str, &'static str),
}

impl CommandError {
    fn code(&self) -> &'static str {
        match self {
            CommandError::Input(e) => e.code(),
            CommandError::UnknownNamespace(_) => "unknown_namespace",
            CommandError::Type(..) => "invalid_type",
        }
    }
}

fn namespace(admin: &Admin, v: Option<&Value>) -> Result<String, CommandError> {
    let nsp = v
        .and_then(Value::as_str)
        .ok_or(CommandError::Type("namespace", "a string"))?;
    // every node serves the same namespaces
    if crate::NAMESPACES.contains(&nsp) || nsp == admin.config.admin_namespace {
        Ok(nsp.to_owned())
    } else {
        Err(CommandError::UnknownNamespace(nsp.to_owned()))
    }
}

fn filter(v: Option<&Value>) -> Result<Option<String>, CommandError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(validate::room(v)?)),
    }
}

fn parse_emit(s: &Admin, a: &[Value]) -> Result<Command, CommandError> {
    let event = a
        .get(2)
        .and_then(Value::as_str)
        .ok_or(CommandError::Type("event", "a string"))?;
    validate::event(event)?;
    Ok(Command::Emit {
        nsp: namespace(s, a.first())?,
        filter: filter(a.get(1))?,
        event: event.to_owned(),
        args: a.get(3..).map(<[Value]>::to_vec).unwrap_or_default(),
    })
}

fn parse_room_change(s: &Admin, a: &[Value], join: bool) -> Result<Command, CommandError> {
    let nsp = namespace(s, a.first())?;
    let room = validate::room(a.get(1).unwrap_or(&Value::Null))?;
    let filter = filter(a.get(2))?;
    Ok(if join {
        Command::Join { nsp, room, filter }
    } else {
        Command::Leave { nsp, room, filter }
    })
}

fn parse_disconnect(s: &Admin, a: &[Value]) -> Result<Command, CommandError> {
    let nsp = namespace(s, a.first())?;
    let close = match a.get(1) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(CommandError::Type("close", "a boolean")),
    };
    Ok(Command::Disconnect {
        nsp,
        close,
        filter: filter(a.get(2))?,
    })
}

async fn run<A: Adapter>(
    socket: SocketRef<A>,
    admin: Arc<Admin>,
    ack: AckSender<A>,
    parsed: Result<Command, CommandError>,
) {
    let command = match parsed {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(sid = %socket.id, "admin command refused: {e}");
            let _ = ack.send(&serde_json::json!({
                "error": { "code": e.code(), "message": e.to_string() }
            }));
            return;
        }
    };
    let Some(bus) = admin.bus.get().cloned() else {
        return;
    };
    let name = command.name();
    match bus
        .ask(Request::Command {
            command: command.clone(),
        })
        .await
    {
        Ok(gathered) => {
            let sockets: u64 = gathered.answers.iter().map(|a| a.affected).sum();
            tracing::info!(
                command = name,
                ?command,
                sockets,
                nodes = gathered.answers.len(),
                missing = gathered.missing,
                "admin command applied"
            );
            let _ = ack.send(&serde_json::json!({
                "ok": true,
                "command": name,
                "sockets": sockets,
                "nodes": gathered.answers.len(),
                "missingNodes": gathered.missing,
            }));
        }
        Err(e) => {
            tracing::warn!(command = name, "admin command not applied: {e}");
            let _ = ack.send(&serde_json::json!({
                "error": { "code": "busy", "message": e.to_string() }
            }));
        }
    }
}

async fn on_emit<A: Adapter>(
    s: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(a)): Data<Args<serde_json::Value>>,
    ack: AckSender<A>,
) {
    let parsed = parse_emit(&admin, &a);
    run(s, admin, ack, parsed).await;
}

async fn on_join<A: Adapter>(
    s: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(a)): Data<Args<serde_json::Value>>,
    ack: AckSender<A>,
) {
    let parsed = parse_room_change(&admin, &a, true);
    run(s, admin, ack, parsed).await;
}

async fn on_leave<A: Adapter>(
    s: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(a)): Data<Args<serde_json::Value>>,
    ack: AckSender<A>,
) {
    let parsed = parse_room_change(&admin, &a, false);
    run(s, admin, ack, parsed).await;
}

async fn on_disconnect_command<A: Adapter>(
    s: SocketRef<A>,
    State(admin): State<Arc<Admin>>,
    Data(Args(a)): Data<Args<serde_json::Value>>,
    ack: AckSender<A>,
) {
    let parsed = parse_disconnect(&admin, &a);
    run(s, admin, ack, parsed).await;
}
