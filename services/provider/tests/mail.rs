//! The MX and the relay through the real binary, with peers this project
//! did not write: swaks and Python's smtplib send, aiosmtpd is the
//! smarthost, curl and openssl look.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod common;

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use bitmask_testkit::{KillOnDrop, all_bytes, contains};
use common::{Provider, converse, submit, swaks};

const SUBJECT: &str = "quarterly-plans-7f3a9c";
const BODY: &str = "the-secret-body-line-91c2e8";

/// A message with `\n` line ends (swaks and smtplib send them as CRLF).
fn message(from: &str, to: &str, message_id: &str) -> String {
    format!(
        "From: <{from}>\nTo: <{to}>\nSubject: {SUBJECT}\nMessage-ID: <{message_id}>\nDate: Mon, 2 Nov 2026 10:00:00 +0000\n\n{BODY}\nsecond line\n"
    )
}

/// swaks sending `message` from the file it is written to.
fn swaks_message(provider: &Provider, to: &str, message: &str, extra: &[&str]) -> String {
    let file = provider.dir.parent().unwrap().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let port = provider.port("mx_port");
    swaks(port, &[&["--from", "sender@example.net", "--to", to, "--data", file.to_str().unwrap()], extra].concat())
}

/// aiosmtpd saving what it accepts into `dir`: services/smtp/tests/relay.py.
fn smarthost(dir: &Path) -> (KillOnDrop, u16) {
    let script = bitmask_testkit::workspace_root().join("services/smtp/tests/relay.py");
    let python = bitmask_testkit::workspace_root().join(".venv/bin/python");
    let mut child =
        Command::new(python).arg(script).arg(dir).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (KillOnDrop(child), line.trim().parse().unwrap_or_else(|_| panic!("the smarthost did not start: {line:?}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mx_encrypts_deposits_and_deduplicates() {
    let provider = Provider::start(&[]);
    let (token, key) = provider.user_with_key("bob@example.org").await;
    provider.sign_up("carol@example.org", "pw").await.unwrap();
    let mail = message("sender@example.net", "bob@example.org", "plans.1@example.net");

    let unknown = swaks_message(&provider, "nobody@example.org", &mail, &[]);
    assert!(unknown.contains("<** 550 5.1.1"), "{unknown}");
    let elsewhere = swaks_message(&provider, "someone@example.net", &mail, &[]);
    assert!(elsewhere.contains("<** 550 5.7.1 relaying denied"), "{elsewhere}");
    let keyless = swaks_message(&provider, "carol@example.org", &mail, &[]);
    assert!(keyless.contains("<** 450 4.7.1"), "{keyless}");
    assert!(provider.incoming(&token).await.is_empty());

    // A device watching for mail hears of it at once.
    let mut watch = provider
        .sync(&token)
        .await
        .watch_incoming(bitmask_proto::sync::v1::WatchIncomingRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().waiting, 0);

    // Over STARTTLS with the provider's certificate.
    let delivered = swaks_message(
        &provider,
        "Bob@Example.org",
        &mail,
        &["--tls", "--tls-verify", "--tls-ca-path", provider.ca_path().to_str().unwrap()],
    );
    assert!(delivered.contains("=== TLS started"), "{delivered}");
    assert!(delivered.contains("<~  250 2.0.0 Ok: queued as "), "{delivered}");
    let notice = tokio::time::timeout(std::time::Duration::from_secs(20), watch.message()).await.unwrap();
    assert_eq!(notice.unwrap().unwrap().waiting, 1);
    let items = provider.incoming(&token).await;
    assert_eq!(items.len(), 1);
    let opened = provider.open_incoming(&token, &items[0], &key).await;
    assert!(opened.contains(&format!("Subject: {SUBJECT}")), "{opened}");
    assert!(opened.contains(BODY), "{opened}");
    assert!(
        opened.starts_with(
            "Return-Path: <sender@example.net>\r\nDelivered-To: bob@example.org\r\nReceived: from [127.0.0.1]\r\n"
        ),
        "{opened}"
    );
    assert!(opened.contains("with ESMTPS\r\n\tfor <bob@example.org>"), "{opened}");
    assert!(opened.contains("\r\n\r\nthe-secret-body-line-91c2e8\r\nsecond line\r\n"), "{opened:?}");

    // A retry of the same message is taken and not deposited twice; a new
    // message is.
    let retried = swaks_message(&provider, "bob@example.org", &mail, &[]);
    assert!(retried.contains("<-  250 2.0.0 Ok: queued as duplicate"), "{retried}");
    assert_eq!(provider.incoming(&token).await.len(), 1);
    let other = message("sender@example.net", "bob@example.org", "plans.2@example.net");
    let delivered = swaks_message(&provider, "bob@example.org", &other, &[]);
    assert!(delivered.contains("<-  250 2.0.0 Ok: queued as "), "{delivered}");
    let items = provider.incoming(&token).await;
    assert_eq!(items.len(), 2);
    assert!(provider.open_incoming(&token, &items[1], &key).await.contains("with ESMTP\r\n"));
    // The same Message-ID from another envelope sender is not a retry: a
    // Message-ID known in advance cannot suppress the real message.
    let port = provider.port("mx_port");
    let file = provider.dir.parent().unwrap().join("message.eml");
    let spoiler = swaks(
        port,
        &["--from", "someone-else@example.net", "--to", "bob@example.org", "--data", file.to_str().unwrap()],
    );
    assert!(!spoiler.contains("queued as duplicate"), "{spoiler}");
    assert_eq!(provider.incoming(&token).await.len(), 3);

    // No plaintext anywhere in the provider's files.
    let bytes = all_bytes(&provider.dir);
    assert!(!contains(&bytes, SUBJECT.as_bytes()), "the subject is on disk");
    assert!(!contains(&bytes, BODY.as_bytes()), "the body is on disk");
    assert!(!contains(&bytes, b"plans.1@example.net"), "the Message-ID is on disk");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mx_answers_bad_input_and_keeps_serving() {
    let provider = Provider::start(&[]);
    let (token, _key) = provider.user_with_key("bob@example.org").await;
    let port = provider.port("mx_port");

    let replies = converse(
        port,
        &[
            b"EHLO client\r\n",
            b"GARBAGE\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"MAIL FROM:<a@example.net> SIZE=99999999999\r\n",
            b"QUIT\r\n",
        ],
    );
    assert!(replies[0].starts_with("220 example.org"), "{replies:?}");
    assert!(replies[1].contains("SIZE 62914560\r\n"), "the limit is 60 MiB: {replies:?}");
    assert!(replies[2].starts_with("500 "), "{replies:?}");
    assert!(replies[3].starts_with("503 "), "{replies:?}");
    assert!(replies[4].starts_with("552 "), "{replies:?}");
    assert!(replies[5].starts_with("221 "), "{replies:?}");

    // Bare line feeds (SMTP smuggling) and an oversized message.
    let smuggled = b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@example.net>\r\n.\r\n";
    let replies = converse(
        port,
        &[
            b"EHLO client\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"DATA\r\n",
            smuggled,
            b"QUIT\r\n",
        ],
    );
    assert!(replies[5].starts_with("550 5.5.2"), "{replies:?}");
    let mut huge = b"Subject: big\r\n\r\n".to_vec();
    let line = [b'x'; 998];
    while huge.len() <= (60 << 20) + 1024 {
        huge.extend_from_slice(&line);
        huge.extend_from_slice(b"\r\n");
    }
    huge.extend_from_slice(b".\r\n");
    let replies = converse(
        port,
        &[
            b"EHLO client\r\n",
            b"MAIL FROM:<a@example.net>\r\n",
            b"RCPT TO:<bob@example.org>\r\n",
            b"DATA\r\n",
            &huge,
            b"QUIT\r\n",
        ],
    );
    assert!(replies[5].starts_with("552 5.3.4"), "{replies:?}");
    // AUTH is no way in here.
    let replies = converse(port, &[b"EHLO client\r\n", b"AUTH PLAIN AGJvYkBleGFtcGxlLm9yZwBwdw==\r\n"]);
    assert!(!replies[1].contains("AUTH"), "AUTH is not announced: {replies:?}");
    assert!(replies[2].starts_with("503 5.5.1"), "{replies:?}");
    // A connection that just drops.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());

    assert!(provider.incoming(&token).await.is_empty());
    let mail = message("sender@example.net", "bob@example.org", "after@example.net");
    let delivered = swaks_message(&provider, "bob@example.org", &mail, &[]);
    assert!(delivered.contains("<-  250 2.0.0 Ok: queued as "), "{delivered}");
    assert_eq!(provider.incoming(&token).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_takes_mail_from_its_users_by_client_certificate() {
    let temp = tempfile::tempdir().unwrap();
    let sink_dir = temp.path().join("sink");
    let (_sink, sink_port) = smarthost(&sink_dir);
    let provider = Provider::start(&["--smarthost", &format!("127.0.0.1:{sink_port}")]);
    let relay = provider.port("relay_port");
    let (alice, _) = provider.user_with_key("alice@example.org").await;
    let (bob, bob_key) = provider.user_with_key("bob@example.org").await;
    provider.sign_up("carol@example.org", "pw").await.unwrap();

    let (certificate, key) = provider.client_certificate(&alice).await;
    let certificate_path = temp.path().join("alice.pem");
    let key_path = temp.path().join("alice.key");
    std::fs::write(&certificate_path, &certificate).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let client = Some((certificate_path.as_path(), key_path.as_path()));
    let ca = provider.ca_path();

    // One message to a local user and a remote one.
    let mail = message("alice@example.org", "bob@example.org", "relay.1@example.org");
    let sent = submit(relay, &ca, client, "alice@example.org", &["bob@example.org", "dave@example.net"], &mail);
    assert_eq!(sent["ok"], true, "{sent}");
    let items = provider.incoming(&bob).await;
    assert_eq!(items.len(), 1);
    let opened = provider.open_incoming(&bob, &items[0], &bob_key).await;
    assert!(opened.contains(BODY) && opened.contains("Delivered-To: bob@example.org\r\n"), "{opened}");
    let envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sink_dir.join("1.json")).unwrap()).unwrap();
    assert_eq!(envelope["from"], "alice@example.org");
    assert_eq!(envelope["to"], serde_json::json!(["dave@example.net"]));
    let relayed = std::fs::read_to_string(sink_dir.join("1.eml")).unwrap();
    assert!(
        relayed.starts_with("Received: from [127.0.0.1]\r\n\tby example.org (bitmask-provider) with ESMTPS; "),
        "{relayed}"
    );
    assert!(relayed.contains(BODY), "{relayed}");

    // The smarthost's refusals come back: permanent 554, temporary 451.
    let refused = submit(relay, &ca, client, "alice@example.org", &["reject-me@example.net"], &mail);
    assert_eq!(refused["code"], 554, "{refused}");
    let later = submit(relay, &ca, client, "alice@example.org", &["later@example.net"], &mail);
    assert_eq!(later["code"], 451, "{later}");
    // Local recipients are checked as on the MX.
    let keyless = submit(relay, &ca, client, "alice@example.org", &["carol@example.org"], &mail);
    assert_eq!(keyless["recipients"]["carol@example.org"][0], 450, "{keyless}");
    let unknown = submit(relay, &ca, client, "alice@example.org", &["nobody@example.org"], &mail);
    assert_eq!(unknown["recipients"]["nobody@example.org"][0], 550, "{unknown}");

    // Only as oneself.
    let forged = submit(relay, &ca, client, "bob@example.org", &["dave@example.net"], &mail);
    assert_eq!(forged["code"], 550, "{forged}");
    assert!(forged["message"].as_str().unwrap().starts_with("5.7.1"), "{forged}");

    // Without a client certificate there is no connection.
    let anonymous = submit(relay, &ca, None, "alice@example.org", &["dave@example.net"], &mail);
    assert!(anonymous["connection"].is_string(), "{anonymous}");

    // A certificate of the provider's CA that the provider did not issue
    // (or has forgotten) gets 530.
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(provider.dir.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&provider.ca_pem(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let stray_key = rcgen::KeyPair::generate().unwrap();
    let stray = params.signed_by(&stray_key, &issuer).unwrap();
    std::fs::write(temp.path().join("stray.pem"), stray.pem()).unwrap();
    std::fs::write(temp.path().join("stray.key"), stray_key.serialize_pem()).unwrap();
    let stray_client = Some((temp.path().join("stray.pem"), temp.path().join("stray.key")));
    let stray_client = stray_client.as_ref().map(|(certificate, key)| (certificate.as_path(), key.as_path()));
    let unknown_certificate = submit(relay, &ca, stray_client, "alice@example.org", &["dave@example.net"], &mail);
    assert_eq!(unknown_certificate["code"], 530, "{unknown_certificate}");

    // Exactly the one remote copy reached the smarthost, and the one local
    // copy was deposited.
    assert!(!sink_dir.join("2.json").exists());
    assert_eq!(provider.incoming(&bob).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_smarthost_the_relay_delivers_locally_only() {
    let provider = Provider::start(&[]);
    let (alice, _) = provider.user_with_key("alice@example.org").await;
    let (bob, _) = provider.user_with_key("bob@example.org").await;
    let (certificate, key) = provider.client_certificate(&alice).await;
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("c.pem"), certificate).unwrap();
    std::fs::write(temp.path().join("c.key"), key).unwrap();
    let (certificate, key) = (temp.path().join("c.pem"), temp.path().join("c.key"));
    let client = Some((certificate.as_path(), key.as_path()));
    let relay = provider.port("relay_port");
    let mail = message("alice@example.org", "dave@example.net", "local-only@example.org");

    let remote = submit(relay, &provider.ca_path(), client, "alice@example.org", &["dave@example.net"], &mail);
    assert_eq!(remote["recipients"]["dave@example.net"][0], 550, "{remote}");
    let local = submit(relay, &provider.ca_path(), client, "alice@example.org", &["bob@example.org"], &mail);
    assert_eq!(local["ok"], true, "{local}");
    assert_eq!(provider.incoming(&bob).await.len(), 1);
}
