//! The gossip envelope: framing, and AEAD sealing with the cluster key.
//!
//! # Theory of operation
//!
//! Every gossip datagram (SWIM traffic from foca and the directory's own
//! messages) travels in one envelope. Its first byte says how to read the
//! rest:
//!
//! ```text
//! plain:  [FORMAT_PLAIN  = 1][kind][payload ...]
//! sealed: [FORMAT_SEALED = 2][nonce: 24 bytes][XChaCha20-Poly1305( [kind][payload ...] ) + tag: 16 bytes]
//! ```
//!
//! `kind` separates SWIM from directory messages ([`PayloadKind`]) and
//! carries the protocol version: protocol 2 (identities keyed on a random
//! node id, [`crate::identity`]) uses kinds 3 (SWIM) and 4 (directory).
//! Protocol 1 (kinds 1 and 2, identities keyed on the node name) cannot be
//! read by protocol 2 nor the other way round; such a datagram is dropped
//! and counted as [`OpenError::OtherProtocol`], so a cluster with daemons of
//! both versions stays two clusters rather than misreading each other. A
//! sealed envelope authenticates the format byte as associated data, so it
//! cannot be downgraded. The nonce is 24 random bytes (XChaCha20's extended
//! nonce makes random nonces safe: a collision needs about 2^96 messages).
//!
//! The key is HKDF-SHA256 (RFC 5869) of the trimmed contents of
//! `--cluster-key FILE`, with a fixed salt and an info string naming this
//! use, so the same secret could key another purpose without reuse.
//!
//! A node with a key accepts only sealed envelopes that open with it; a
//! node without one accepts only plain envelopes. Everything else is
//! dropped by the caller and counted ([`OpenError`] says why): a daemon
//! without the right key can neither join nor inject records.
//!
//! # Limits
//!
//! No replay protection beyond what the protocols above tolerate: SWIM
//! messages and directory records are idempotent and versioned, so a
//! replayed datagram repeats old news that is then ignored. Keys are not
//! rotated; changing the secret means restarting every daemon.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;

/// Format byte of an envelope without encryption.
const FORMAT_PLAIN: u8 = 1;
/// Format byte of an envelope sealed with the cluster key.
const FORMAT_SEALED: u8 = 2;
/// XChaCha20 nonce length.
const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
const TAG_LEN: usize = 16;
/// HKDF salt; fixed, so every host derives the same key from the secret.
const KDF_SALT: &[u8] = b"weft overlay cluster key v1";
/// HKDF info: what the derived key is for.
const KDF_INFO: &[u8] = b"weft overlay gossip AEAD (XChaCha20-Poly1305)";

/// The gossip protocol version: its kind bytes are below.
pub const PROTOCOL_VERSION: u8 = 2;
/// Kind byte of SWIM in protocol 2.
const KIND_SWIM: u8 = 3;
/// Kind byte of directory messages in protocol 2.
const KIND_DIRECTORY: u8 = 4;

/// Bytes an envelope adds around a payload: the most it can add (sealed).
pub const MAX_ENVELOPE_OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN;

/// What an envelope carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadKind {
    /// A SWIM datagram for foca.
    Swim,
    /// A directory message ([`crate::directory`]).
    Directory,
}

/// The key that seals gossip, derived from the cluster secret.
#[derive(Clone)]
pub struct ClusterKey {
    cipher: XChaCha20Poly1305,
}

/// Why a received datagram was dropped before reaching a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Empty, or too short for its format.
    #[error("datagram too short for a gossip envelope")]
    Truncated,
    /// The first byte is not a known format.
    #[error("unknown envelope format {0}")]
    UnknownFormat(u8),
    /// A plain envelope reached a node that requires a cluster key.
    #[error("plain gossip rejected: this node requires the cluster key")]
    PlainRejected,
    /// A sealed envelope reached a node without a cluster key.
    #[error("sealed gossip rejected: this node has no cluster key")]
    SealedRejected,
    /// The tag did not verify: another key, or tampering.
    #[error("gossip failed authentication")]
    AuthenticationFailed,
    /// The kind byte is not known.
    #[error("unknown payload kind {0}")]
    UnknownKind(u8),
    /// A datagram of another gossip protocol version (a weft daemon of
    /// another release): see the module header.
    #[error("gossip of protocol version {0}; this daemon speaks version {PROTOCOL_VERSION}")]
    OtherProtocol(u8),
}

impl ClusterKey {
    /// Derives the gossip key from the contents of the cluster-key file;
    /// leading and trailing whitespace is not part of the secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        let secret = secret.trim_ascii();
        let kdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(KDF_SALT), secret);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 255 * 32.
        if kdf.expand(KDF_INFO, &mut key).is_err() {
            unreachable!("HKDF-SHA256 can always expand to 32 bytes");
        }
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl PayloadKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Swim => KIND_SWIM,
            Self::Directory => KIND_DIRECTORY,
        }
    }

    fn from_byte(byte: u8) -> Result<Self, OpenError> {
        match byte {
            KIND_SWIM => Ok(Self::Swim),
            KIND_DIRECTORY => Ok(Self::Directory),
            1 | 2 => Err(OpenError::OtherProtocol(1)),
            other => Err(OpenError::UnknownKind(other)),
        }
    }
}

