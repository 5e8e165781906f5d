//! The provider under test: its own temp directory, `bitmask-provider init`
//! with free ports, `serve` waited for by its `ready` line, killed when
//! dropped; and the clients the tests speak through.

#![allow(dead_code)] // each test file uses its own part of this

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bitmask_auth::{ClientLogin, LoginSecret};
use bitmask_proto::provider::v1 as provider_pb;
use bitmask_proto::provider::v1::accounts_client::AccountsClient;
use bitmask_proto::provider::v1::key_directory_client::KeyDirectoryClient;
use bitmask_proto::sync::v1 as sync_pb;
use bitmask_proto::sync::v1::sync_endpoint_client::SyncEndpointClient;
use bitmask_runtime::client::{ProviderChannel, connect_provider};
use bitmask_testkit::{ProviderProcess, bin, text};

pub const DOMAIN: &str = "example.org";

/// The provider process (`bitmask_testkit::ProviderProcess`) and the
/// clients the tests speak to it through.
pub struct Provider(pub ProviderProcess);

impl std::ops::Deref for Provider {
    type Target = ProviderProcess;
    fn deref(&self) -> &ProviderProcess {
        &self.0
    }
}

impl std::ops::DerefMut for Provider {
    fn deref_mut(&mut self) -> &mut ProviderProcess {
        &mut self.0
    }
}

/// `bitmask-provider ARGS`, waited for.
pub fn provider_command(args: &[&str]) -> Output {
    Command::new(bin("bitmask-provider")).args(args).stdin(Stdio::null()).output().unwrap()
}

impl Provider {
    /// `init` in a fresh directory with `extra` arguments; not started.
    pub fn init(extra: &[&str]) -> Self {
        Self(ProviderProcess::init(DOMAIN, extra))
    }

    /// `init` and `serve`, once it is ready.
    pub fn start(extra: &[&str]) -> Self {
        Self(ProviderProcess::start(DOMAIN, extra))
    }

    pub fn log_text(&self) -> String {
        self.log()
    }

    pub fn ca_path(&self) -> PathBuf {
        self.ca_file()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.ca_path()).unwrap()
    }

    /// A channel to the HTTPS port (CA pinned) presenting `token`.
    pub async fn channel(&self, token: &str) -> ProviderChannel {
        connect_provider(&self.url(), &self.ca_pem(), token).await.unwrap()
    }

    pub async fn accounts(&self) -> AccountsClient<ProviderChannel> {
        AccountsClient::new(self.channel("").await)
    }

    pub async fn sync(&self, token: &str) -> SyncEndpointClient<ProviderChannel> {
        SyncEndpointClient::new(self.channel(token).await)
    }

    pub async fn sign_up(&self, address: &str, passphrase: &str) -> Result<(), tonic::Status> {
        self.sign_up_invited(address, passphrase, "").await
    }

    /// Sign-up with an invite code.
    pub async fn sign_up_invited(&self, address: &str, passphrase: &str, invite: &str) -> Result<(), tonic::Status> {
        let (srp_salt, srp_verifier) = bitmask_auth::verifier(address, &LoginSecret::derive(passphrase, address));
        let request =
            provider_pb::SignUpRequest { address: address.into(), srp_salt, srp_verifier, invite_code: invite.into() };
        self.accounts().await.sign_up(request).await.map(drop)
    }

    /// SRP login; the session token, once the provider proved itself.
    pub async fn login(&self, address: &str, passphrase: &str) -> Result<String, tonic::Status> {
        let mut accounts = self.accounts().await;
        let secret = LoginSecret::derive(passphrase, address);
        let client = ClientLogin::start();
        let request = provider_pb::LoginStartRequest { address: address.into(), srp_a: client.a_pub().to_vec() };
        let started = accounts.login_start(request).await?.into_inner();
        let proof = client.finish(address, &secret, &started.srp_salt, &started.srp_b).unwrap();
        let request = provider_pb::LoginFinishRequest { login_id: started.login_id, srp_m1: proof.m1.clone() };
        let finished = accounts.login_finish(request).await?.into_inner();
        proof.verify_server(&finished.srp_m2).expect("the provider proves it knows the verifier");
        assert!(finished.expires_in > 0);
        Ok(finished.session_token)
    }

    /// Signs `address` up, logs in, and publishes a new key for it; the
    /// session token and the key (with its secret part).
    pub async fn user_with_key(&self, address: &str) -> (String, bitmask_keys::openpgp::Certificate) {
        self.sign_up(address, "correct horse battery").await.unwrap();
        let token = self.login(address, "correct horse battery").await.unwrap();
        let key = bitmask_keys::openpgp::generate(address, bitmask_keys::openpgp::Algorithm::Cv25519).unwrap();
        let armored = String::from_utf8(bitmask_keys::openpgp::export_public(&key, true).unwrap()).unwrap();
        let mut directory = KeyDirectoryClient::new(self.channel(&token).await);
        directory.publish_key(provider_pb::PublishKeyRequest { armored_key: armored }).await.unwrap();
        (token, key)
    }

    /// The ids of `token`'s incoming items.
    pub async fn incoming(&self, token: &str) -> Vec<String> {
        let reply = self.sync(token).await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap();
        reply.into_inner().items.into_iter().map(|item| item.id).collect()
    }

    /// An incoming item, decrypted with `key`.
    pub async fn open_incoming(&self, token: &str, id: &str, key: &bitmask_keys::openpgp::Certificate) -> String {
        let mut stream = self
            .sync(token)
            .await
            .get_incoming(sync_pb::GetIncomingRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut encrypted = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            encrypted.extend(chunk.data);
        }
        let decrypted = bitmask_keys::openpgp::decrypt(&encrypted, std::slice::from_ref(key), &[]).unwrap();
        String::from_utf8(decrypted.plaintext.to_vec()).unwrap()
    }

    /// A client certificate for the session's account from a fresh key:
    /// (certificate PEM, key PEM).
    pub async fn client_certificate(&self, token: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec!["ignored.example.net".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let mut accounts = AccountsClient::new(self.channel(token).await);
        let reply = accounts
            .issue_client_certificate(provider_pb::IssueClientCertificateRequest { csr_pem: csr })
            .await
            .unwrap()
            .into_inner();
        (reply.certificate_pem, key.serialize_pem())
    }
}

