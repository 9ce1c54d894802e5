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

/// Property tests of `X-Forwarded-For` handling: any header gets an answer, an untrusted peer
/// is never overruled, and the header sent upstream always ends with the real peer.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    proptest! {
        #[test]
        fn any_header_gets_an_answer(
            peer in ip(),
            headers in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
            trust_all in any::<bool>(),
        ) {
            let trusted: Vec<IpNet> = if trust_all {
                vec!["0.0.0.0/0".parse().expect("net"), "::/0".parse().expect("net")]
            } else {
                Vec::new()
            };
            let refs: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            let (client, header) = client_identity(Some(peer), &refs, &trusted);
            prop_assert!(header.ends_with(&peer.to_string()));
            if !trust_all {
                prop_assert_eq!(client, peer);
                prop_assert_eq!(header, peer.to_string());
            }
        }

        #[test]
        fn the_client_is_the_rightmost_untrusted_hop(
            mut chain in prop::collection::vec(ip(), 1..6),
            peer in any::<[u8; 4]>(),
            hops in 0usize..3,
        ) {
            // Trust only the peer's address, which may also appear as the last hops of the chain:
            // those are skipped, the next address is the client.
            let peer = IpAddr::from(peer);
            chain.extend(std::iter::repeat_n(peer, hops));
            let trusted: Vec<IpNet> = vec![peer.to_string().parse().expect("net")];
            let header = chain.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
            let (client, sent) = client_identity(Some(peer), &[header.as_bytes()], &trusted);
            let trusted_hop = |ip: &IpAddr| trusted.iter().any(|net| net.contains(*ip));
            let expected = chain
                .iter()
                .rev()
                .find(|ip| !trusted_hop(ip))
                .or(chain.first())
                .copied();
            prop_assert_eq!(Some(client), expected);
            prop_assert_eq!(sent, format!("{header}, {peer}"));
        }
    }
}