/// Wraps `payload` in an envelope, sealed when `key` is set; the nonce
/// comes from `rng`, which must be seeded from the operating system's
/// randomness in a daemon.
pub fn seal(
    key: Option<&ClusterKey>,
    kind: PayloadKind,
    payload: &[u8],
    rng: &mut impl Rng,
) -> Vec<u8> {
    let Some(key) = key else {
        let mut datagram = Vec::with_capacity(2 + payload.len());
        datagram.push(FORMAT_PLAIN);
        datagram.push(kind.to_byte());
        datagram.extend_from_slice(payload);
        return datagram;
    };
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let mut plaintext = Vec::with_capacity(1 + payload.len());
    plaintext.push(kind.to_byte());
    plaintext.extend_from_slice(payload);
    let sealed = key.cipher.encrypt(
        XNonce::from_slice(&nonce),
        Payload {
            msg: &plaintext,
            aad: &[FORMAT_SEALED],
        },
    );
    // Encryption only fails for messages near 2^38 bytes; gossip is < 64 KiB.
    let Ok(ciphertext) = sealed else {
        unreachable!("XChaCha20-Poly1305 encrypts any datagram-sized message");
    };
    let mut datagram = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    datagram.push(FORMAT_SEALED);
    datagram.extend_from_slice(&nonce);
    datagram.extend_from_slice(&ciphertext);
    datagram
}

/// Opens an envelope: its kind and payload.
///
/// # Errors
///
/// [`OpenError`] when the datagram is malformed, of the wrong format for
/// this node, or fails authentication.
pub fn open(
    key: Option<&ClusterKey>,
    datagram: &[u8],
) -> Result<(PayloadKind, Vec<u8>), OpenError> {
    let (&format, rest) = datagram.split_first().ok_or(OpenError::Truncated)?;
    match (format, key) {
        (FORMAT_PLAIN, None) => {
            let (&kind, payload) = rest.split_first().ok_or(OpenError::Truncated)?;
            Ok((PayloadKind::from_byte(kind)?, payload.to_vec()))
        }
        (FORMAT_SEALED, Some(key)) => {
            if rest.len() < NONCE_LEN + TAG_LEN + 1 {
                return Err(OpenError::Truncated);
            }
            let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
            let plaintext = key
                .cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &[FORMAT_SEALED],
                    },
                )
                .map_err(|_| OpenError::AuthenticationFailed)?;
            let (&kind, payload) = plaintext.split_first().ok_or(OpenError::Truncated)?;
            Ok((PayloadKind::from_byte(kind)?, payload.to_vec()))
        }
        (FORMAT_PLAIN, Some(_)) => Err(OpenError::PlainRejected),
        (FORMAT_SEALED, None) => Err(OpenError::SealedRejected),
        (other, _) => Err(OpenError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn sealed_round_trip_and_whitespace_is_not_secret() {
        let sender = ClusterKey::from_secret(b"  correct horse\n");
        let receiver = ClusterKey::from_secret(b"correct horse");
        let datagram = seal(Some(&sender), PayloadKind::Directory, b"hello", &mut rng());
        assert_eq!(datagram.len(), 5 + MAX_ENVELOPE_OVERHEAD);
        let opened = open(Some(&receiver), &datagram).unwrap();
        assert_eq!(opened, (PayloadKind::Directory, b"hello".to_vec()));
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let key = ClusterKey::from_secret(b"one");
        let other = ClusterKey::from_secret(b"two");
        let mut datagram = seal(Some(&key), PayloadKind::Swim, b"ping", &mut rng());
        assert_eq!(
            open(Some(&other), &datagram),
            Err(OpenError::AuthenticationFailed)
        );
        let last = datagram.len() - 1;
        datagram[last] ^= 1;
        assert_eq!(
            open(Some(&key), &datagram),
            Err(OpenError::AuthenticationFailed)
        );
    }

    #[test]
    fn formats_must_match_configuration() {
        let key = ClusterKey::from_secret(b"k");
        let plain = seal(None, PayloadKind::Swim, b"x", &mut rng());
        assert_eq!(
            open(None, &plain).unwrap(),
            (PayloadKind::Swim, b"x".to_vec())
        );
        assert_eq!(open(Some(&key), &plain), Err(OpenError::PlainRejected));
        let sealed = seal(Some(&key), PayloadKind::Swim, b"x", &mut rng());
        assert_eq!(open(None, &sealed), Err(OpenError::SealedRejected));
        // A downgrade: the sealed bytes relabelled as plain are not accepted.
        let mut relabelled = sealed.clone();
        relabelled[0] = FORMAT_PLAIN;
        assert_eq!(open(Some(&key), &relabelled), Err(OpenError::PlainRejected));
    }

    #[test]
    fn garbage_is_an_error() {
        let key = ClusterKey::from_secret(b"k");
        for datagram in [&[][..], &[1], &[2; 40], &[9, 9, 9], &[1, 77, 0]] {
            assert!(open(Some(&key), datagram).is_err());
            assert!(open(None, datagram).is_err());
        }
    }

    #[test]
    fn protocol_one_is_told_apart() {
        // A protocol-1 plain SWIM datagram: format 1, kind 1.
        assert_eq!(open(None, &[1, 1, 0]), Err(OpenError::OtherProtocol(1)));
        assert_eq!(open(None, &[1, 2, 0]), Err(OpenError::OtherProtocol(1)));
        assert_eq!(seal(None, PayloadKind::Swim, b"", &mut rng()), vec![1, 3]);
    }
}
