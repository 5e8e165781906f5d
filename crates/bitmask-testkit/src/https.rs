//! A real HTTPS server for tests, written by someone else: Python's
//! `http.server` over `ssl`, serving a directory (e.g. a Web Key Directory
//! layout) with a certificate from a test CA.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::KillOnDrop;

/// A throw-away CA and a server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestCertificates {
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

impl TestCertificates {
    /// A certificate for every name in `names`.
    pub fn new(names: &[&str]) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Distinct names: a leaf whose issuer equals its subject reads as
        // self-signed to OpenSSL and webpki.
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "bitmask test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().cloned().unwrap_or_default());
        let certificate = params.signed_by(&key, &issuer).unwrap();
        Self { ca_pem: ca.pem(), certificate_pem: certificate.pem(), key_pem: key.serialize_pem() }
    }
}

const SERVER: &str = r#"
import functools, http.server, ssl, sys
root, certificate, key = sys.argv[1:4]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(certificate, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Python's HTTPS server over a directory; stopped when dropped.
#[derive(Debug)]
pub struct StaticHttps {
    _process: KillOnDrop,
    pub port: u16,
}

impl StaticHttps {
    /// Serves `root` on a free loopback port with `certificates`; returns once
    /// it listens. Its request log goes to `root/../https.log`.
    pub fn serve(root: &Path, certificates: &TestCertificates) -> Self {
        let dir = root.parent().unwrap();
        let certificate = dir.join("https-certificate.pem");
        let key = dir.join("https-key.pem");
        std::fs::write(&certificate, &certificates.certificate_pem).unwrap();
        std::fs::write(&key, &certificates.key_pem).unwrap();
        let log = std::fs::File::create(dir.join("https.log")).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(root)
            .arg(&certificate)
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the HTTPS server did not start: {line:?}"));
        Self { _process: KillOnDrop(child), port }
    }
}
