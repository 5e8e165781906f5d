//! Incoming mail through the whole stack: items written into the store the
//! way its sync keeps what the provider's MX accepted (a local blob holding
//! the message encrypted to the account's key, a local-only `incoming/<item>`
//! document), then decrypted, verified, marked and filed in INBOX by the IMAP
//! gateway's processor. Senders are GnuPG (which this project did not write)
//! and our own SMTP gateway's PGP/MIME; an IDLE client is Python's imaplib.
#![allow(clippy::disallowed_methods)] // tests read what the code under test wrote with mail-parser itself
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bitmask_keys::openpgp::{self, Algorithm, Certificate};
use bitmask_proto::mail::v1 as mail_pb;
use bitmask_proto::mail::v1::mail_client::MailClient;
use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_testkit::gpg::Gpg;
use bitmask_testkit::{KillOnDrop, World, free_port, text, wait_until};
use mail_parser::MessageParser;
use tonic::transport::Channel;

const ALICE: &str = "alice@example.org";
/// When the MX accepted the test's items (ms since the epoch).
const RECEIVED_MS: i64 = 1_770_000_000_000;

struct Stack {
    world: World,
    _daemon: KillOnDrop,
    imap_port: u16,
    token: String,
    /// Alice's public key, as the provider's MX encrypts to it.
    alice: Certificate,
}

fn stack() -> Stack {
    stack_with(&[])
}

/// The stack with these variables in the services' environment.
fn stack_with(env: &[(&str, &str)]) -> Stack {
    let mut world = World::new();
    for (name, value) in env {
        world.env.push(((*name).into(), (*value).into()));
    }
    // Key discovery asks WKD: a closed port here, not the Internet.
    let closed = free_port();
    let resolve: Vec<String> = ["example.org", "example.net"]
        .iter()
        .flat_map(|domain| [format!("openpgpkey.{domain}=127.0.0.1:{closed}"), format!("{domain}=127.0.0.1:{closed}")])
        .collect();
    world.env.push(("BITMASK_KEYS_RESOLVE".into(), resolve.join(",")));
    let daemon = world.bitmaskd(&[]);
    let (imap_port, smtp_port) = (free_port(), free_port());
    world.ctl_json(&[
        "account",
        "add",
        ALICE,
        "--imap-port",
        &imap_port.to_string(),
        "--smtp-port",
        &smtp_port.to_string(),
    ]);
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "pass\n").unwrap();
    world.ctl_json(&["account", "start", ALICE, "--passphrase-file", passphrase.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "the IMAP port accepts connections", || {
        std::net::TcpStream::connect(("127.0.0.1", imap_port)).is_ok()
    });
    let token = world.ctl_json(&["mail", "token", ALICE])["token"].as_str().unwrap().to_owned();
    let mut exported = Vec::new();
    wait_until(Duration::from_secs(10), "the account has its key", || {
        let output = world.ctl(&["keys", "export", ALICE]);
        exported = output.stdout;
        output.status.success()
    });
    let alice = openpgp::parse_certs(&exported).unwrap().remove(0);
    Stack { world, _daemon: daemon, imap_port, token, alice }
}

impl Stack {
    async fn store(&self) -> StoreClient<Channel> {
        let channel = bitmask_runtime::client::connect_unix(self.world.socket(ALICE, "store")).await.unwrap();
        StoreClient::new(channel).max_decoding_message_size(64 << 20)
    }

    async fn mail(&self) -> MailClient<Channel> {
        let channel = bitmask_runtime::client::connect_unix(self.world.socket(ALICE, "imap")).await.unwrap();
        MailClient::new(channel).max_decoding_message_size(64 << 20)
    }

    /// `raw` as the provider's MX stores it: encrypted (binary, unsigned)
    /// to Alice's key.
    fn sealed_by_mx(&self, raw: &[u8]) -> Vec<u8> {
        openpgp::encrypt(raw, std::slice::from_ref(&self.alice), None, false).unwrap()
    }

    /// Imports a sender's public key into Alice's keys.
    fn give_alice(&self, name: &str, armored: &[u8]) {
        let file = self.world.path().join(format!("{name}.asc"));
        std::fs::write(&file, armored).unwrap();
        let imported = self.world.ctl(&["keys", "import", ALICE, file.to_str().unwrap()]);
        assert!(imported.status.success(), "{}", text(&imported));
    }

