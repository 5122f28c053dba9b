//! Just enough STUN (RFC 5389) for the UDP mux to route a first packet, and for start-up
//! discovery of the public address: recognising a Binding Request and reading its USERNAME,
//! and building/reading a Binding Request/Response for discovery. The ICE agent of each
//! connection does the real STUN processing (integrity, fingerprint) afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const HEADER_LEN: usize = 20;
const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// The STUN header of `packet` if it is one: (message type, transaction id, attributes).
fn parse(packet: &[u8]) -> Option<(u16, &[u8], &[u8])> {
    if packet.len() < HEADER_LEN || packet[0] & 0xC0 != 0 {
        return None;
    }
    let kind = u16::from_be_bytes([packet[0], packet[1]]);
    let len = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    let cookie = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    if cookie != MAGIC_COOKIE || !len.is_multiple_of(4) || HEADER_LEN + len > packet.len() {
        return None;
    }
    Some((kind, &packet[8..20], &packet[HEADER_LEN..HEADER_LEN + len]))
}

/// Iterates over `(type, value)` of the attributes, stopping at the first malformed one.
fn attributes(mut attrs: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if attrs.len() < 4 {
            return None;
        }
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = u16::from_be_bytes([attrs[2], attrs[3]]) as usize;
        let padded = len.div_ceil(4) * 4;
        if 4 + padded > attrs.len() {
            return None;
        }
        let value = &attrs[4..4 + len];
        attrs = &attrs[4 + padded..];
        Some((kind, value))
    })
}

/// For an ICE connectivity check (a Binding Request), the ufrag of the receiving side: the
/// part of USERNAME before `:` (RFC 8445 §7.2.2 — "RFRAG:LFRAG").
pub fn binding_request_local_ufrag(packet: &[u8]) -> Option<&str> {
    let (kind, _, attrs) = parse(packet)?;
    if kind != BINDING_REQUEST {
        return None;
    }
    let (_, username) = attributes(attrs).find(|(k, _)| *k == ATTR_USERNAME)?;
    let username = std::str::from_utf8(username).ok()?;
    let (ours, _) = username.split_once(':')?;
    (!ours.is_empty()).then_some(ours)
}

/// A Binding Request without attributes, as a STUN client sends to learn its mapped address.
pub fn binding_request(transaction_id: [u8; 12]) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(&transaction_id);
    out
}

/// The mapped address in a Binding Success Response to `transaction_id`.
pub fn binding_response_address(packet: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let (kind, tid, attrs) = parse(packet)?;
    if kind != BINDING_SUCCESS || tid != transaction_id {
        return None;
    }
    let mut plain = None;
    for (kind, value) in attributes(attrs) {
        match kind {
            ATTR_XOR_MAPPED_ADDRESS => return read_address(value, Some(transaction_id)),
            ATTR_MAPPED_ADDRESS => plain = read_address(value, None),
            _ => {}
        }
    }
    plain
}

fn read_address(value: &[u8], xor_with: Option<&[u8; 12]>) -> Option<SocketAddr> {
    if value.len() < 8 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([value[2], value[3]]);
    if xor_with.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (value[1], value.len()) {
        (0x01, 8..) => {
            let mut b = [value[4], value[5], value[6], value[7]];
            if xor_with.is_some() {
                for (x, c) in b.iter_mut().zip(cookie) {
                    *x ^= c;
                }
            }
            IpAddr::V4(Ipv4Addr::from(b))
        }
        (0x02, 20..) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&value[4..20]);
            if let Some(tid) = xor_with {
                for (i, x) in b.iter_mut().enumerate() {
                    *x ^= if i < 4 { cookie[i] } else { tid[i - 4] };
                }
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend((value.len() as u16).to_be_bytes());
        out.extend(value);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    fn message(kind: u16, tid: [u8; 12], attrs: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attrs.concat();
        let mut out = kind.to_be_bytes().to_vec();
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(MAGIC_COOKIE.to_be_bytes());
        out.extend(tid);
        out.extend(body);
        out
    }

    #[test]
    fn the_local_ufrag_is_the_username_part_before_the_colon() {
        let check = message(
            BINDING_REQUEST,
            [7; 12],
            &[
                attr(0x0024, &[0, 0, 0, 1]), // PRIORITY comes first in browsers' checks
                attr(ATTR_USERNAME, b"serverUfrag1:brws"),
            ],
        );
        assert_eq!(binding_request_local_ufrag(&check), Some("serverUfrag1"));
    }

    #[test]
    fn anything_else_has_no_ufrag() {
        let no_colon = message(BINDING_REQUEST, [1; 12], &[attr(ATTR_USERNAME, b"abc")]);
        let response = message(BINDING_SUCCESS, [1; 12], &[attr(ATTR_USERNAME, b"a:b")]);
        let no_username = message(BINDING_REQUEST, [1; 12], &[]);
        let mut truncated = message(BINDING_REQUEST, [1; 12], &[attr(ATTR_USERNAME, b"a:b")]);
        truncated.truncate(26);
        let rtp = [
            0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
        ];
        for packet in [
            &no_colon[..],
            &response,
            &no_username,
            &truncated,
            &rtp,
            &[],
            &[0; 19],
        ] {
            assert_eq!(binding_request_local_ufrag(packet), None, "{packet:?}");
        }
    }

    #[test]
    fn xor_mapped_address_is_decoded_for_v4_and_v6() {
        let tid = [9u8; 12];
        let addr: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let IpAddr::V4(v4) = addr.ip() else {
            unreachable!()
        };
        let mut value = vec![0, 1];
        value.extend((addr.port() ^ 0x2112).to_be_bytes());
        value.extend(
            v4.octets()
                .iter()
                .zip(MAGIC_COOKIE.to_be_bytes())
                .map(|(a, b)| a ^ b),
        );
        let response = message(
            BINDING_SUCCESS,
            tid,
            &[attr(ATTR_XOR_MAPPED_ADDRESS, &value)],
        );
        assert_eq!(binding_response_address(&response, &tid), Some(addr));
        assert_eq!(binding_response_address(&response, &[0; 12]), None);

        let v6: SocketAddr = "[2001:db8::5]:3478".parse().unwrap();
        let IpAddr::V6(ip6) = v6.ip() else {
            unreachable!()
        };
        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
        key.extend(tid);
        let mut value = vec![0, 2];
        value.extend((v6.port() ^ 0x2112).to_be_bytes());
        value.extend(ip6.octets().iter().zip(&key).map(|(a, b)| a ^ b));
        let response = message(
            BINDING_SUCCESS,
            tid,
            &[attr(ATTR_XOR_MAPPED_ADDRESS, &value)],
        );
        assert_eq!(binding_response_address(&response, &tid), Some(v6));
    }

    #[test]
    fn a_built_request_parses_as_a_binding_request() {
        let request = binding_request([3; 12]);
        let (kind, tid, attrs) = parse(&request).unwrap();
        assert_eq!(
            (kind, tid, attrs.len()),
            (BINDING_REQUEST, &[3u8; 12][..], 0)
        );
    }
}
