//! What one client may hold of the provider, through the real binary:
//! connections to the MX and the relay per client address. Client sockets
//! are bound to 127.0.0.1 and 127.0.0.2 (both on lo) to be two clients.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{Provider, submit_from};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `port` on 127.0.0.1 from `local`.
async fn connect_from(local: &str, port: u16) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local.parse::<IpAddr>().unwrap(), 0)).unwrap();
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap()
}

/// One SMTP reply (all its lines).
async fn reply(reader: &mut BufReader<TcpStream>) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await.unwrap().unwrap();
        reply.push_str(&line);
        if read == 0 || line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

/// An SMTP conversation from `local`: each of `lines` after the reply
/// before it; every reply, the greeting first.
async fn converse_from(local: &str, port: u16, lines: &[&str]) -> Vec<String> {
    let mut reader = BufReader::new(connect_from(local, port).await);
    let mut replies = vec![reply(&mut reader).await];
    for line in lines {
        reader.get_mut().write_all(line.as_bytes()).await.unwrap();
        replies.push(reply(&mut reader).await);
    }
    replies
}

/// Issue 14: 500 connections to the MX from one address do not stop
/// another address's delivery; beyond its own limit that address is told
/// why, and its connections are closed.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_mx_connection() {
    let provider = Provider::start(&[]);
    let (token, _key) = provider.user_with_key("bob@example.org").await;
    let port = provider.port("mx_port");

    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..500 {
        let mut reader = BufReader::new(connect_from("127.0.0.1", port).await);
        let greeting = reply(&mut reader).await;
        if greeting.starts_with("220 ") {
            held.push(reader);
        } else {
            assert!(greeting.starts_with("421 4.7.0 too many connections from your address"), "{greeting:?}");
            // And closed.
            let mut rest = String::new();
            assert_eq!(reader.read_line(&mut rest).await.unwrap(), 0, "{rest:?}");
            refused += 1;
        }
    }
    assert!(refused >= 400, "only {refused} of 500 refused");

    let replies = converse_from(
        "127.0.0.2",
        port,
        &[
            "EHLO other.example.net\r\n",
            "MAIL FROM:<someone@example.net>\r\n",
            "RCPT TO:<bob@example.org>\r\n",
            "DATA\r\n",
            "Subject: still open\r\nMessage-ID: <limits.1@example.net>\r\n\r\nhello\r\n.\r\n",
            "QUIT\r\n",
        ],
    )
    .await;
    assert!(replies[0].starts_with("220 "), "{replies:?}");
    assert!(replies[5].starts_with("250 "), "{replies:?}");
    assert_eq!(provider.incoming(&token).await.len(), 1);
    drop(held);
}

/// The relay has its own pool, limited per address too: connections held
/// open by one address (no TLS spoken) make that address's next one close
/// at once, and another address still submits.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_relay_connection() {
    let provider = Provider::start(&[]);
    let (token, _key) = provider.user_with_key("alice@example.org").await;
    let (certificate, key) = provider.client_certificate(&token).await;
    let dir = provider.dir.parent().unwrap();
    let (certificate_file, key_file) = (dir.join("alice.pem"), dir.join("alice.key"));
    std::fs::write(&certificate_file, certificate).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let port = provider.port("relay_port");
    let message = "From: <alice@example.org>\nTo: <alice@example.org>\nSubject: hi\n\nhello\n";
    let submit = |source: &str| {
        let client = Some((certificate_file.as_path(), key_file.as_path()));
        submit_from(source, port, &provider.ca_path(), client, "alice@example.org", &["alice@example.org"], message)
    };
    assert_eq!(submit("127.0.0.1")["ok"], true);

    // 20 held (the default per address), the rest closed unread.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect_from("127.0.0.1", port).await);
    }
    let mut closed = connect_from("127.0.0.1", port).await;
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut closed, &mut byte));
    assert!(matches!(read.await, Ok(Ok(0)) | Ok(Err(_))), "the 21st connection is closed at once");
    let refused = submit("127.0.0.1");
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(refused.get("connection").is_some(), "{refused}");

    let other = submit("127.0.0.2");
    assert_eq!(other["ok"], true, "{other}");
    drop(held);
}
