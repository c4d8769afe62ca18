//! Certificates made in the test (rcgen) and the TLS side of the OTLP receiver: a CA, a server
//! certificate for `localhost` and `127.0.0.1` signed by it, a client certificate signed by it,
//! and a second CA that signed nothing the receiver shows.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

/// PEM files (and the server's material in memory) for one test.
pub struct TestPki {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed neither: trusting it alone must fail.
    pub other_ca: PathBuf,
    pub client_certificate: PathBuf,
    pub client_key: PathBuf,
    /// DER of the client certificate, to compare with what the receiver saw.
    pub client_der: Vec<u8>,
    server_certificate_pem: String,
    server_key_pem: String,
    ca_pem: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl TestPki {
    pub fn make(dir: &Path) -> TestPki {
        let authority = ca("bedrock-flow-exporter test CA");
        let other = ca("some other CA");
        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server.distinguished_name.push(DnType::CommonName, "otlp receiver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &authority).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "bedrock-flow-exporter");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &authority).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        TestPki {
            ca: write("ca.pem", &authority.pem()),
            other_ca: write("other-ca.pem", &other.pem()),
            client_certificate: write("client.pem", &client_cert.pem()),
            client_key: write("client-key.pem", &client_key.serialize_pem()),
            client_der: client_cert.der().to_vec(),
            server_certificate_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_pem: authority.pem(),
        }
    }

    /// tonic's server TLS: the server certificate, and the CA a client must present a
    /// certificate of when `require_client` is set.
    pub fn grpc_server(&self, require_client: bool) -> tonic::transport::ServerTlsConfig {
        let config =
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(&self.server_certificate_pem, &self.server_key_pem));
        if require_client {
            config.client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
        } else {
            config
        }
    }

    /// rustls' server config for the HTTP receiver, the same choices as `grpc_server`.
    pub fn http_server(&self, require_client: bool) -> Arc<tokio_rustls::rustls::ServerConfig> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
        let builder = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(self.server_certificate_pem.as_bytes()).map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).unwrap();
        let builder = if require_client {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = tokio_rustls::rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(builder.with_single_cert(certs, key).unwrap())
    }
}
