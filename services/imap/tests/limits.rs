//! Limits that protect the gateway: a flooding client is cut off while
//! others go on, a literal over the limit is refused, connections are capped.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use bitmask_testkit::{World, free_port, wait_until};

const ACCOUNT: &str = "alice@example.org";

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut client = Self { reader: BufReader::new(stream.try_clone().unwrap()), writer: stream };
        let greeting = client.line();
        assert!(greeting.starts_with("* OK") || greeting.starts_with("* BYE"), "{greeting}");
        client
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Sends a command and returns every line up to its tagged status.
    fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes());
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "connection closed after {lines:?}");
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

fn started() -> (World, bitmask_testkit::KillOnDrop, u16, String) {
    let world = World::new();
    let daemon = world.bitmaskd(&[]);
    let imap = free_port();
    world.ctl_json(&[
        "account",
        "add",
        ACCOUNT,
        "--imap-port",
        &imap.to_string(),
        "--smtp-port",
        &free_port().to_string(),
    ]);
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "pass\n").unwrap();
    world.ctl_json(&["account", "start", ACCOUNT, "--passphrase-file", passphrase.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "the IMAP port accepts connections", || {
        TcpStream::connect(("127.0.0.1", imap)).is_ok()
    });
    let token = world.ctl_json(&["mail", "token", ACCOUNT])["token"].as_str().unwrap().to_owned();
    (world, daemon, imap, token)
}

#[test]
fn a_flooding_client_is_cut_off_and_nobody_else_suffers() {
    let (_world, _daemon, port, token) = started();
    let mut calm = Client::connect(port);
    let login = calm.command("a1", &format!("LOGIN {ACCOUNT} {token}"));
    assert!(login.last().unwrap().starts_with("a1 OK"), "{login:?}");

    // Garbage gets BAD and the session goes on...
    let mut noisy = Client::connect(port);
    noisy.send(b"\x00\xff garbage\r\n");
    assert!(noisy.line().contains("BAD"));
    assert!(noisy.command("n1", "NOOP").last().unwrap().starts_with("n1 OK"));
    // ...until it keeps at it: then it is cut off.
    for _ in 0..30 {
        noisy.send(b"}}}{{{ not imap\r\n");
    }
    let mut rest = String::new();
    let _ = noisy.reader.read_to_string(&mut rest);
    assert!(rest.contains("* BYE"), "{rest}");

    // A literal over the limit is refused before it is sent.
    let refused = calm.command("a2", "APPEND INBOX {999999999}");
    assert!(refused.last().unwrap().starts_with("a2 BAD"), "{refused:?}");
    assert!(calm.command("a3", "SELECT INBOX").last().unwrap().starts_with("a3 OK"), "the calm one goes on");
}

#[test]
fn connections_are_capped() {
    let (_world, _daemon, port, _token) = started();
    let open: Vec<Client> = (0..100).map(|_| Client::connect(port)).collect();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert!(line.starts_with("* BYE"), "{line}");
    drop(open);
    wait_until(Duration::from_secs(10), "a slot is free again", || {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line.starts_with("* OK")
    });
}
