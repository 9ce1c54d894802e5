//! Who the client is: its address, believed from `X-Forwarded-For` only when the peer is a
//! trusted hop, and the `X-Forwarded-For` sent to the node.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::IpNet;

/// The client address and the `X-Forwarded-For` to send upstream.
pub(super) fn client_identity(
    peer: Option<IpAddr>,
    forwarded: &[&[u8]],
    trusted: &[IpNet],
) -> (IpAddr, String) {
    let Some(peer) = peer else {
        return (IpAddr::V4(Ipv4Addr::UNSPECIFIED), String::new());
    };
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) || forwarded.is_empty() {
        return (peer, peer.to_string());
    }
    let chain: Vec<&str> = forwarded
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    // The client is the rightmost address that is not one of our trusted hops.
    let mut client = peer;
    for hop in chain.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let mut header = chain.join(", ");
    if !header.is_empty() {
        header.push_str(", ");
    }
    header.push_str(&peer.to_string());
    (client, header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_peers() {
        let peer: IpAddr = "10.0.0.2".parse().expect("ip");
        let header: &[&[u8]] = &[b"203.0.113.9, 10.0.0.7"];
        let (client, xff) = client_identity(Some(peer), header, &[]);
        assert_eq!(client, peer);
        assert_eq!(xff, "10.0.0.2");

        let (client, xff) = client_identity(Some(peer), header, &nets(&["10.0.0.0/8"]));
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().expect("ip"));
        assert_eq!(xff, "203.0.113.9, 10.0.0.7, 10.0.0.2");

        let (client, _) = client_identity(Some(peer), &[b"garbage"], &nets(&["10.0.0.0/8"]));
        assert_eq!(client, peer);
        let (client, xff) = client_identity(Some(peer), &[], &nets(&["10.0.0.0/8"]));
        assert_eq!((client, xff.as_str()), (peer, "10.0.0.2"));
    }
}