    /// Waits until INBOX holds `count` messages; their raw bytes in UID
    /// order. Fails with the gateway's log after 30 s.
    async fn inbox(&self, count: usize) -> Vec<Vec<u8>> {
        let start = std::time::Instant::now();
        loop {
            let mut mail = self.mail().await;
            let messages = all_messages(&mut mail).await;
            if messages.len() >= count {
                assert_eq!(messages.len(), count, "more messages than expected in INBOX");
                let mut raws = Vec::new();
                for summary in messages {
                    raws.push(raw_message(&mut mail, summary.uid).await);
                }
                return raws;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "INBOX has {} of {count} messages after 30 s; the gateway logged:\n{}",
                messages.len(),
                self.world.log(ALICE, "imap")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn all_messages(mail: &mut MailClient<Channel>) -> Vec<mail_pb::MessageSummary> {
    let request =
        mail_pb::ListMessagesRequest { mailbox: "INBOX".into(), after_uid: 0, limit: 1000, descending: false };
    match mail.list_messages(request).await {
        Ok(reply) => reply.into_inner().messages,
        // The gateway is starting (again).
        Err(_) => Vec::new(),
    }
}

async fn raw_message(mail: &mut MailClient<Channel>, uid: u32) -> Vec<u8> {
    let reference = mail_pb::MessageRef { mailbox: "INBOX".into(), uid, uid_validity: 0 };
    let request = mail_pb::GetRawMessageRequest { message: Some(reference), section: String::new(), decode: false };
    let mut stream = mail.get_raw_message(request).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend(chunk.data);
    }
    bytes
}

/// Writes an incoming item as the store's sync does: the encrypted bytes as
/// a local blob, then the `incoming/<item>` document naming it.
async fn deliver(store: &mut StoreClient<Channel>, item: &str, encrypted: &[u8], received_ms: i64) {
    let chunks: Vec<pb::PutBlobRequest> = encrypted
        .chunks(64 << 10)
        .enumerate()
        .map(|(index, chunk)| pb::PutBlobRequest {
            content_type: if index == 0 { "application/octet-stream".into() } else { String::new() },
            size: if index == 0 { encrypted.len() as u64 } else { 0 },
            data: chunk.to_vec(),
            local_only: index == 0,
        })
        .collect();
    let blob = store.put_blob(tokio_stream::iter(chunks)).await.unwrap().into_inner();
    declare(store).await;
    let content = serde_json::json!({
        "item": item,
        "blob": blob.id,
        "size": encrypted.len(),
        "received_ms": received_ms,
    });
    let put = pb::PutRequest {
        id: format!("incoming/{item}"),
        collection: "incoming".into(),
        content: content.to_string().into_bytes(),
        ..Default::default()
    };
    store.put(put).await.unwrap();
}

/// The store side's declarations (identical to the processor's: no-ops).
async fn declare(store: &mut StoreClient<Channel>) {
    for name in ["incoming", "incoming-done"] {
        let definition = pb::CollectionDefinition {
            name: name.into(),
            conflict_policy: pb::ConflictPolicy::LastWriterWins.into(),
            local_only: true,
        };
        store.declare_collection(definition).await.unwrap();
    }
    let index = pb::IndexDefinition {
        name: "incoming-by-received".into(),
        collection: "incoming".into(),
        fields: vec!["/received_ms".into()],
        unique: false,
    };
    store.declare_index(index).await.unwrap();
}

/// The ids of the waiting items' documents.
async fn waiting(store: &mut StoreClient<Channel>) -> Vec<String> {
    let request = pb::QueryRequest { index: "incoming-by-received".into(), keys_only: true, ..Default::default() };
    store.query(request).await.unwrap().into_inner().documents.into_iter().map(|document| document.id).collect()
}

/// Which of these `incoming-done/<item>` markers exist.
async fn markers(store: &mut StoreClient<Channel>, items: &[String]) -> usize {
    let ids = items.iter().map(|item| format!("incoming-done/{item}")).collect();
    let documents = store.get_many(pb::GetManyRequest { ids }).await.unwrap().into_inner().documents;
    documents.iter().filter(|document| !document.rev.is_empty() && !document.deleted).count()
}

async fn wait_until_done(store: &mut StoreClient<Channel>) {
    let start = std::time::Instant::now();
    while !waiting(store).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "incoming items are still waiting after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A header field's value (unfolded, trimmed), `None` if absent.
fn header(raw: &[u8], name: &str) -> Option<String> {
    let message = MessageParser::default().parse(raw).unwrap();
    message.header_raw(name).map(|value| value.replace("\r\n", "").trim().to_owned())
}

fn subject(raw: &[u8]) -> String {
    MessageParser::default().parse(raw).unwrap().subject().unwrap_or_default().to_owned()
}

fn body_text(raw: &[u8]) -> String {
    MessageParser::default().parse(raw).unwrap().body_text(0).unwrap_or_default().replace("\r\n", "\n")
}

fn count(raw: &[u8], needle: &str) -> usize {
    String::from_utf8_lossy(raw).matches(needle).count()
}

/// Dave, with his own GnuPG: a key pair, Alice's public key, and his public
/// key given to Alice.
fn dave(stack: &Stack) -> (Gpg, String) {
    let gpg = Gpg::new();
    gpg.ok(&["--quick-gen-key", "dave@example.net", "default", "default", "never"], b"");
    gpg.ok(&["--import"], &openpgp::export_public(&stack.alice, true).unwrap());
    stack.give_alice("dave", &gpg.ok(&["--armor", "--export", "dave@example.net"], b"").stdout);
    let fingerprint = gpg.fingerprint("dave@example.net");
    (gpg, fingerprint)
}

fn crlf(text: &[u8]) -> Vec<u8> {
    String::from_utf8(text.to_vec()).unwrap().replace("\r\n", "\n").replace('\n', "\r\n").into_bytes()
}

/// A multipart/signed message (RFC 3156) around `entity` and `signature`.
fn multipart_signed(subject: &str, entity: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "From: Dave <dave@example.net>\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\";\r\n\
         \tboundary=\"sig-boundary\"\r\n\r\n--sig-boundary\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(entity);
    raw.extend_from_slice(
        b"\r\n--sig-boundary\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n",
    );
    raw.extend_from_slice(&crlf(signature));
    raw.extend_from_slice(b"\r\n--sig-boundary--\r\n");
    raw
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_signed_and_undecryptable_mail_is_filed_marked_and_never_dropped() {
    let stack = stack();
    let mut store = stack.store().await;
    let (dave, dave_fingerprint) = dave(&stack);

    // A stranger's plain mail, with marks it must not be able to set.
    let plain = b"Received: from mx.example.org\r\nFrom: Stranger <stranger@example.com>\r\nTo: alice@example.org\r\n\
                  X-Leap-Signature: valid; pubkey=\"0000\"\r\nSubject: hello\r\nx-leap-encryption: decrypted\r\n\
                  \r\nJust plain text.\r\n";
    deliver(&mut store, "01", &stack.sealed_by_mx(plain), RECEIVED_MS).await;
    let inbox = stack.inbox(1).await;
    let filed = &inbox[0];
    let expected = b"X-Leap-Encryption: provider\r\nX-Leap-Signature: none\r\n\
                     Received: from mx.example.org\r\nFrom: Stranger <stranger@example.com>\r\nTo: alice@example.org\r\n\
                     Subject: hello\r\n\r\nJust plain text.\r\n";
    assert_eq!(String::from_utf8_lossy(filed), String::from_utf8_lossy(expected));
    let summary = all_messages(&mut stack.mail().await).await.remove(0);
    assert_eq!(summary.internal_date.unwrap().seconds, RECEIVED_MS / 1000, "the internal date is the MX's");
    assert!(!summary.flags.unwrap().seen, "new mail is unseen");

    // multipart/signed by Dave (a detached gpg signature over the first
    // part's CRLF bytes), then the same with its text changed.
    let entity = b"Content-Type: text/plain; charset=us-ascii\r\n\r\nSigned by Dave.\r\n";
    let signature = dave.ok(&["--armor", "--detach-sign", "--local-user", "dave@example.net"], entity).stdout;
    let signed = multipart_signed("signed", entity, &signature);
    deliver(&mut store, "02", &stack.sealed_by_mx(&signed), RECEIVED_MS + 1).await;
    let tampered = String::from_utf8(signed.clone()).unwrap().replace("Signed by Dave.", "Signed by Eve.");
    let tampered = tampered.replace("Subject: signed", "Subject: tampered");
    deliver(&mut store, "03", &stack.sealed_by_mx(tampered.as_bytes()), RECEIVED_MS + 2).await;

    // Inline (cleartext) signed by Dave.
    let clear = dave.ok(&["--clearsign", "--local-user", "dave@example.net"], b"Clear words from Dave.\n").stdout;
    let mut inline_signed =
        format!("From: dave@example.net\r\nTo: {ALICE}\r\nSubject: clearsigned\r\n\r\n").into_bytes();
    inline_signed.extend_from_slice(&crlf(&clear));
    deliver(&mut store, "04", &stack.sealed_by_mx(&inline_signed), RECEIVED_MS + 3).await;

    // Encrypted to another key: not readable here, filed as an explanation.
    let stranger = openpgp::generate("someone@example.com", Algorithm::Cv25519).unwrap();
    let not_for_us = openpgp::encrypt(b"Subject: secret\r\n\r\nnot for Alice\r\n", &[stranger], None, false).unwrap();
    deliver(&mut store, "05", &not_for_us, RECEIVED_MS + 4).await;

    let inbox = stack.inbox(5).await;
    assert_eq!(subject(&inbox[1]), "signed");
    assert_eq!(header(&inbox[1], "X-Leap-Signature").unwrap(), format!("valid; pubkey=\"{dave_fingerprint}\""));
    assert_eq!(header(&inbox[1], "X-Leap-Encryption").unwrap(), "provider");
    assert!(inbox[1].ends_with(&signed), "a signed message is kept byte for byte");
    assert_eq!(subject(&inbox[2]), "tampered");
    assert_eq!(header(&inbox[2], "X-Leap-Signature").unwrap(), "invalid");
    assert_eq!(subject(&inbox[3]), "clearsigned");
    assert_eq!(header(&inbox[3], "X-Leap-Signature").unwrap(), format!("valid; pubkey=\"{dave_fingerprint}\""));

    let explanation = &inbox[4];
    assert_eq!(subject(explanation), "Undecryptable incoming message");
    assert_eq!(header(explanation, "X-Leap-Encryption").unwrap(), "failed");
    assert_eq!(count(explanation, "X-Leap-Encryption"), 1);
    let parsed = MessageParser::default().parse(explanation).unwrap();
    assert!(parsed.from().unwrap().first().unwrap().address().unwrap().to_lowercase().starts_with("mailer-daemon@"));
    assert!(parsed.body_text(0).unwrap().contains("could not be"), "{}", parsed.body_text(0).unwrap());
    assert_eq!(parsed.attachment(0).unwrap().contents(), not_for_us, "the original bytes are attached");

    wait_until_done(&mut store).await;
    let items: Vec<String> = (1..=5).map(|n| format!("{n:02}")).collect();
    assert_eq!(markers(&mut store, &items).await, 5, "every item is marked done for sync");
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_mail_is_decrypted_with_its_protected_subject_and_signature_checked() {
    let stack = stack();
    let mut store = stack.store().await;

    // Bob and Carol send as our own SMTP gateway does (PGP/MIME, protected
    // headers, their key attached, signed inside); Alice knows only Bob.
    let bob = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
    let carol = openpgp::generate("carol@example.net", Algorithm::Cv25519).unwrap();
    stack.give_alice("bob", &openpgp::export_public(&bob, true).unwrap());
    for (n, (sender, cert)) in [("bob@example.org", &bob), ("carol@example.net", &carol)].into_iter().enumerate() {
        let submitted = format!(
            "From: <{sender}>\r\nTo: {ALICE}\r\nSubject: secret plans {n}\r\nMessage-ID: <{n}@example>\r\n\
             Date: Mon, 2 Feb 2026 10:00:00 +0100\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
             Meet me at noon. \u{e9}\r\n"
        );
        let prepared = bitmask_smtp::pgpmime::prepare(submitted.as_bytes()).unwrap();
        let key = bitmask_smtp::pgpmime::KeyAttachment {
            filename: "OpenPGP.asc".into(),
            armored_public_key: openpgp::export_public(cert, true).unwrap(),
        };
        let inner = prepared.inner_for_encryption(Some(&key));
        let recipients = [stack.alice.clone(), cert.clone()];
        let ciphertext = openpgp::encrypt(&inner, &recipients, Some(cert), true).unwrap();
        let sent = prepared.encrypted(&ciphertext, &[]).unwrap();
        assert_eq!(subject(&sent), "...", "the outer Subject is obscured");
        deliver(&mut store, &format!("b{n}"), &stack.sealed_by_mx(&sent), RECEIVED_MS + n as i64).await;
    }
    let inbox = stack.inbox(2).await;
    for (n, message) in inbox.iter().enumerate() {
        assert_eq!(subject(message), format!("secret plans {n}"), "the protected Subject is restored");
        assert_eq!(count(message, "Subject:"), 1);
        assert_eq!(header(message, "X-Leap-Encryption").unwrap(), "decrypted");
        assert!(body_text(message).starts_with("Meet me at noon. \u{e9}"), "{}", body_text(message));
        assert!(!String::from_utf8_lossy(message).contains("BEGIN PGP MESSAGE"));
    }
    let bob_fingerprint = openpgp::fingerprint(&bob);
    assert_eq!(header(&inbox[0], "X-Leap-Signature").unwrap(), format!("valid; pubkey=\"{bob_fingerprint}\""));
    assert_eq!(header(&inbox[1], "X-Leap-Signature").unwrap(), "could not verify");
    // Carol's attached key was learned from her message.
    wait_until(Duration::from_secs(10), "Carol's key is learned", || {
        let keys = stack.world.ctl_json(&["keys", "list", ALICE, "--for", "carol@example.net"]);
        keys.as_array().is_some_and(|keys| keys.iter().any(|key| key["fingerprint"] == openpgp::fingerprint(&carol)))
    });

    // GnuPG: PGP/MIME built here, and inline armored.
    let (dave, dave_fingerprint) = dave(&stack);
    let entity = b"Content-Type: text/plain; charset=us-ascii\r\nSubject: from gnupg\r\n\r\nPGP/MIME from GnuPG.\r\n";
    let encrypt = ["--armor", "--encrypt", "--sign", "--local-user", "dave@example.net", "--recipient", ALICE];
    let armored = String::from_utf8(dave.ok(&encrypt, entity).stdout).unwrap();
    let sent = format!(
        "From: Dave <dave@example.net>\r\nTo: {ALICE}\r\nSubject: ...\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"enc\"\r\n\r\n\
         --enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
         --enc\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n{}\r\n--enc--\r\n",
        armored.replace('\n', "\r\n")
    );
    deliver(&mut store, "d1", &stack.sealed_by_mx(sent.as_bytes()), RECEIVED_MS + 10).await;
    let inline = String::from_utf8(dave.ok(&encrypt, "Inline from GnuPG. \u{e9}\n".as_bytes()).stdout).unwrap();
    let sent = format!(
        "From: Dave <dave@example.net>\r\nTo: {ALICE}\r\nSubject: inline\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n{}",
        inline.replace('\n', "\r\n")
    );
    deliver(&mut store, "d2", &stack.sealed_by_mx(sent.as_bytes()), RECEIVED_MS + 11).await;

    let inbox = stack.inbox(4).await;
    let dave_valid = format!("valid; pubkey=\"{dave_fingerprint}\"");
    assert_eq!(subject(&inbox[2]), "from gnupg");
    assert_eq!(body_text(&inbox[2]), "PGP/MIME from GnuPG.\n");
    assert_eq!(header(&inbox[2], "X-Leap-Encryption").unwrap(), "decrypted");
    assert_eq!(header(&inbox[2], "X-Leap-Signature").unwrap(), dave_valid);
    assert_eq!(subject(&inbox[3]), "inline");
    assert_eq!(body_text(&inbox[3]), "Inline from GnuPG. \u{e9}\n");
    assert_eq!(header(&inbox[3], "X-Leap-Encryption").unwrap(), "decrypted");
    assert_eq!(header(&inbox[3], "X-Leap-Signature").unwrap(), dave_valid);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_client_is_told_of_new_incoming_mail_at_once() {
    let stack = stack();
    let mut store = stack.store().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/incoming_idle.py");
    let mut client = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &stack.imap_port.to_string(), ALICE, &stack.token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = BufReader::new(client.stdout.take().unwrap());
    let mut stderr = client.stderr.take().unwrap();
    let mut client = KillOnDrop(client);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "idling", "the IDLE client did not start");

    let raw = format!("From: bob@example.org\r\nTo: {ALICE}\r\nSubject: ping\r\n\r\npong\r\n");
    deliver(&mut store, "1d1e", &stack.sealed_by_mx(raw.as_bytes()), RECEIVED_MS).await;
    writeln!(stdin, "delivered").unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let status = client.0.wait().unwrap();
    let mut errors = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut errors).unwrap();
    assert!(status.success(), "{line}{errors}");
    let told: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(told["exists"], 1, "no EXISTS while idling; the gateway logged:\n{}", stack.world.log(ALICE, "imap"));
    println!("EXISTS {:.3} s after the incoming document was written", told["seconds"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_item_is_filed_exactly_once_through_a_crash_and_a_second_write() {
    let stack = stack();
    let mut store = stack.store().await;
    const ITEMS: usize = 40;
    let items: Vec<String> = (0..ITEMS).map(|n| format!("{n:04x}")).collect();
    let mut encrypted = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let raw = format!("From: bob@example.org\r\nTo: {ALICE}\r\nSubject: item {item}\r\n\r\nNumber {n}.\r\n");
        encrypted.push(stack.sealed_by_mx(raw.as_bytes()));
    }
    // The first item twice at once, as a second fetch by sync would.
    deliver(&mut store, &items[0], &encrypted[0], RECEIVED_MS).await;
    deliver(&mut store, &items[0], &encrypted[0], RECEIVED_MS).await;
    for (n, item) in items.iter().enumerate().skip(1) {
        deliver(&mut store, item, &encrypted[n], RECEIVED_MS + n as i64).await;
    }

    // kill -9 the gateway while it is filing; the supervisor restarts it.
    let mut mail = stack.mail().await;
    wait_until(Duration::from_secs(30), "the processor has begun", || {
        futures_block(all_messages(&mut mail)).len() >= 3
    });
    let pid = stack.world.service_status(ALICE, "imap")["pid"].as_u64().unwrap();
    let filed_before_kill = futures_block(all_messages(&mut mail)).len();
    let killed = Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    wait_until(Duration::from_secs(30), "the gateway runs again", || {
        let status = stack.world.service_status(ALICE, "imap");
        status["state"] == "serving" && status["pid"].as_u64().is_some_and(|new| new != pid)
    });
    println!("{filed_before_kill} of {ITEMS} items were filed before the crash");

    let inbox = stack.inbox(ITEMS).await;
    let mut subjects: Vec<String> = inbox.iter().map(|raw| subject(raw)).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), ITEMS, "every item exactly once");
    wait_until_done(&mut store).await;
    assert_eq!(markers(&mut store, &items).await, ITEMS);

    // The same item written again later (a second fetch): not filed again.
    deliver(&mut store, &items[5], &encrypted[5], RECEIVED_MS + 5).await;
    wait_until_done(&mut store).await;
    assert_eq!(stack.inbox(ITEMS).await.len(), ITEMS);
    assert_eq!(markers(&mut store, &items).await, ITEMS);

    // Nor once the user has deleted it.
    let mut mail = stack.mail().await;
    let summaries = all_messages(&mut mail).await;
    let uid = summaries.iter().find(|summary| summary.subject == format!("item {}", items[5])).unwrap().uid;
    mail.delete_messages(mail_pb::DeleteMessagesRequest { mailbox: "INBOX".into(), uids: vec![uid] }).await.unwrap();
    deliver(&mut store, &items[5], &encrypted[5], RECEIVED_MS + 5).await;
    wait_until_done(&mut store).await;
    let inbox = stack.inbox(ITEMS - 1).await;
    assert!(inbox.iter().all(|raw| subject(raw) != format!("item {}", items[5])), "a deleted message came back");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_waits_while_the_key_service_is_down_and_is_filed_once_it_is_back() {
    let stack = stack();
    let mut store = stack.store().await;
    let keys = stack.world.service_status(ALICE, "keys")["pid"].as_u64().unwrap().to_string();
    // Stopped: the processor's request to it hangs.
    assert!(Command::new("kill").args(["-STOP", &keys]).status().unwrap().success());
    let raw = format!("From: bob@example.org\r\nTo: {ALICE}\r\nSubject: patience\r\n\r\nwaited\r\n");
    deliver(&mut store, "0dd", &stack.sealed_by_mx(raw.as_bytes()), RECEIVED_MS).await;
    // Let the request reach it, then make it fail: the supervisor restarts
    // the key service, the processor tries again later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Command::new("kill").args(["-KILL", &keys]).status().unwrap().success());
    let inbox = stack.inbox(1).await;
    assert_eq!(subject(&inbox[0]), "patience");
    assert_eq!(header(&inbox[0], "X-Leap-Encryption").unwrap(), "provider");
    assert!(stack.world.log(ALICE, "imap").contains("incoming message not filed yet"), "no retry was logged");
    wait_until_done(&mut store).await;
    assert_eq!(markers(&mut store, &["0dd".into()]).await, 1);
    // The service being away was not counted against the item, and its
    // record went with it.
    let status = stack.world.ctl_json(&["mail", "status", ALICE]);
    assert_eq!(status["incoming_problems"].as_array().map(Vec::len), Some(0), "{status:#}");
    let attempts = pb::GetRequest { id: "incoming-attempts/0dd".into(), include_deleted: false };
    assert_eq!(store.get(attempts).await.unwrap_err().code(), tonic::Code::NotFound);
}

/// Runs a future to completion from inside a synchronous closure of a
/// multi-threaded runtime.
fn futures_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_item_that_cannot_be_filed_is_reported_then_filed_as_an_explanation() {
    // Filing fails for items whose id starts with "refused-" (a fault the
    // processor injects for tests): the item is reported with the error,
    // never retried forever, and ends up explained in INBOX with its bytes.
    let stack = stack_with(&[("BITMASK_FAULT_REFUSE_FILING", "refused-")]);
    let mut store = stack.store().await;
    let raw = b"From: dave@example.net\r\nTo: alice@example.org\r\nSubject: refused\r\n\r\nkept anyway\r\n";
    let encrypted = stack.sealed_by_mx(raw);
    deliver(&mut store, "refused-1", &encrypted, RECEIVED_MS).await;
    let fine = b"From: dave@example.net\r\nTo: alice@example.org\r\nSubject: fine\r\n\r\nfiled at once\r\n";
    deliver(&mut store, "fine-1", &stack.sealed_by_mx(fine), RECEIVED_MS + 1).await;

    // Reported while it waits, with why.
    let mut reported = serde_json::Value::Null;
    wait_until(Duration::from_secs(20), "the refused item is reported", || {
        reported = stack.world.ctl_json(&["mail", "status", ALICE]);
        reported["incoming_problems"].as_array().is_some_and(|problems| !problems.is_empty())
    });
    let problem = &reported["incoming_problems"][0];
    assert_eq!(problem["item"], "refused-1", "{reported:#}");
    assert!(problem["last_error"].as_str().unwrap().contains("filing refused"), "{reported:#}");
    let table = text(&stack.world.ctl(&["mail", "status", ALICE]));
    assert!(table.contains("item refused-1") && table.contains("filing refused"), "{table}");

    // Filed as an explanation after a few attempts, its bytes attached.
    let inbox = stack.inbox(2).await;
    let explained = inbox.iter().find(|raw| subject(raw) != "fine").unwrap();
    assert_eq!(subject(explained), bitmask_mail::incoming::UNFILED_SUBJECT);
    assert_eq!(header(explained, "X-Leap-Encryption").as_deref(), Some("failed"));
    let message = MessageParser::default().parse(explained.as_slice()).unwrap();
    let attached = message.attachment(0).unwrap().contents();
    assert_eq!(attached, encrypted.as_slice(), "the item's bytes are attached as they were");
    assert!(body_text(explained).contains("filing refused"), "{}", body_text(explained));
    wait_until_done(&mut store).await;
    let after = stack.world.ctl_json(&["mail", "status", ALICE]);
    assert_eq!(after["incoming_problems"].as_array().map(Vec::len), Some(0), "{after:#}");
    assert_eq!(after["incoming_pending"], 0, "{after:#}");
}
