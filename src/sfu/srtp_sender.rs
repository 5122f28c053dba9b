//! SRTP protection of one outbound stream's RTP packets, in place in the caller's buffer:
//! AES-128-CM with HMAC-SHA1-80 (RFC 3711) and AES-128-GCM (RFC 7714), the two profiles a
//! subscribe connection negotiates ([`crate::sfu::srtp_keys::capturable_profiles`]).
//!
//! Why not `rtc-srtp`'s `Context`: it copies every packet into a buffer it allocates and looks
//! the SSRC's rollover state up in a map, twice, for each packet and subscriber. A stream has
//! one SSRC and its own buffer, so neither is needed. The primitives (AES, GHASH, HMAC) are
//! still the crypto provider's, keyed once per stream; the tests hold the output byte for byte
//! against `rtc-srtp`'s.

use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CryptoError, HmacAlgorithm, Mac, RTCCrypto,
    StreamCipher, StreamCipherAlgorithm,
};
use rtc::srtp::protection_profile::ProtectionProfile;

use crate::sfu::prefetch::prefetch;

/// The longest tag either profile appends (GCM's).
pub const MAX_TAG_LEN: usize = 16;

const GCM_TAG_LEN: usize = 16;
const HMAC_SHA1_80_TAG_LEN: usize = 10;
/// Key derivation labels (RFC 3711 §4.3.2).
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_AUTHENTICATION: u8 = 0x01;
const LABEL_SALT: u8 = 0x02;

#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("SRTP profile {0:?} is not one a subscribe connection negotiates")]
    UnsupportedProfile(ProtectionProfile),
    #[error("SRTP master key or salt of the wrong length")]
    KeyLength,
    #[error("no room for the SRTP tag: packet of {len} bytes in a buffer of {capacity}")]
    NoRoom { len: usize, capacity: usize },
    #[error("SRTP packet before its own header ({header_len} of {len} bytes)")]
    ShortPacket { header_len: usize, len: usize },
    #[error("crypto provider: {0}")]
    Crypto(#[from] CryptoError),
}

/// One stream's sending SRTP state: session keys and the packet index (RFC 3711 §3.3.1).
pub struct SrtpSender {
    cipher: SessionCipher,
    /// The highest packet index protected so far (rollover counter · 2^16 + sequence number).
    highest_index: Option<u64>,
}

enum SessionCipher {
    AesGcm {
        aead: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    AesCmHmacSha1 {
        keystream: Box<dyn StreamCipher>,
        auth: Box<dyn Mac>,
        salt: [u8; 14],
    },
}

impl SrtpSender {
    /// Starts loading the session's cipher state (AES round keys, the GHASH table: several
    /// cache lines, in their own allocations), which a stream's next packet finds out of the
    /// cache in a large room.
    pub fn prefetch(&self) {
        match &self.cipher {
            SessionCipher::AesGcm { aead, .. } => prefetch(&**aead, 9),
            SessionCipher::AesCmHmacSha1 {
                keystream, auth, ..
            } => {
                prefetch(&**keystream, 5);
                prefetch(&**auth, 3);
            }
        }
    }

    /// Derives the session keys from the master key and salt (key derivation rate 0).
    pub fn new(
        profile: ProtectionProfile,
        master_key: &[u8],
        master_salt: &[u8],
        crypto: &dyn RTCCrypto,
    ) -> Result<SrtpSender, SrtpError> {
        let derive =
            |label, out: &mut [u8]| derive_key(crypto, master_key, master_salt, label, out);
        let cipher = match profile {
            ProtectionProfile::AeadAes128Gcm => {
                if master_key.len() != 16 || master_salt.len() != 12 {
                    return Err(SrtpError::KeyLength);
                }
                let mut key = [0u8; 16];
                let mut salt = [0u8; 12];
                derive(LABEL_ENCRYPTION, &mut key)?;
                derive(LABEL_SALT, &mut salt)?;
                SessionCipher::AesGcm {
                    aead: crypto.new_aead(AeadAlgorithm::Aes128Gcm, &key)?,
                    salt,
                }
            }
            ProtectionProfile::Aes128CmHmacSha1_80 => {
                if master_key.len() != 16 || master_salt.len() != 14 {
                    return Err(SrtpError::KeyLength);
                }
                let mut key = [0u8; 16];
                let mut auth = [0u8; 20];
                let mut salt = [0u8; 14];
                derive(LABEL_ENCRYPTION, &mut key)?;
                derive(LABEL_AUTHENTICATION, &mut auth)?;
                derive(LABEL_SALT, &mut salt)?;
                SessionCipher::AesCmHmacSha1 {
                    keystream: crypto.new_stream_cipher(StreamCipherAlgorithm::Aes128Ctr, &key)?,
                    auth: crypto.new_hmac(HmacAlgorithm::Sha1, &auth)?,
                    salt,
                }
            }
            other => return Err(SrtpError::UnsupportedProfile(other)),
        };
        Ok(SrtpSender {
            cipher,
            highest_index: None,
        })
    }

