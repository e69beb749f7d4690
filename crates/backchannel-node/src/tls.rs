//! TLS 1.3 identities for the node and its clients.
//!
//! - The node's certificate is self-signed, made on first start; clients
//!   pin its SHA-256 fingerprint, which travels with the invitation, so no
//!   certificate authority is involved and a name in the certificate means
//!   nothing ([`PinnedServerVerifier`]).
//! - A client authenticates with its **per-talks device key**: a
//!   self-signed certificate for that Ed25519 key, checked by
//!   [`DeviceCertVerifier`]. The TLS handshake signature proves possession
//!   of the key; the node reads the key back with [`peer_device_key`] and
//!   every request on the connection acts as that key (authorisation is
//!   checked per request against the talks' access list, not here).
//! - TLS 1.3 only, Ed25519 only, with the `ring` provider.

use std::sync::Arc;

use backchannel_crypto::{PublicKey, SecretKey, Signer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Why a TLS identity or configuration could not be made.
#[derive(Debug, Error)]
pub enum TlsError {
    /// rcgen could not make the certificate.
    #[error("could not make the certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A stored certificate is not an X.509 certificate for an Ed25519 key.
    #[error("the certificate does not parse as one X.509 certificate for an Ed25519 key")]
    NotAnEd25519Certificate,
    /// A stored certificate is for another key than the one it is paired
    /// with.
    #[error(
        "the certificate is for another key; the certificate and the key belong to different identities"
    )]
    CertificateKeyMismatch,
    /// A fingerprint is not 64 hex digits.
    #[error("a certificate fingerprint is 64 hex digits (SHA-256 of the certificate)")]
    BadFingerprint,
}

/// The SHA-256 of a certificate's DER encoding: what clients pin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Self(Sha256::digest(cert.as_ref()).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, TlsError> {
        let bytes = hex::decode(s).map_err(|_| TlsError::BadFingerprint)?;
        Ok(Self(
            bytes.try_into().map_err(|_| TlsError::BadFingerprint)?,
        ))
    }

    /// 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// A TLS identity: an Ed25519 key and a self-signed certificate for it.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    public: PublicKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A self-signed certificate for `key`, named `name` (informational
    /// only: peers pin keys and fingerprints, never names).
    pub fn self_signed(key: &SecretKey, name: &str) -> Result<Self, TlsError> {
        let pkcs8 = ed25519_pkcs8(key);
        let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        // Validity is not what makes these certificates trusted (pinning
        // is); a wide window avoids failures from clock skew.
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(9999, 12, 31);
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Self {
            cert: cert.der().clone(),
            key: der,
            public: key.public_key(),
        })
    }

    /// The identity of `key` with a certificate made earlier (by
    /// [`Identity::self_signed`], stored, and pinned by its fingerprint):
    /// accepted if it is a certificate for `key`'s public key as
    /// [`device_key_of`] reads it, so the fingerprint stays the stored
    /// certificate's whatever the version that made it.
    pub fn from_parts(key: &SecretKey, cert_der: Vec<u8>) -> Result<Self, TlsError> {
        let cert = CertificateDer::from(cert_der);
        let certified = device_key_of(&cert).ok_or(TlsError::NotAnEd25519Certificate)?;
        let public = key.public_key();
        if certified != public {
            return Err(TlsError::CertificateKeyMismatch);
        }
        Ok(Self {
            cert,
            key: PrivatePkcs8KeyDer::from(ed25519_pkcs8(key).to_vec()),
            public,
        })
    }

    /// The certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// The identity's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// PKCS#8 v2 (RFC 8410 §7, with the public key) for an Ed25519 seed.
fn ed25519_pkcs8(key: &SecretKey) -> zeroize::Zeroizing<[u8; 85]> {
    const PREFIX: [u8; 16] = [
        0x30, 0x53, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    const MIDDLE: [u8; 5] = [0xa1, 0x23, 0x03, 0x21, 0x00];
    let mut out = zeroize::Zeroizing::new([0u8; 85]);
    out[..16].copy_from_slice(&PREFIX);
    out[16..48].copy_from_slice(key.seed().as_ref());
    out[48..53].copy_from_slice(&MIDDLE);
    out[53..].copy_from_slice(key.public_key().as_bytes());
    out
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Both verifiers refuse TLS 1.2 (only TLS 1.3 is configured).
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// Checks a TLS 1.3 handshake signature with the Ed25519 key of `cert` as
/// [`device_key_of`] reads it — the very key the node then acts as, not a
/// key a second certificate parser finds, so what is proven and what is
/// reported can never differ. Used for both sides of the handshake.
fn verify_ed25519_handshake(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    let key = device_key_of(cert).ok_or_else(bad)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.as_bytes())
        .verify(message, dss.signature())
        .map_err(|_| bad())?;
    Ok(HandshakeSignatureValid::assertion())
}

/// The Ed25519 key of a device certificate, if it is one: a single
/// certificate whose subject public key is an acceptable Ed25519 key
/// (canonical, not of small order).
pub fn device_key_of(cert: &CertificateDer<'_>) -> Option<PublicKey> {
    let (rest, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let spki = parsed.public_key();
    // id-Ed25519, RFC 8410 §3.
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return None;
    }
    PublicKey::from_bytes(&spki.subject_public_key.data).ok()
}

/// Accepts exactly one certificate for an acceptable Ed25519 device key
/// (its own signature is not what proves anything); the TLS 1.3 handshake
/// signature, checked against that same key, proves the client holds it.
#[derive(Debug, Default)]
pub struct DeviceCertVerifier;

impl ClientCertVerifier for DeviceCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// A client may connect without a certificate: the connection then has
    /// no key, and every API request on it is answered 401
    /// `unauthenticated` (a JSON error the client can read, where a failed
    /// handshake would say nothing). A certificate that is presented must
    /// be a valid device certificate.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() || device_key_of(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_handshake(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The device key the client authenticated with, from the connection's peer
/// certificates (present once the handshake completed under
/// [`DeviceCertVerifier`]).
pub fn peer_device_key(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<PublicKey> {
    match peer_certificates? {
        [cert] => device_key_of(cert),
        _ => None,
    }
}

/// The node's server configuration: TLS 1.3, its self-signed identity,
/// client authentication by device key required.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    Ok(rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(DeviceCertVerifier))
        .with_single_cert(vec![identity.cert.clone()], identity.private_key())?)
}

/// Accepts exactly the server certificate with the pinned fingerprint.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pinned: Fingerprint,
}

impl PinnedServerVerifier {
    /// Pins `fingerprint`.
    pub fn new(pinned: Fingerprint) -> Self {
        Self { pinned }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if intermediates.is_empty() && Fingerprint::of(end_entity) == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_ed25519_handshake(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A client configuration: authenticates with `device`'s key, accepts only
/// the node certificate with fingerprint `pinned`.
pub fn client_config(
    device: &Identity,
    pinned: Fingerprint,
) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new(pinned)))
        .with_client_auth_cert(vec![device.cert.clone()], device.private_key())?)
}
