//! Media: the selective forwarding unit. Nothing here knows about WebSockets or JSON; the
//! signaling layer drives it through [`member::MediaHandle`] and relays [`member::MediaSignal`].
//!
//! Packet path: a publisher's RTP arrives on its publish connection → one ingress loop per
//! published track ([`track`]) → for each subscriber, its egress for that track ([`egress`]),
//! called by the ingress, rewrites the packet with its own [`forwarder::RtpMunger`] and hands it
//! to the subscriber's connection without waiting, whose [`outbound_stream`] protects it into
//! the ingress's [`send_batch`]; the batch goes out in one `sendmmsg` per socket. Keyframe
//! requests flow back per track, throttled.
//!
//! Ownership: [`room::SfuRoom`] knows the room's members and published tracks; each member's
//! [`member`] actor owns its two peer connections and all of its forwarding state.

pub mod codecs;
pub mod egress;
pub mod forwarder;
pub mod member;
pub mod outbound_stream;
pub mod peer;
pub mod prefetch;
pub mod report_ssrc;
pub mod room;
pub mod send_batch;
pub mod send_connection;
pub mod srtp_keys;
pub mod srtp_sender;
pub mod ssrc_pool;
pub mod track;
pub mod track_stats;
pub mod transport;
pub mod wire_stats;
