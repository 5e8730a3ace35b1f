//! TLS for the metrics listener (`metrics.tls`), optionally with client certificates
//! (mTLS), as Prometheus' own exporters offer it (`web.config` `tls_server_config`).
//!
//! With `client_ca_file`, a client certificate signed by that CA is asked for, and
//! `/metrics` answers 403 without one; the TLS handshake itself still admits clients
//! without a certificate, because the kubelet's HTTPS probes send none (`/healthz` and
//! `/readyz` reveal only component names and states).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// A server configuration for the metrics listener, loaded (and checked) at start.
#[derive(Clone)]
pub struct MetricsTls {
    pub(super) config: Arc<rustls::ServerConfig>,
    /// Whether `/metrics` requires a verified client certificate.
    pub(super) client_auth: bool,
}

impl std::fmt::Debug for MetricsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsTls")
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

/// Which file of `metrics.tls` an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsField {
    CertFile,
    KeyFile,
    ClientCaFile,
}

impl TlsField {
    pub fn name(self) -> &'static str {
        match self {
            TlsField::CertFile => "cert_file",
            TlsField::KeyFile => "key_file",
            TlsField::ClientCaFile => "client_ca_file",
        }
    }
}

impl MetricsTls {
    /// Loads the PEM certificate chain, its private key and, for mTLS, the CA client
    /// certificates must be signed by. Errors name the field they are about.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        client_ca_file: Option<&Path>,
    ) -> Result<MetricsTls, (TlsField, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(cert_file).map_err(|e| (TlsField::CertFile, e))?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            (
                TlsField::KeyFile,
                format!("{}: no PEM private key ({e})", key_file.display()),
            )
        })?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| (TlsField::CertFile, e.to_string()))?;
        let builder = match client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca).map_err(|e| (TlsField::ClientCaFile, e))? {
                    roots
                        .add(cert)
                        .map_err(|e| (TlsField::ClientCaFile, format!("{}: {e}", ca.display())))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|e| (TlsField::ClientCaFile, format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            (
                TlsField::KeyFile,
                format!(
                    "{}: does not go with the certificate: {e}",
                    key_file.display()
                ),
            )
        })?;
        Ok(MetricsTls {
            config: Arc::new(config),
            client_auth: client_ca_file.is_some(),
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::Command;

    use metrics_exporter_prometheus::PrometheusBuilder;
    use rustls::pki_types::ServerName;

    use super::super::health::Health;
    use super::super::http::{Endpoint, serve};
    use super::*;

    /// `openssl` (the CLI) makes the test PKI: a CA, a server certificate for
    /// 127.0.0.1 and a client certificate signed by it, and a client certificate of
    /// another CA.
    struct Pki {
        dir: tempfile::TempDir,
    }

    impl Pki {
        fn new() -> Pki {
            let pki = Pki {
                dir: tempfile::tempdir().unwrap(),
            };
            for ca in ["ca", "other-ca"] {
                pki.openssl(&[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN={ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ]);
            }
            std::fs::write(pki.path("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
            std::fs::write(pki.path("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
            for (name, ca) in [("server", "ca"), ("client", "ca"), ("stranger", "other-ca")] {
                let ext = if name == "server" {
                    "server.ext"
                } else {
                    "client.ext"
                };
                pki.openssl(&[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ]);
                pki.openssl(&[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.pem"),
                ]);
            }
            pki
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn openssl(&self, args: &[&str]) {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .expect("the openssl CLI makes the test certificates");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        fn server(&self, client_ca: bool) -> MetricsTls {
            let ca = self.path("ca.pem");
            MetricsTls::load(
                &self.path("server.pem"),
                &self.path("server.key"),
                client_ca.then_some(ca.as_path()),
            )
            .unwrap()
        }

        /// An HTTPS GET of `path` presenting `client` (`client`, `stranger` or none):
        /// the status, or the error.
        fn get(&self, port: u16, path: &str, client: Option<&str>) -> Result<u16, String> {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(&self.path("ca.pem")).unwrap() {
                roots.add(cert).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let config = match client {
                None => builder.with_no_client_auth(),
                Some(name) => builder
                    .with_client_auth_cert(
                        read_certs(&self.path(&format!("{name}.pem"))).unwrap(),
                        PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap(),
                    )
                    .unwrap(),
            };
            let server = ServerName::try_from("127.0.0.1").unwrap();
            let connection = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
            let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, tcp);
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            match tls.read_to_end(&mut answer) {
                Ok(_) => {}
                // The server may close without close_notify after its response.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
                Err(e) => return Err(e.to_string()),
            }
            let head = String::from_utf8_lossy(&answer);
            head.split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no status in {head:?}"))
        }
    }

    fn start(tls: MetricsTls) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let health = Health::default();
        health.set_ready();
        serve(
            listener,
            Endpoint {
                prometheus: PrometheusBuilder::new().build_recorder().handle(),
                health,
                token: None,
                tls: Some(tls),
            },
        )
        .unwrap();
        port
    }

    #[test]
    fn https_serves_the_paths_and_refuses_plain_http() {
        let pki = Pki::new();
        let port = start(pki.server(false));
        assert_eq!(pki.get(port, "/metrics", None), Ok(200));
        assert_eq!(pki.get(port, "/readyz", None), Ok(200));
        let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(
            !String::from_utf8_lossy(&answer).contains("200 OK"),
            "no plain HTTP answer"
        );
    }

    /// With a client CA, `/metrics` needs a certificate it signed; the probes do not.
    #[test]
    fn client_certificates_guard_metrics_only() {
        let pki = Pki::new();
        let port = start(pki.server(true));
        assert_eq!(pki.get(port, "/metrics", Some("client")), Ok(200));
        assert_eq!(pki.get(port, "/metrics", None), Ok(403));
        assert_eq!(
            pki.get(port, "/healthz", None),
            Ok(200),
            "the kubelet's probes"
        );
        assert_eq!(pki.get(port, "/readyz", None), Ok(200));
        assert!(
            pki.get(port, "/metrics", Some("stranger")).is_err(),
            "a certificate of another CA fails the handshake"
        );
    }

    #[test]
    fn load_errors_name_the_file_they_are_about() {
        let pki = Pki::new();
        let err = |cert: &str, key: &str, ca: Option<&str>| {
            let ca = ca.map(|c| pki.path(c));
            MetricsTls::load(&pki.path(cert), &pki.path(key), ca.as_deref())
                .map(|_| ())
                .unwrap_err()
                .0
        };
        assert_eq!(err("missing.pem", "server.key", None), TlsField::CertFile);
        assert_eq!(err("server.key", "server.key", None), TlsField::CertFile);
        assert_eq!(err("server.pem", "server.pem", None), TlsField::KeyFile);
        assert_eq!(err("server.pem", "client.key", None), TlsField::KeyFile);
        assert_eq!(
            err("server.pem", "server.key", Some("nothing.pem")),
            TlsField::ClientCaFile
        );
    }
}
