//! Learning the SRTP master key and salt `rtc` derives for a connection, so Yoom can encrypt
//! the connection's media itself.
//!
//! Why: each forwarded packet through `rtc`'s handler chain costs about 9 µs in the server, of
//! which encryption is about 0.6 µs (docs/benchmarks.md). Encrypting with the connection's own
//! SRTP keys and sending at once skips the rest. `rtc` 0.21 keeps the keys private (the DTLS
//! keying-material export is crate-private), but it takes its cryptography from a provider the
//! application may supply. SRTP's key derivation (RFC 3711 §4.3.3, also for AES-GCM, RFC 7714
//! §11) encrypts `master salt ⊕ (label, index)` blocks under the master key through that
//! provider, and the first block derived under a key is label 0 at index 0, which is the salt
//! itself. `rtc` derives the local (sending) context before the remote one. The test at the
//! bottom holds both facts against the `rtc` this is built with: a connection's captured keys
//! must produce packets its peer's `rtc` decrypts.

use std::sync::{Arc, Mutex, OnceLock};

use rtc::crypto::{
    default_provider, ActiveKeyExchange, AeadAlgorithm, AeadCipher, BlockCipherAlgorithm,
    CbcAlgorithm, CbcCipher, CryptoAlgorithm, CryptoError, HashAlgorithm, HmacAlgorithm,
    KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto, RTCCryptoProvider, RTCRandom, SignatureScheme,
    SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::srtp::protection_profile::ProtectionProfile;

use crate::sfu::srtp_sender::{SrtpError, SrtpSender};

/// The SRTP profiles a connection whose keys are captured may negotiate: the two every browser
/// offers, told apart by which cipher `rtc` keys (an AEAD or not). AES-256 would need the
/// other key derivation, and the 32-bit tag could not be told from the 80-bit one.
pub fn capturable_profiles() -> Vec<SrtpProtectionProfile> {
    vec![
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    ]
}

/// One direction's SRTP master key and salt, and the profile they are for.
#[derive(Clone)]
pub struct SrtpKeys {
    profile: ProtectionProfile,
    master_key: Vec<u8>,
    master_salt: Vec<u8>,
    provider: Arc<dyn RTCCryptoProvider>,
}

impl std::fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

impl SrtpKeys {
    pub fn same(&self, other: &SrtpKeys) -> bool {
        std::mem::discriminant(&self.profile) == std::mem::discriminant(&other.profile)
            && self.master_key == other.master_key
            && self.master_salt == other.master_salt
    }

    /// Keys that came from elsewhere than a capture (tests and benchmarks), for the default
    /// crypto provider. The lengths are checked when a sender is made.
    pub fn new(
        profile: ProtectionProfile,
        master_key: Vec<u8>,
        master_salt: Vec<u8>,
    ) -> Result<SrtpKeys, SrtpError> {
        Ok(SrtpKeys {
            profile,
            master_key,
            master_salt,
            provider: shared_default()?,
        })
    }

    /// A fresh sending SRTP state for one stream. SRTP keeps its state per SSRC, so one per
    /// stream is the same as one per connection, and no stream's writer waits for another's.
    pub fn sender(&self) -> Result<SrtpSender, SrtpError> {
        SrtpSender::new(
            self.profile,
            &self.master_key,
            &self.master_salt,
            self.provider.crypto(),
        )
    }
}

/// The default provider, built once.
fn shared_default() -> Result<Arc<dyn RTCCryptoProvider>, CryptoError> {
    static DEFAULT: OnceLock<Arc<dyn RTCCryptoProvider>> = OnceLock::new();
    if let Some(provider) = DEFAULT.get() {
        return Ok(provider.clone());
    }
    let provider = default_provider()?;
    Ok(DEFAULT.get_or_init(|| provider).clone())
}

/// A crypto provider for one connection: everything goes to the default provider, and the
/// SRTP key derivations are watched.
pub struct KeyCapture {
    crypto: Arc<CapturingCrypto>,
}

struct CapturingCrypto {
    inner: Arc<dyn RTCCryptoProvider>,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// (master key, first block derived under it), in the order the keys were first used.
    keys: Vec<(Vec<u8>, [u8; 16])>,
    /// Whether an AEAD was keyed after the first derivation (AES-GCM rather than AES-CM).
    aead: bool,
}

impl KeyCapture {
    pub fn new() -> Result<Arc<KeyCapture>, CryptoError> {
        Ok(Arc::new(KeyCapture {
            crypto: Arc::new(CapturingCrypto {
                inner: shared_default()?,
                seen: Mutex::new(Seen::default()),
            }),
        }))
    }

    /// The local (sending) keys, once `rtc` has derived both contexts after the handshake.
    pub fn local_keys(&self) -> Option<SrtpKeys> {
        let seen = self.crypto.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.keys.len() < 2 {
            return None;
        }
        let (master_key, first_block) = &seen.keys[0];
        let profile = if seen.aead {
            ProtectionProfile::AeadAes128Gcm
        } else {
            ProtectionProfile::Aes128CmHmacSha1_80
        };
        Some(SrtpKeys {
            profile,
            master_key: master_key.clone(),
            master_salt: first_block[..profile.salt_len()].to_vec(),
            provider: self.crypto.inner.clone(),
        })
    }
}

impl RTCCryptoProvider for KeyCapture {
    fn name(&self) -> &'static str {
        "yoom-srtp-key-capture"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        self.crypto.as_ref()
    }

    fn random(&self) -> &dyn RTCRandom {
        self.crypto.inner.random()
    }
}

