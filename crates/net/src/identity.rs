//! Node identity and the TLS configuration that proves it on every connection.
//!
//! Each node has a persistent ed25519 key in `<data dir>/node.key` (the same file
//! format as publisher keys, and the same key the libp2p control plane uses as its
//! identity). On the data plane it is presented as an RFC 7250 raw public key in TLS
//! 1.3: both sides present theirs, both sides verify the handshake signature with the
//! other's key, and the peer's identity is that key: no certificates, no authorities.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use modeld_core::{PublicKey, SecretKey};
use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key},
    pki_types::{
        CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
    },
    server::danger::{ClientCertVerified, ClientCertVerifier},
    sign::CertifiedKey,
};

use crate::NetError;

/// DER prefix of an ed25519 SubjectPublicKeyInfo (the 32 key bytes follow).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an ed25519 PKCS#8 private key (the 32 seed bytes follow).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A node's identity: its key pair.
#[derive(Debug, Clone)]
pub struct NodeKey {
    secret: SecretKey,
}

impl NodeKey {
    /// Loads `path`, creating a fresh key there (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, NetError> {
        let io = |what: &str, e| NetError::Io(format!("{what} {}", path.display()), e);
        match fs::read_to_string(path) {
            Ok(text) => {
                let mode = fs::metadata(path)
                    .map_err(|e| io("reading", e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(NetError::Config(format!(
                        "node key {} is accessible by other users (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    )));
                }
                let secret = SecretKey::from_file_text(&text)
                    .map_err(|e| NetError::Config(format!("node key {}: {e}", path.display())))?;
                Ok(Self { secret })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = SecretKey::generate();
                let tmp = path.with_extension("tmp");
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| io("creating", e))?;
                f.write_all(secret.to_file_text().as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| io("writing", e))?;
                fs::rename(&tmp, path).map_err(|e| io("creating", e))?;
                Ok(Self { secret })
            }
            Err(e) => Err(io("reading", e)),
        }
    }

    /// A key from a seed (tests).
    pub fn from_secret(secret: SecretKey) -> Self {
        Self { secret }
    }

    /// The node id: the public key.
    pub fn id(&self) -> PublicKey {
        self.secret.public()
    }

    /// The secret key (for the control plane's identity).
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }

    fn certified(&self) -> Result<Arc<CertifiedKey>, NetError> {
        let mut pkcs8 = PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&self.secret.to_seed());
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8))
            .map_err(|e| NetError::Config(format!("node key: {e}")))?;
        let spki = spki_der(&self.id());
        Ok(Arc::new(CertifiedKey::new(
            vec![CertificateDer::from(spki)],
            signing,
        )))
    }
}

fn spki_der(key: &PublicKey) -> Vec<u8> {
    let mut v = SPKI_PREFIX.to_vec();
    v.extend_from_slice(key.as_bytes());
    v
}

/// The node id in a raw-public-key "certificate" (an ed25519 SubjectPublicKeyInfo).
pub fn key_from_spki(der: &[u8]) -> Option<PublicKey> {
    let rest = der.strip_prefix(&SPKI_PREFIX)?;
    let bytes: [u8; 32] = rest.try_into().ok()?;
    PublicKey::from_bytes(&bytes).ok()
}

/// The node id of the other end of an established connection.
pub fn peer_id(conn: &quinn::Connection) -> Option<PublicKey> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    key_from_spki(certs.first()?.as_ref())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn check_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &algorithms(),
    )
}

fn known_key(cert: &CertificateDer<'_>) -> Result<PublicKey, rustls::Error> {
    key_from_spki(cert.as_ref()).ok_or(rustls::Error::InvalidCertificate(
        rustls::CertificateError::BadEncoding,
    ))
}

/// Who may connect to this node's data plane.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    keys: Option<Vec<PublicKey>>,
}

impl AllowList {
    /// Everyone with a valid key (the default).
    pub fn anyone() -> Self {
        Self { keys: None }
    }

    /// Only these node ids (a private swarm).
    pub fn only(keys: Vec<PublicKey>) -> Self {
        Self { keys: Some(keys) }
    }

    /// Whether `key` may connect.
    pub fn allows(&self, key: &PublicKey) -> bool {
        self.keys.as_ref().is_none_or(|k| k.contains(key))
    }
}

/// Verifies the server's raw public key signature; which key it is gets checked by the
/// caller against what it expected, once the connection is up.
#[derive(Debug)]
struct ServerKeyVerifier;

impl ServerCertVerifier for ServerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        known_key(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Requires a client key and checks it against the allow-list.
#[derive(Debug)]
struct ClientKeyVerifier {
    allow: AllowList,
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = known_key(end_entity)?;
        if !self.allow.allows(&key) {
            tracing::warn!(peer = %key, "refusing a peer that is not on the allow-list");
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
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
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        check_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS configuration of the data plane's server side.
pub(crate) fn server_tls(
    key: &NodeKey,
    allow: AllowList,
) -> Result<rustls::ServerConfig, NetError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ClientKeyVerifier { allow }))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(key.certified()?),
        ));
    cfg.alpn_protocols = vec![modeld_proto::wire::ALPN.to_vec()];
    Ok(cfg)
}

/// The TLS configuration of the data plane's client side.
pub(crate) fn client_tls(key: &NodeKey) -> Result<rustls::ClientConfig, NetError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerKeyVerifier))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(key.certified()?),
        ));
    cfg.alpn_protocols = vec![modeld_proto::wire::ALPN.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trip() {
        let key = SecretKey::from_seed([3; 32]).public();
        assert_eq!(key_from_spki(&spki_der(&key)), Some(key));
        assert_eq!(key_from_spki(&[0; 44]), None);
        assert_eq!(key_from_spki(&spki_der(&key)[..40]), None);
    }

    #[test]
    fn node_key_persists_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let a = NodeKey::load_or_create(&path).unwrap();
        let b = NodeKey::load_or_create(&path).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(NodeKey::load_or_create(&path).is_err());
    }
}
