//! The IMAP gateway driven by Python's imaplib (a client this project did
//! not write) through the whole stack: bitmaskd, the store, the gateway.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bitmask_testkit::{World, free_port, text, wait_until};

const ACCOUNT: &str = "alice@example.org";

/// Adds and starts Alice; returns the IMAP port and the mail token.
fn start_alice(world: &World) -> (u16, String) {
    let (imap, smtp) = (free_port(), free_port());
    world.ctl_json(&["account", "add", ACCOUNT, "--imap-port", &imap.to_string(), "--smtp-port", &smtp.to_string()]);
    start(world, imap);
    let token = world.ctl_json(&["mail", "token", ACCOUNT])["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 20, "{token}");
    (imap, token)
}

fn start(world: &World, imap: u16) {
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n").unwrap();
    world.ctl_json(&["account", "start", ACCOUNT, "--passphrase-file", passphrase.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "the IMAP port accepts connections", || {
        std::net::TcpStream::connect(("127.0.0.1", imap)).is_ok()
    });
}

fn imaplib(port: u16, token: &str, mode: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imaplib_flow.py");
    let output = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string(), ACCOUNT, token, mode])
        .output()
        .unwrap();
    assert!(output.status.success(), "imaplib {mode} failed:\n{}", text(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn imaplib_conversation_and_uids_that_survive_a_restart() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let (port, token) = start_alice(&world);
    let state = imaplib(port, &token, "flow");
    assert_eq!(state["uids"].as_array().unwrap().len(), 996, "{state}");
    assert_eq!(state["work"].as_array().unwrap().len(), 8, "{state}");

    // The whole stack restarted: UIDVALIDITY and every UID as they were.
    world.ctl_json(&["account", "stop", ACCOUNT]);
    start(&world, port);
    assert_eq!(imaplib(port, &token, "state"), state);
}

#[test]
fn every_corpus_message_comes_back_byte_identical_with_its_structure() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let (port, token) = start_alice(&world);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imaplib_corpus.py");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/mime");
    let output = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string(), ACCOUNT, &token])
        .arg(corpus)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn big_messages_up_to_the_limit_round_trip_and_survive_a_restart() {
    // 1, 5, 12 and 40 MiB of random attachments, 200 attachments of 100 KiB
    // and a 30 MiB inline text: each appended and read back whole and in
    // parts; over 40 MiB refused. Then the whole account restarts.
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let (port, token) = start_alice(&world);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imaplib_big.py");
    let state = world.path().join("big.json");
    let run = |args: &[&str]| {
        let output = Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &port.to_string(), ACCOUNT, &token, state.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "imaplib_big {args:?}:\n{}\n{}", text(&output), world.log(ACCOUNT, "imap"));
        String::from_utf8(output.stdout).unwrap()
    };
    let appended = run(&["append", "1", "5", "12", "40"]);
    println!("{appended}");
    assert!(appended.contains("\"ok\": 6"), "{appended}");
    world.ctl_json(&["account", "stop", ACCOUNT]);
    start(&world, port);
    let checked = run(&["check"]);
    assert!(checked.contains("\"ok\": 6"), "{checked}");
}