impl RTCCrypto for CapturingCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        // SRTP's key derivation is the only caller; AES-128 only, see `capturable_profiles`.
        if algorithm == BlockCipherAlgorithm::Aes128 {
            if let Ok(first) = <[u8; 16]>::try_from(&*block) {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if !seen.keys.iter().any(|(k, _)| k == key) {
                    seen.keys.push((key.to_vec(), first));
                }
            }
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        // DTLS keys AEADs too, but only before SRTP's first derivation.
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.keys.is_empty() {
                seen.aead = true;
            }
        }
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use bytes::{Bytes, BytesMut};
    use rtc::media_stream::MediaStreamTrack;
    use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
    use rtc::peer_connection::configuration::RTCConfigurationBuilder;
    use rtc::peer_connection::event::RTCPeerConnectionEvent;
    use rtc::peer_connection::message::RTCMessage;
    use rtc::peer_connection::state::RTCPeerConnectionState;
    use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
    use rtc::rtp;
    use rtc::rtp_transceiver::rtp_sender::{
        RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
    };
    use rtc::sansio::Protocol;
    use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

    use super::*;
    use crate::sfu::codecs::{media_engine_and_interceptors, supported_codecs, MediaDirection};
    use crate::sfu::send_connection::host_candidate;

    const SSRC: u32 = 0x1234_5678;

    fn peer(direction: MediaDirection, settings: SettingEngineBuilder) -> RTCPeerConnection {
        let (engine, registry) = media_engine_and_interceptors(direction, None).unwrap();
        RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings.build())
            .with_media_engine(engine)
            .with_interceptor_registry(registry)
            .build(Instant::now())
            .unwrap()
    }

    fn deliver(to: &mut RTCPeerConnection, datagram: &[u8], to_addr: SocketAddr, from: SocketAddr) {
        // Refusals (e.g. a late retransmitted handshake flight) are not what is tested here.
        let _ = to.handle_read(TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr: to_addr,
                peer_addr: from,
                transport_protocol: TransportProtocol::UDP,
                ecn: None,
            },
            message: BytesMut::from(datagram),
        });
    }

    /// A server connection with captured keys, connected in memory to a client that accepts
    /// only `client_profiles`; returns both and the client's payloads received so far.
    struct Pair {
        server: RTCPeerConnection,
        client: RTCPeerConnection,
        capture: Arc<KeyCapture>,
        server_addr: SocketAddr,
        client_addr: SocketAddr,
        received: Vec<Bytes>,
    }

    impl Pair {
        fn connect(client_profiles: Vec<SrtpProtectionProfile>) -> Pair {
            let capture = KeyCapture::new().unwrap();
            let mut server = peer(
                MediaDirection::SendOnly,
                SettingEngineBuilder::new()
                    .with_crypto_provider(capture.clone())
                    .with_srtp_protection_profiles(capturable_profiles()),
            );
            let mut client = peer(
                MediaDirection::Both,
                SettingEngineBuilder::new().with_srtp_protection_profiles(client_profiles),
            );
            let (vp8, _) = supported_codecs()
                .into_iter()
                .find(|(c, _)| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/VP8"))
                .unwrap();
            server
                .add_track(MediaStreamTrack::new(
                    "publisher".into(),
                    "video".into(),
                    "publisher-video".into(),
                    RtpCodecKind::Video,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(SSRC),
                            ..Default::default()
                        },
                        codec: vp8.rtp_codec.clone(),
                        ..Default::default()
                    }],
                ))
                .unwrap();
            let server_addr = SocketAddr::from(([10, 0, 0, 1], 7882));
            let client_addr = SocketAddr::from(([10, 0, 1, 1], 20_000));
            server
                .add_local_candidate(host_candidate(server_addr).unwrap())
                .unwrap();
            client
                .add_local_candidate(host_candidate(client_addr).unwrap())
                .unwrap();
            let offer = server.create_offer(None).unwrap();
            server
                .set_local_description(Instant::now(), offer.clone())
                .unwrap();
            client
                .set_remote_description(Instant::now(), offer)
                .unwrap();
            let answer = client.create_answer(None).unwrap();
            client
                .set_local_description(Instant::now(), answer.clone())
                .unwrap();
            server
                .set_remote_description(Instant::now(), answer)
                .unwrap();
            let mut pair = Pair {
                server,
                client,
                capture,
                server_addr,
                client_addr,
                received: Vec::new(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut connected = [false; 2];
            while connected != [true; 2] {
                assert!(Instant::now() < deadline, "no connection within 20 s");
                connected = pair.drive(connected);
                std::thread::sleep(Duration::from_millis(1));
            }
            pair
        }

        fn drive(&mut self, mut connected: [bool; 2]) -> [bool; 2] {
            let now = Instant::now();
            while let Some(d) = self.server.poll_write() {
                deliver(
                    &mut self.client,
                    &d.message,
                    self.client_addr,
                    self.server_addr,
                );
            }
            while let Some(d) = self.client.poll_write() {
                deliver(
                    &mut self.server,
                    &d.message,
                    self.server_addr,
                    self.client_addr,
                );
            }
            for (side, pc) in [&mut self.server, &mut self.client].into_iter().enumerate() {
                while let Some(event) = pc.poll_event() {
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = event {
                        assert_ne!(state, RTCPeerConnectionState::Failed);
                        connected[side] |= state == RTCPeerConnectionState::Connected;
                    }
                }
                while let Some(message) = pc.poll_read() {
                    if let RTCMessage::RtpPacket(_, packet) = message.message {
                        self.received.push(packet.payload);
                    }
                }
                if pc.poll_timeout().is_some_and(|due| due <= now) {
                    pc.handle_timeout(now).unwrap();
                }
            }
            connected
        }

        /// Protects a packet with `keys` and hands it to the client as if sent by the server.
        fn send_with(&mut self, keys: &SrtpKeys, sequence: u16, payload: &'static [u8]) {
            let packet = rtp::Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: 96,
                    sequence_number: sequence,
                    timestamp: 3_000,
                    ssrc: SSRC,
                    ..Default::default()
                },
                payload: Bytes::from_static(payload),
            };
            let plain = packet.marshal().unwrap();
            let mut protected = plain.to_vec();
            protected.resize(plain.len() + MAX_TAG_LEN, 0);
            let len = keys
                .sender()
                .unwrap()
                .protect(&mut protected, plain.len(), packet.header.marshal_size())
                .unwrap();
            deliver(
                &mut self.client,
                &protected[..len],
                self.client_addr,
                self.server_addr,
            );
            self.drive([true; 2]);
        }

        fn remote_keys(&self) -> SrtpKeys {
            let local = self.capture.local_keys().unwrap();
            let seen = self.capture.crypto.seen.lock().unwrap();
            let (master_key, block) = &seen.keys[1];
            SrtpKeys {
                master_key: master_key.clone(),
                master_salt: block[..local.profile.salt_len()].to_vec(),
                ..local
            }
        }
    }

    use rtc::shared::marshal::{Marshal, MarshalSize};

    use crate::sfu::srtp_sender::MAX_TAG_LEN;

    fn captured_keys_protect_what_the_peer_accepts(client_profiles: Vec<SrtpProtectionProfile>) {
        let mut pair = Pair::connect(client_profiles);
        let local = pair
            .capture
            .local_keys()
            .expect("keys captured after the handshake");
        // The other captured key is the client's: the client must refuse what it protects,
        // which shows the first one is the server's own and not merely some key.
        let remote = pair.remote_keys();
        pair.send_with(&remote, 1, b"protected with the client's key");
        assert!(
            pair.received.is_empty(),
            "the client accepted its own key's packet"
        );
        pair.send_with(&local, 2, b"protected with the server's key");
        assert_eq!(
            pair.received,
            vec![Bytes::from_static(b"protected with the server's key")]
        );
    }

    #[test]
    fn aes_gcm_keys_are_captured() {
        captured_keys_protect_what_the_peer_accepts(vec![
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
        ]);
    }

    #[test]
    fn aes_cm_hmac_sha1_80_keys_are_captured() {
        captured_keys_protect_what_the_peer_accepts(vec![
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
        ]);
    }
}