    /// Protects the RTP packet in `buf[..len]`, whose header is `buf[..header_len]`: encrypts
    /// the rest in place and appends the tag. Returns the protected length; `buf` must have
    /// room for [`MAX_TAG_LEN`] more bytes.
    ///
    /// A packet sent again (a retransmission) is protected under the index it had, so the
    /// receiver sees the original.
    pub fn protect(
        &mut self,
        buf: &mut [u8],
        len: usize,
        header_len: usize,
    ) -> Result<usize, SrtpError> {
        if buf.len() < len + MAX_TAG_LEN {
            return Err(SrtpError::NoRoom {
                len,
                capacity: buf.len(),
            });
        }
        if header_len < 12 || header_len > len {
            return Err(SrtpError::ShortPacket { header_len, len });
        }
        let sequence = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = [buf[8], buf[9], buf[10], buf[11]];
        let index = self.index_of(sequence);
        let roc = ((index >> 16) as u32).to_be_bytes();
        let protected_len = match &mut self.cipher {
            SessionCipher::AesGcm { aead, salt } => {
                // RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XORed with the session salt.
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc);
                iv[6..10].copy_from_slice(&roc);
                iv[10..12].copy_from_slice(&sequence.to_be_bytes());
                xor_into(&mut iv, salt);
                let (packet, rest) = buf.split_at_mut(len);
                let (header, payload) = packet.split_at_mut(header_len);
                aead.seal_in_place(&iv, header, payload, &mut rest[..GCM_TAG_LEN])?;
                len + GCM_TAG_LEN
            }
            SessionCipher::AesCmHmacSha1 {
                keystream,
                auth,
                salt,
            } => {
                // RFC 3711 §4.1.1: (salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16).
                let mut iv = [0u8; 16];
                iv[4..8].copy_from_slice(&ssrc);
                iv[8..12].copy_from_slice(&roc);
                iv[12..14].copy_from_slice(&sequence.to_be_bytes());
                xor_into(&mut iv[..14], salt);
                keystream.apply_keystream(&iv, &mut buf[header_len..len])?;
                // RFC 3711 §4.2: HMAC-SHA1 over the packet and the ROC, 80 bits of it.
                let mut tag = [0u8; 20];
                auth.sign(&[&buf[..len], &roc], &mut tag)?;
                buf[len..len + HMAC_SHA1_80_TAG_LEN].copy_from_slice(&tag[..HMAC_SHA1_80_TAG_LEN]);
                len + HMAC_SHA1_80_TAG_LEN
            }
        };
        if self.highest_index.is_none_or(|highest| index > highest) {
            self.highest_index = Some(index);
        }
        Ok(protected_len)
    }

    /// The packet index of `sequence` (RFC 3711 §3.3.1): the rollover counter that puts it
    /// nearest the highest index so far, so a late or repeated packet gets the index it was
    /// first sent with and a wrap past 65,535 moves the counter on.
    fn index_of(&self, sequence: u16) -> u64 {
        let Some(highest) = self.highest_index else {
            return u64::from(sequence);
        };
        let roc = highest >> 16;
        let highest_sequence = highest as u16;
        let distance = i32::from(sequence) - i32::from(highest_sequence);
        let roc = if highest_sequence < 0x8000 {
            if distance > 0x8000 && roc > 0 {
                roc - 1
            } else {
                roc
            }
        } else if distance < -0x8000 {
            roc + 1
        } else {
            roc
        };
        (roc << 16) | u64::from(sequence)
    }
}

fn xor_into(out: &mut [u8], with: &[u8]) {
    for (o, w) in out.iter_mut().zip(with) {
        *o ^= w;
    }
}

