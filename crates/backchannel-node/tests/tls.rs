//! TLS 1.3 handshakes on loopback: the node learns the device key, clients
//! pin the node, and anything else is refused.
#![allow(clippy::expect_used)] // Test set-up failures should panic with their message.

use std::sync::Arc;

use backchannel_crypto::{SecretKey, Signer};
use backchannel_node::tls::{self, Fingerprint, Identity};
use rustls::pki_types::ServerName;
use rustls::server::danger::ClientCertVerifier as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32]).expect("valid seed")
}

/// Runs one handshake; returns the device key the server saw, or the
/// client's error.
async fn handshake(
    client: rustls::ClientConfig,
    node: &Identity,
) -> Result<Option<backchannel_crypto::PublicKey>, String> {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(node).expect("server config")));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let key = tls::peer_device_key(stream.get_ref().1.peer_certificates());
        let mut buf = [0u8; 5];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(&buf).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(key)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("node.invalid").expect("name");
    let client_result = async {
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"hello")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"hello");
        Ok::<_, String>(())
    }
    .await;
    let server_result = server.await.expect("server task");
    client_result?;
    server_result
}

#[tokio::test]
async fn the_node_learns_the_device_key_and_the_client_pins_the_node() {
    let node = Identity::self_signed(&key(1), "node").expect("node identity");
    let device = Identity::self_signed(&key(2), "device").expect("device identity");
    let client = tls::client_config(&device, node.fingerprint()).expect("client config");
    let seen = handshake(client, &node).await.expect("handshake");
    assert_eq!(seen, Some(key(2).public_key()));
    // The fingerprint round-trips through hex (it travels in invitations).
    assert_eq!(
        Fingerprint::from_hex(&node.fingerprint().to_hex()).ok(),
        Some(node.fingerprint())
    );
    assert!(Fingerprint::from_hex("abcd").is_err());
}

#[tokio::test]
async fn a_client_pinning_another_node_refuses_it() {
    let node = Identity::self_signed(&key(1), "node").expect("node identity");
    let impostor = Identity::self_signed(&key(3), "node").expect("impostor identity");
    let device = Identity::self_signed(&key(2), "device").expect("device identity");
    let client = tls::client_config(&device, impostor.fingerprint()).expect("client config");
    assert!(handshake(client, &node).await.is_err());
}

#[tokio::test]
async fn a_client_without_a_device_certificate_connects_with_no_key() {
    let node = Identity::self_signed(&key(1), "node").expect("node identity");
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(tls::PinnedServerVerifier::new(node.fingerprint())))
    .with_no_client_auth();
    // The connection has no key: the API answers it 401 (tests/api.rs).
    assert_eq!(handshake(anonymous, &node).await, Ok(None));
}

#[tokio::test]
async fn a_client_certificate_for_another_key_type_is_refused() {
    let node = Identity::self_signed(&key(1), "node").expect("node identity");
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256 key");
    let cert = rcgen::CertificateParams::new(vec!["device".into()])
        .expect("params")
        .self_signed(&p256)
        .expect("cert");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(tls::PinnedServerVerifier::new(node.fingerprint())))
    .with_client_auth_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(p256.serialize_der().into()),
    )
    .expect("client config");
    // The node asks for Ed25519 only, so rustls does not even send a P-256
    // certificate: the connection completes with no key (and the API
    // answers it 401), or fails; it never acts as a key.
    assert_eq!(handshake(client, &node).await.ok().flatten(), None);
    // Sent anyway, the certificate is refused, and names no device key.
    let refused = tls::DeviceCertVerifier.verify_client_cert(
        cert.der(),
        &[],
        rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::ZERO),
    );
    assert!(refused.is_err());
    assert!(tls::device_key_of(cert.der()).is_none());
}

#[tokio::test]
async fn a_stored_certificate_is_served_with_its_key() {
    let made = Identity::self_signed(&key(1), "node").expect("node identity");
    let stored = made.certificate().as_ref().to_vec();
    let node = Identity::from_parts(&key(1), stored.clone()).expect("the stored certificate");
    // The same certificate, so the fingerprint clients pinned.
    assert_eq!(node.fingerprint(), made.fingerprint());
    assert_eq!(node.certificate().as_ref(), stored.as_slice());
    assert_eq!(node.public_key(), key(1).public_key());
    // And it serves: a client pinning that fingerprint completes a handshake.
    let device = Identity::self_signed(&key(2), "device").expect("device identity");
    let client = tls::client_config(&device, made.fingerprint()).expect("client config");
    assert_eq!(
        handshake(client, &node).await,
        Ok(Some(key(2).public_key()))
    );
}

#[test]
fn a_stored_certificate_for_another_key_is_refused() {
    let other = Identity::self_signed(&key(3), "node").expect("other identity");
    let stored = other.certificate().as_ref().to_vec();
    assert!(matches!(
        Identity::from_parts(&key(1), stored),
        Err(tls::TlsError::CertificateKeyMismatch)
    ));
    // Bytes that are no Ed25519 certificate at all.
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("p256 key");
    let cert = rcgen::CertificateParams::new(vec!["node".into()])
        .expect("params")
        .self_signed(&p256)
        .expect("cert");
    for bytes in [
        cert.der().to_vec(),
        b"not a certificate".to_vec(),
        Vec::new(),
    ] {
        assert!(matches!(
            Identity::from_parts(&key(1), bytes),
            Err(tls::TlsError::NotAnEd25519Certificate)
        ));
    }
}
