//! Who may open a QUIC tunnel: every host that holds the cluster key, and
//! no one else.
//!
//! # Theory of operation
//!
//! Both ends of every tunnel authenticate with one Ed25519 key pair that
//! each host derives from the cluster secret (`--cluster-key FILE`):
//! HKDF-SHA256 (RFC 5869) of the secret, with the gossip key's salt and an
//! info string of its own, gives the 32-byte seed. The TLS 1.3 handshake
//! inside QUIC presents that key as a raw public key (RFC 7250: no X.509
//! certificate, no names, no dates, no CA) and requires the other side's,
//! in both directions (mutual authentication); [`PinnedKey`] accepts only
//! the cluster's own public key and checks the handshake's signature with
//! it. A host without the secret cannot sign the handshake, so it gets no
//! connection, and no frame of an encrypted network reaches it or comes
//! from it.
//!
//! The traffic keys come from the handshake's ephemeral X25519 exchange,
//! not from the cluster secret: each connection has its own keys, and a
//! secret stolen later does not open traffic recorded earlier (forward
//! secrecy). The AEAD is TLS 1.3's AES-128-GCM (AES-NI where the CPU has
//! it) or ChaCha20-Poly1305, as the two ends agree.
//!
//! # Threat model, and why one key for the cluster
//!
//! The alternative was a key pair per host, its public key vouched for in
//! the gossip. It would not be stronger here: the gossip is itself sealed
//! with the cluster secret (`crate::envelope`), so whoever holds the
//! secret can already speak for any host, publish records and vouch for
//! keys. One derived key has nothing to distribute, nothing to rotate apart
//! from the secret, and lets a host's first frame start a handshake before
//! the gossip told anything about the peer. What it gives: confidentiality
//! and integrity of overlay frames against everyone on the underlay without
//! the secret (on-path observers and injectors included); replayed packets
//! are dropped by QUIC's packet numbers. What it does not: protection
//! from a member, or from anyone who read the secret file; traffic
//! analysis (sizes and timing stay visible); hiding which hosts talk.

use std::sync::Arc;

use hkdf::Hkdf;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::AlwaysResolvesClientRawPublicKeys;
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::Sha256;

/// HKDF salt: the gossip key's (one secret, one salt, one info per use).
const KDF_SALT: &[u8] = b"weft overlay cluster key v1";
/// HKDF info: what the derived seed is for.
const KDF_INFO: &[u8] = b"weft overlay QUIC identity (Ed25519)";

/// The application protocol both ends must name in the handshake.
pub const ALPN: &[u8] = b"weft-overlay/1";

/// PKCS#8 v1 (RFC 8410) of an Ed25519 private key: this prefix, then the
/// 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why the QUIC identity could not be made (a bug or a build without the
/// algorithms, never the secret's content).
#[derive(Debug, thiserror::Error)]
#[error("the QUIC tunnel's TLS configuration: {0}")]
pub struct CryptoError(String);

impl From<String> for CryptoError {
    fn from(reason: String) -> Self {
        CryptoError(reason)
    }
}

/// The cluster's QUIC identity: its key pair and the TLS configurations
/// that present and require it. See the module header.
#[derive(Debug, Clone)]
pub struct QuicIdentity {
    key: Arc<CertifiedKey>,
    verifier: Arc<PinnedKey>,
    provider: Arc<CryptoProvider>,
}

impl QuicIdentity {
    /// The identity every holder of `secret` derives alike.
    ///
    /// # Errors
    ///
    /// [`CryptoError`] when the derived key does not load (not expected).
    pub fn from_secret(secret: &[u8]) -> Result<QuicIdentity, CryptoError> {
        let mut seed = [0u8; 32];
        Hkdf::<Sha256>::new(Some(KDF_SALT), secret)
            .expand(KDF_INFO, &mut seed)
            .map_err(|e| CryptoError(e.to_string()))?;
        let mut pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
            .map_err(|e| CryptoError(e.to_string()))?;
        let spki = signing
            .public_key()
            .ok_or_else(|| CryptoError("no public key for the Ed25519 key".into()))?
            .as_ref()
            .to_vec();
        let key = Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(spki.clone())],
            signing,
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PinnedKey {
            spki,
            algorithms: provider.signature_verification_algorithms,
        });
        Ok(QuicIdentity {
            key,
            verifier,
            provider,
        })
    }

    /// The TLS configuration of the side that accepts connections.
    ///
    /// # Errors
    ///
    /// [`CryptoError`] when rustls refuses the configuration.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, CryptoError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CryptoError(e.to_string()))?
            .with_client_cert_verifier(Arc::clone(&self.verifier) as Arc<dyn ClientCertVerifier>)
            .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(
                Arc::clone(&self.key),
            )));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The TLS configuration of the side that opens connections.
    ///
    /// # Errors
    ///
    /// [`CryptoError`] when rustls refuses the configuration.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, CryptoError> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| CryptoError(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(
                Arc::clone(&self.verifier) as Arc<dyn ServerCertVerifier>
            )
            .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(
                Arc::clone(&self.key),
            )));
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// Accepts exactly one raw public key (the cluster's), from either side.
#[derive(Debug)]
struct PinnedKey {
    /// The key's SubjectPublicKeyInfo (DER).
    spki: Vec<u8>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedKey {
    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if presented.as_ref() == self.spki.as_slice() {
            Ok(())
        } else {
            // Another key: a host with another cluster secret.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn signature(
        &self,
        message: &[u8],
        key: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.check(key)?;
        let spki = SubjectPublicKeyInfoDer::from(key.as_ref());
        verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algorithms)
    }
}

/// QUIC is TLS 1.3 only: a TLS 1.2 signature is never checked.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for PinnedKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_one_key_and_another_secret_another() {
        let a = QuicIdentity::from_secret(b"cluster secret").unwrap();
        let b = QuicIdentity::from_secret(b"cluster secret").unwrap();
        let c = QuicIdentity::from_secret(b"another secret").unwrap();
        assert_eq!(a.verifier.spki, b.verifier.spki);
        assert_ne!(a.verifier.spki, c.verifier.spki);
        // An Ed25519 SubjectPublicKeyInfo: 12 bytes of prefix, 32 of key.
        assert_eq!(a.verifier.spki.len(), 44);
        let theirs = CertificateDer::from(c.verifier.spki.clone());
        assert!(a.verifier.check(&theirs).is_err());
        assert!(a.server_config().is_ok() && a.client_config().is_ok());
    }
}