/// swaks against `port` with `args`: its whole transcript.
pub fn swaks(port: u16, args: &[&str]) -> String {
    let output = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--timeout", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    text(&output)
}

/// Python's smtplib submitting `message` over implicit TLS to `port`, with
/// the CA pinned and the client certificate (if any) presented; its
/// outcome as JSON: `{"ok": true, "refused": {..}}`, `{"ok": false, "code":
/// N, "message": ".."}`, `{"ok": false, "recipients": {..}}` or `{"ok":
/// false, "connection": ".."}`.
pub fn submit(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    from: &str,
    to: &[&str],
    message: &str,
) -> serde_json::Value {
    submit_from("-", port, ca, client, from, to, message)
}

/// [`submit`] from the local address `source` ("-": any).
pub fn submit_from(
    source: &str,
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    from: &str,
    to: &[&str],
    message: &str,
) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, smtplib, ssl, sys
source, port, ca, certificate, key, sender = sys.argv[1:7]
recipients = sys.argv[7:]
source_address = None if source == "-" else (source, 0)
context = ssl.create_default_context(cafile=ca)
if certificate != "-":
    context.load_cert_chain(certificate, key)
# smtplib sends bytes as they are: lines end with CRLF on the wire.
message = sys.stdin.buffer.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
def text(value):
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
try:
    with smtplib.SMTP_SSL("localhost", int(port), context=context, timeout=30, source_address=source_address) as client:
        refused = client.sendmail(sender, recipients, message)
        print(json.dumps({"ok": True, "refused": {k: [v[0], text(v[1])] for k, v in refused.items()}}))
except smtplib.SMTPRecipientsRefused as error:
    print(json.dumps({"ok": False, "recipients": {k: [v[0], text(v[1])] for k, v in error.recipients.items()}}))
except smtplib.SMTPResponseException as error:
    print(json.dumps({"ok": False, "code": error.smtp_code, "message": text(error.smtp_error)}))
except (OSError, smtplib.SMTPException) as error:
    print(json.dumps({"ok": False, "connection": repr(error)}))
"#;
    use std::io::Write as _;
    let (certificate, key) = client.map_or(("-".into(), "-".into()), |(certificate, key)| {
        (certificate.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned())
    });
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, source, &port.to_string(), ca.to_str().unwrap(), &certificate, &key, from])
        .args(to)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| panic!("smtplib: {}", text(&output)))
}

/// A plain SMTP conversation: writes each of `lines` after reading the
/// reply that precedes it, and gives every reply read (the greeting first).
pub fn converse(port: u16, lines: &[&[u8]]) -> Vec<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut replies = Vec::new();
    let read_reply = |stream: &mut std::net::TcpStream| {
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        // A reply ends with a line whose fourth byte is a space.
        loop {
            if stream.read(&mut byte).unwrap_or(0) == 0 {
                break;
            }
            reply.push(byte[0]);
            if reply.ends_with(b"\r\n") {
                let last_line = reply[..reply.len() - 2].rsplit(|b| *b == b'\n').next().unwrap_or_default();
                if last_line.get(3) == Some(&b' ') || last_line.len() == 3 {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&reply).into_owned()
    };
    replies.push(read_reply(&mut stream));
    for line in lines {
        stream.write_all(line).unwrap();
        replies.push(read_reply(&mut stream));
    }
    replies
}