/// The AES-CM key derivation (RFC 3711 §4.3.1 and §4.3.3, used by RFC 7714 too), key
/// derivation rate 0: the master salt with the label at its eighth byte, then a block counter,
/// encrypted under the master key.
fn derive_key(
    crypto: &dyn RTCCrypto,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Result<(), SrtpError> {
    for (counter, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(counter as u16).to_be_bytes());
        crypto.block_encrypt(BlockCipherAlgorithm::Aes128, master_key, &mut block)?;
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtc::crypto::default_provider;
    use rtc::rtp;
    use rtc::shared::marshal::{Marshal, MarshalSize};
    use rtc::srtp::context::Context;

    use super::*;

    const KEY: [u8; 16] = *b"0123456789abcdef";
    const SALT: [u8; 14] = *b"saltsaltsaltsa";

    fn salt(profile: ProtectionProfile) -> &'static [u8] {
        match profile {
            ProtectionProfile::AeadAes128Gcm => &SALT[..12],
            _ => &SALT,
        }
    }

    fn packet(sequence: u16, payload_len: usize) -> rtp::Packet {
        rtp::Packet {
            header: rtp::Header {
                version: 2,
                marker: sequence.is_multiple_of(7),
                payload_type: 96,
                sequence_number: sequence,
                timestamp: u32::from(sequence).wrapping_mul(3000),
                ssrc: 0x1234_5678,
                ..Default::default()
            },
            payload: Bytes::from(
                (0..payload_len)
                    .map(|i| (i as u8).wrapping_add(sequence as u8))
                    .collect::<Vec<u8>>(),
            ),
        }
    }

    fn marshalled(p: &rtp::Packet) -> Vec<u8> {
        let mut buf = vec![0u8; p.marshal_size() + MAX_TAG_LEN];
        let n = p.marshal_to(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// Sequence numbers through a wrap, with late and repeated packets on both sides of it.
    fn sequences() -> Vec<u16> {
        let mut s: Vec<u16> = (65_500..=65_535).collect();
        s.extend([65_520, 65_530]);
        s.extend(0..40);
        s.extend([65_534, 3, 65_535, 39]);
        s.extend(40..60);
        s
    }

    #[test]
    fn protects_exactly_as_rtc_srtp_does_through_a_sequence_wrap() {
        let provider = default_provider().unwrap();
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let mut ours =
                SrtpSender::new(profile, &KEY, salt(profile), provider.crypto()).unwrap();
            let mut theirs =
                Context::new(&KEY, salt(profile), profile, None, None, provider.crypto()).unwrap();
            let mut receiver =
                Context::new(&KEY, salt(profile), profile, None, None, provider.crypto()).unwrap();
            let mut decrypted = 0;
            for (n, sequence) in sequences().into_iter().enumerate() {
                let p = packet(sequence, 100 + n % 50);
                let plain = marshalled(&p);
                let want = theirs.encrypt_rtp_with_header(&plain, &p.header).unwrap();
                let mut buf = plain.clone();
                buf.resize(plain.len() + MAX_TAG_LEN, 0);
                let len = ours
                    .protect(&mut buf, plain.len(), p.header.marshal_size())
                    .unwrap();
                assert_eq!(
                    &buf[..len],
                    &want[..],
                    "{profile:?}, packet {n} (seq {sequence})"
                );
                // A receiver without replay protection takes repeats too.
                if let Ok(back) = receiver.decrypt_rtp(&buf[..len]) {
                    assert_eq!(&back[..], &plain[..]);
                    decrypted += 1;
                }
            }
            assert_eq!(decrypted, sequences().len(), "{profile:?}");
        }
    }

    #[test]
    fn the_rollover_counter_follows_the_highest_index() {
        let provider = default_provider().unwrap();
        let profile = ProtectionProfile::AeadAes128Gcm;
        let mut s = SrtpSender::new(profile, &KEY, salt(profile), provider.crypto()).unwrap();
        assert_eq!(s.index_of(65_535), 65_535);
        let mut buf = vec![0u8; 64];
        let p = marshalled(&packet(65_535, 4));
        buf[..p.len()].copy_from_slice(&p);
        s.protect(&mut buf, p.len(), 12).unwrap();
        // After 65,535: 0 is the next rollover, 65,000 is still this one.
        assert_eq!(s.index_of(0), 1 << 16);
        assert_eq!(s.index_of(65_000), 65_000);
        let p = marshalled(&packet(2, 4));
        buf[..p.len()].copy_from_slice(&p);
        s.protect(&mut buf, p.len(), 12).unwrap();
        assert_eq!(s.index_of(65_534), 65_534);
        assert_eq!(s.index_of(3), (1 << 16) | 3);
        // Never below rollover 0.
        let fresh = SrtpSender::new(profile, &KEY, salt(profile), provider.crypto()).unwrap();
        assert_eq!(fresh.index_of(40_000), 40_000);
    }

    #[test]
    fn refuses_what_it_cannot_protect() {
        let provider = default_provider().unwrap();
        let crypto = provider.crypto();
        let profile = ProtectionProfile::Aes128CmHmacSha1_80;
        assert!(matches!(
            SrtpSender::new(ProtectionProfile::AeadAes256Gcm, &KEY, &SALT[..12], crypto),
            Err(SrtpError::UnsupportedProfile(_))
        ));
        assert!(matches!(
            SrtpSender::new(profile, &KEY[..8], &SALT, crypto),
            Err(SrtpError::KeyLength)
        ));
        let mut s = SrtpSender::new(profile, &KEY, &SALT, crypto).unwrap();
        let p = marshalled(&packet(1, 20));
        let mut tight = p.clone();
        assert!(matches!(
            s.protect(&mut tight, p.len(), 12),
            Err(SrtpError::NoRoom { .. })
        ));
        let mut buf = p.clone();
        buf.resize(p.len() + MAX_TAG_LEN, 0);
        assert!(matches!(
            s.protect(&mut buf, 8, 12),
            Err(SrtpError::ShortPacket { .. })
        ));
    }
}
