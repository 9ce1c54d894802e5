//! The node registry as everyone reads it: the live nodes of `{p}:nodes` (lease not expired)
//! with their [`NodeInfo`] from `{p}:nodes:info`. The nodes write it (`Store::heartbeat`,
//! feature `adapter`); sio-proxy reads it with [`live_nodes`] (it builds this crate without
//! default features: registry types and reader only, no socketioxide).

use fred::clients::Client;
use fred::interfaces::{HashesInterface, SortedSetsInterface};

use crate::keys::Keys;
use crate::types::{NodeInfo, now_ms};

/// The nodes whose registry lease has not expired and whose info is present and readable,
/// sorted by id. An entry without info, or with info this version cannot read, is skipped
/// (and logged at debug or warn level).
pub async fn live_nodes(client: &Client, keys: &Keys) -> Result<Vec<NodeInfo>, fred::error::Error> {
    let ids: Vec<String> = client
        .zrangebyscore(keys.nodes(), now_ms() as f64, "+inf", false, None)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let infos: Vec<Option<String>> = client.hmget(keys.nodes_info(), ids.clone()).await?;
    let mut nodes = Vec::with_capacity(ids.len());
    for (id, info) in ids.iter().zip(infos) {
        let Some(info) = info else {
            tracing::debug!(node = %id, "registry lease without info; skipped");
            continue;
        };
        match serde_json::from_str::<NodeInfo>(&info) {
            Ok(node) => nodes.push(node),
            Err(e) => tracing::warn!(node = %id, error = %e, "unreadable registry entry"),
        }
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(nodes)
}
