//! TLS configuration, written once for every otafleet process (feature
//! `tls`): rustls with the ring provider, certificates and keys read from PEM
//! files.
//!
//! - [`server_config`]: `otafleet serve --tls-cert --tls-key`.
//! - [`Trust`]: what a client trusts. A CA bundle (`ca_file`: only those
//!   CAs, the usual choice for a fleet with its own CA) or, without one, the
//!   Mozilla roots (`webpki-roots`); optionally a [`Pin`]: the SHA-256 of the
//!   one certificate a given host must present, checked instead of a chain,
//!   a name and a validity period (a self-signed server certificate, or a
//!   device that must not trust a CA for its server). Other hosts (an
//!   artifact CDN) are still verified against the roots. The agent, the CLI
//!   and both MQTT clients build their client configuration here.

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The crypto provider of every TLS connection otafleet makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: leaf first; or a CA bundle).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("reading certificates from {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("reading certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow!("reading a private key from {}: {e}", path.display()))
}

/// The server side: the certificate chain and its key, HTTP/2 and HTTP/1.1
/// offered by ALPN. Fails, naming the file, on a missing or unreadable file
/// or a key that does not match the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig> {
    let certs = read_certs(cert)?;
    let key = read_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("the key does not suit the certificate {}", cert.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The one certificate a host must present: the SHA-256 of its DER bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub host: String,
    pub sha256: [u8; 32],
}

/// Parses a certificate fingerprint: 64 hex digits, with or without the
/// colons `openssl x509 -noout -fingerprint -sha256` prints.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32]> {
    let digits: String = text.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&digits).map_err(|_| anyhow!("a certificate fingerprint must be 64 hex digits"))?;
    bytes.try_into().map_err(|_| anyhow!("a certificate fingerprint must be 64 hex digits (SHA-256)"))
}

/// The fingerprint [`Pin`] compares: SHA-256 of the certificate's DER bytes, in hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// What a client trusts; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// PEM bundle of the CAs to trust instead of the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    pub pin: Option<Pin>,
}

impl Trust {
    pub fn ca(ca_file: Option<PathBuf>) -> Trust {
        Trust { ca_file, pin: None }
    }

    /// The client configuration (no ALPN: HTTP/1.1, or MQTT).
    pub fn client_config(&self) -> Result<ClientConfig> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots.add(cert).with_context(|| format!("a CA certificate of {}", path.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let config = match &self.pin {
            None => builder.with_root_certificates(roots).with_no_client_auth(),
            Some(pin) => {
                let host = ServerName::try_from(pin.host.clone())
                    .map_err(|_| anyhow!("'{}' is not a host name or IP address to pin", pin.host))?;
                let roots = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context("the CA roots")?;
                let verifier = Pinned { host, sha256: pin.sha256, roots, provider };
                builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
            }
        };
        Ok(config)
    }
}

/// Accepts exactly the pinned certificate from the pinned host (its
/// handshake signature still checked, so the peer holds the key); any other
/// host is verified against the roots.
#[derive(Debug)]
struct Pinned {
    host: ServerName<'static>,
    sha256: [u8; 32],
    roots: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if *server_name != self.host {
            return self.roots.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        }
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the certificate of {} (sha256 {}) is not the pinned one (sha256 {})",
                self.host.to_str(),
                hex::encode(got),
                hex::encode(self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    struct Pki {
        dir: tempfile::TempDir,
        server_der: CertificateDer<'static>,
    }

    /// A CA and a server certificate for 127.0.0.1 and localhost, as PEM files.
    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { server_der: cert.der().clone(), dir }
    }

    /// Serves one TLS connection that echoes a line; returns the port.
    fn serve_once(config: ServerConfig) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut tcp, _)) = listener.accept() {
                let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
                let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
                let mut buf = [0u8; 5];
                if tls.read_exact(&mut buf).is_ok() {
                    let _ = tls.write_all(&buf);
                }
            }
        });
        port
    }

    fn talk(trust: &Trust, port: u16, name: &str) -> Result<(), String> {
        let config = trust.client_config().map_err(|e| format!("{e:#}"))?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        tls.write_all(b"hello").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"hello");
        Ok(())
    }

    #[test]
    fn a_client_trusts_its_ca_and_refuses_the_mozilla_roots_for_a_private_one() {
        let pki = pki();
        let p = |f: &str| pki.dir.path().join(f);
        let server = || server_config(&p("server.pem"), &p("server.key")).unwrap();
        assert_eq!(talk(&Trust::ca(Some(p("ca.pem"))), serve_once(server()), "127.0.0.1"), Ok(()));
        assert_eq!(talk(&Trust::ca(Some(p("ca.pem"))), serve_once(server()), "localhost"), Ok(()));
        let err = talk(&Trust::default(), serve_once(server()), "localhost").unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        // The CA vouches for 127.0.0.1 and localhost, not for another name.
        let err = talk(&Trust::ca(Some(p("ca.pem"))), serve_once(server()), "ota.example").unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
    }

    #[test]
    fn a_pin_accepts_only_that_certificate_from_that_host() {
        let pki = pki();
        let p = |f: &str| pki.dir.path().join(f);
        let server = || server_config(&p("server.pem"), &p("server.key")).unwrap();
        let sha256 = parse_fingerprint(&fingerprint(&pki.server_der)).unwrap();
        let pinned = |host: &str, sha256| Trust { ca_file: None, pin: Some(Pin { host: host.into(), sha256 }) };
        // Pinned: no CA needed, and the name is not what is checked.
        assert_eq!(talk(&pinned("ota.example", sha256), serve_once(server()), "ota.example"), Ok(()));
        let mut other = sha256;
        other[0] ^= 1;
        let err = talk(&pinned("localhost", other), serve_once(server()), "localhost").unwrap_err();
        assert!(err.contains("is not the pinned one"), "{err}");
        // Another host is verified against the roots (here: the Mozilla ones, which refuse it).
        let err = talk(&pinned("ota.example", sha256), serve_once(server()), "localhost").unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn bad_files_and_fingerprints_say_what_is_wrong() {
        let pki = pki();
        let p = |f: &str| pki.dir.path().join(f);
        let e = format!("{:#}", server_config(&p("missing.pem"), &p("server.key")).unwrap_err());
        assert!(e.contains("missing.pem"), "{e}");
        let e = format!("{:#}", server_config(&p("server.key"), &p("server.key")).unwrap_err());
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = format!("{:#}", server_config(&p("server.pem"), &p("server.pem")).unwrap_err());
        assert!(e.contains("private key"), "{e}");
        // The CA's certificate with the server's key: they do not match.
        let e = format!("{:#}", server_config(&p("ca.pem"), &p("server.key")).unwrap_err());
        assert!(e.contains("does not suit"), "{e}");
        let fp = fingerprint(&pki.server_der);
        let colons: Vec<String> = fp.as_bytes().chunks(2).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
        assert_eq!(parse_fingerprint(&colons.join(":").to_uppercase()).unwrap(), parse_fingerprint(&fp).unwrap());
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }
}
