//! The provider's memory with one large message on its way: taken by the
//! MX, encrypted, deposited, then fetched by the recipient's device; then a
//! blob of the same size backed up and fetched by another device. Issue
//! 13: no process holds more than about three copies of a large message, so
//! the peak resident set of the real process (`VmHWM`) may exceed what it
//! held before by at most three times the message. (Before incoming
//! messages were streamed into files and out of them, a 24 MiB message
//! took 4.3 times its size: the received buffer, the ciphertext, sled's
//! copies of it, and the whole item again for each fetch.)

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod common;

use std::io::{BufReader, Write as _};

use bitmask_proto::sync::v1 as sync_pb;
use common::Provider;

/// A field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    let kib: u64 = line.trim_start_matches(field).trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Reads one SMTP reply; its code.
fn reply(reader: &mut impl std::io::BufRead) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|code| code.parse().ok()).unwrap_or(0);
        }
    }
}

/// A message of about `size` bytes: headers and lines of 76 base64-like
/// characters that do not repeat (nothing compresses them).
fn message(size: usize, message_id: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut message = Vec::with_capacity(size + 1024);
    message.extend_from_slice(
        format!(
            "From: <sender@example.net>\r\nTo: <bob@example.org>\r\nSubject: big\r\nMessage-ID: <{message_id}>\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while message.len() < size {
        for _ in 0..76 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            message.push(ALPHABET[(state % 64) as usize]);
        }
        message.extend_from_slice(b"\r\n");
    }
    message
}

/// `message` for bob through the MX on `port`, answered `250`.
async fn send(port: u16, message: Vec<u8>) {
    let send = move || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = std::io::BufWriter::with_capacity(1 << 16, stream);
        assert_eq!(reply(&mut reader), 220);
        for (command, code) in [
            (&b"EHLO client.example.net\r\n"[..], 250),
            // No SIZE, as lettre (the SMTP gateway's relay client) sends
            // it: the buffer grows as the message comes.
            (b"MAIL FROM:<sender@example.net>\r\n", 250),
            (b"RCPT TO:<bob@example.org>\r\n", 250),
            (b"DATA\r\n", 354),
        ] {
            writer.write_all(command).unwrap();
            writer.flush().unwrap();
            assert_eq!(reply(&mut reader), code);
        }
        // No line starts with a dot: nothing to stuff.
        writer.write_all(&message).unwrap();
        writer.write_all(b".\r\n").unwrap();
        writer.flush().unwrap();
        assert_eq!(reply(&mut reader), 250);
    };
    tokio::task::spawn_blocking(send).await.unwrap();
}

/// Fetches every incoming item of `token`'s user as a device does, and
/// deletes it; the sizes fetched.
async fn fetch_all(provider: &Provider, token: &str) -> Vec<u64> {
    let mut sync = provider.sync(token).await;
    let items = sync.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap().into_inner().items;
    let mut sizes = Vec::new();
    for item in items {
        let mut stream =
            sync.get_incoming(sync_pb::GetIncomingRequest { id: item.id.clone() }).await.unwrap().into_inner();
        let mut fetched = 0;
        while let Some(chunk) = stream.message().await.unwrap() {
            fetched += chunk.data.len() as u64;
        }
        assert_eq!(fetched, item.size);
        sync.delete_incoming(sync_pb::DeleteIncomingRequest { ids: vec![item.id] }).await.unwrap();
        sizes.push(fetched);
    }
    sizes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_message_is_held_at_most_three_times() {
    let size: usize = 24 << 20;
    let provider = Provider::start(&[]);
    let pid = provider.process.as_ref().unwrap().0.id();
    let (token, _key) = provider.user_with_key("bob@example.org").await;
    let port = provider.port("mx_port");

    // Once around the path with a small message first, so what any first
    // message sets up (sled trees, TLS, buffers) is in the idle figure.
    send(port, message(4096, "small.1@example.net")).await;
    assert_eq!(fetch_all(&provider, &token).await.len(), 1);
    let idle = status_bytes(pid, "VmRSS:");

    send(port, message(size, "big.1@example.net")).await;
    let after_deposit = status_bytes(pid, "VmHWM:");
    assert_eq!(fetch_all(&provider, &token).await.len(), 1);
    // A device backing up a blob of the same size (as a store pushes a
    // large attachment: 1 MiB parts), and a second device fetching it.
    let mut sync = provider.sync(&token).await;
    let blob = message(size, "blob.1@example.net");
    let mut parts: Vec<sync_pb::PutBlobRequest> = blob
        .chunks(1 << 20)
        .map(|chunk| sync_pb::PutBlobRequest { data: chunk.to_vec(), ..Default::default() })
        .collect();
    parts[0].id = b"blob-1".to_vec();
    parts[0].size = blob.len() as u64;
    sync.put_blob(tokio_stream::iter(parts)).await.unwrap();
    let mut stream =
        sync.get_blob(sync_pb::GetBlobRequest { id: b"blob-1".to_vec(), offset: 0 }).await.unwrap().into_inner();
    let mut fetched = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        fetched += chunk.data.len();
    }
    assert_eq!(fetched, blob.len());
    let peak = status_bytes(pid, "VmHWM:");
    let after = status_bytes(pid, "VmRSS:");
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    eprintln!(
        "message {:.1} MiB: idle {:.1} MiB, peak by the deposit {:.1} MiB, by the fetch and a blob {:.1} MiB ({:.2}x the message above idle), resident after {:.1} MiB",
        mib(size as u64),
        mib(idle),
        mib(after_deposit),
        mib(peak),
        (peak - idle) as f64 / size as f64,
        mib(after),
    );
    assert!(peak - idle <= 3 * size as u64, "the provider held more than three copies of the message");
}
