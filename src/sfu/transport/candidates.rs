//! Host candidates name the address webrtc-rs bound its (throwaway) socket to; clients must be
//! told the address media really arrives on — the shared mux port, the leased port, or the
//! public address in front of a 1:1 NAT. This rewrites those candidates on the way out.

use std::borrow::Cow;
use std::net::SocketAddr;

/// `(address webrtc-rs reports, address announced to clients)` pairs of one connection.
pub type Announcements = [(SocketAddr, SocketAddr)];

/// Rewrites one candidate attribute value (`candidate:<foundation> <component> <transport>
/// <priority> <address> <port> typ ...`) if its address is one of `map`'s reported ones.
pub fn rewrite_candidate<'a>(candidate: &'a str, map: &Announcements) -> Cow<'a, str> {
    let mut fields: Vec<&str> = candidate.split(' ').collect();
    if fields.len() < 8 || !fields[0].starts_with("candidate:") {
        return Cow::Borrowed(candidate);
    }
    let Ok(ip) = fields[4].parse() else {
        return Cow::Borrowed(candidate);
    };
    let Ok(port) = fields[5].parse::<u16>() else {
        return Cow::Borrowed(candidate);
    };
    let reported = SocketAddr::new(ip, port);
    let Some((_, announced)) = map.iter().find(|(r, _)| *r == reported) else {
        return Cow::Borrowed(candidate);
    };
    let (ip, port) = (announced.ip().to_string(), announced.port().to_string());
    fields[4] = &ip;
    fields[5] = &port;
    Cow::Owned(fields.join(" "))
}

/// Rewrites every `a=candidate:` line of an SDP.
pub fn rewrite_sdp(sdp: &str, map: &Announcements) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        match body.strip_prefix("a=") {
            Some(candidate) if candidate.starts_with("candidate:") => {
                out.push_str("a=");
                out.push_str(&rewrite_candidate(candidate, map));
                out.push_str(&line[body.len()..]);
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Vec<(SocketAddr, SocketAddr)> {
        vec![(
            "127.0.0.1:41234".parse().unwrap(),
            "203.0.113.9:7882".parse().unwrap(),
        )]
    }

    #[test]
    fn a_host_candidate_on_the_reported_address_is_announced_instead() {
        let c = "candidate:1 1 udp 2130706431 127.0.0.1 41234 typ host generation 0";
        assert_eq!(
            rewrite_candidate(c, &map()),
            "candidate:1 1 udp 2130706431 203.0.113.9 7882 typ host generation 0"
        );
    }

    #[test]
    fn other_candidates_and_garbage_pass_unchanged() {
        for c in [
            "candidate:1 1 udp 2130706431 127.0.0.1 41235 typ host",
            "candidate:2 1 udp 1694498815 198.51.100.1 5000 typ srflx raddr 0.0.0.0 rport 0",
            "candidate:1 1 udp 2130706431 abcd.local 41234 typ host",
            "candidate:1 1 udp",
            "",
        ] {
            assert_eq!(rewrite_candidate(c, &map()), c);
        }
    }

    #[test]
    fn only_candidate_lines_of_an_sdp_change() {
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\na=candidate:1 1 udp 2130706431 127.0.0.1 41234 typ host\r\na=end-of-candidates\r\n";
        assert_eq!(
            rewrite_sdp(sdp, &map()),
            "v=0\r\nc=IN IP4 127.0.0.1\r\na=candidate:1 1 udp 2130706431 203.0.113.9 7882 typ host\r\na=end-of-candidates\r\n"
        );
    }
}
