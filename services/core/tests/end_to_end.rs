//! Mail between two people, end to end, with peers this project did not
//! write: a real `bitmask-provider`, two installations (each its own
//! bitmaskd), Python's smtplib and imaplib as the mail clients, swaks as a
//! stranger's mail server, GnuPG as a stranger's OpenPGP.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bitmask_testkit::gpg::Gpg;
use bitmask_testkit::{KillOnDrop, ProviderProcess, World, all_bytes, contains, free_port, text, wait_until};
use sha2::Digest as _;

const DOMAIN: &str = "example.org";
const ALICE: &str = "alice@example.org";
const BOB: &str = "bob@example.org";

/// One person's installation: bitmaskd and one account at the provider.
struct Person {
    world: World,
    _daemon: KillOnDrop,
    address: String,
    imap_port: u16,
    smtp_port: u16,
    passphrase_file: PathBuf,
    /// Shown by the first start of a new account (empty on a second device).
    recovery_code: String,
}

impl Person {
    /// `bitmaskctl account add ADDRESS --provider URL` (the CA pinned from
    /// the provider's file, as a user would after checking the fingerprint).
    fn join(provider: &ProviderProcess, address: &str, passphrase: &str) -> Self {
        let mut world = World::new();
        // Key discovery for other domains asks WKD: a closed port, not the Internet.
        let closed = free_port();
        world.env.push(("BITMASK_KEYS_RESOLVE".into(), format!("example.net=127.0.0.1:{closed}")));
        let daemon = world.bitmaskd(&[]);
        let passphrase_file = world.path().join("passphrase");
        std::fs::write(&passphrase_file, format!("{passphrase}\n")).unwrap();
        let (imap_port, smtp_port) = (free_port(), free_port());
        let mut person = Self {
            world,
            _daemon: daemon,
            address: address.into(),
            imap_port,
            smtp_port,
            passphrase_file,
            recovery_code: String::new(),
        };
        let added = person.add(provider);
        assert!(
            added.status.success(),
            "account add {address}: {}\nstore log:\n{}",
            text(&added),
            person.world.log(address, "store")
        );
        let shown = String::from_utf8_lossy(&added.stdout).into_owned();
        let code = shown.split("shown only this once:").nth(1).and_then(|rest| rest.split_whitespace().next());
        person.recovery_code = code.unwrap_or_default().to_owned();
        person.wait_for_gateways();
        person
    }

    /// `account add` on a new installation, whatever comes of it.
    fn try_join(provider: &ProviderProcess, address: &str, passphrase: &str) -> Output {
        let world = World::new();
        let _daemon = world.bitmaskd(&[]);
        let passphrase_file = world.path().join("passphrase");
        std::fs::write(&passphrase_file, format!("{passphrase}\n")).unwrap();
        let (imap_port, smtp_port) = (free_port(), free_port());
        let person = Self {
            world,
            _daemon,
            address: address.into(),
            imap_port,
            smtp_port,
            passphrase_file,
            recovery_code: String::new(),
        };
        person.add(provider)
    }

    fn add(&self, provider: &ProviderProcess) -> Output {
        self.world.ctl(&[
            "account",
            "add",
            &self.address,
            "--provider",
            &provider.url(),
            "--provider-ca",
            provider.ca_file().to_str().unwrap(),
            "--passphrase-file",
            self.passphrase_file.to_str().unwrap(),
            "--imap-port",
            &self.imap_port.to_string(),
            "--smtp-port",
            &self.smtp_port.to_string(),
        ])
    }

    fn wait_for_gateways(&self) {
        for port in [self.imap_port, self.smtp_port] {
            wait_until(Duration::from_secs(20), "the gateway accepts connections", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
    }

    fn token(&self) -> String {
        self.world.ctl_json(&["mail", "token", &self.address])["token"].as_str().unwrap().to_owned()
    }

    fn fingerprint(&self) -> String {
        let keys = self.world.ctl_json(&["keys", "list", &self.address]);
        let own = keys.as_array().unwrap().iter().find(|key| key["has_secret"] == true).unwrap();
        own["fingerprint"].as_str().unwrap().to_owned()
    }

    fn start(&self) {
        let started = self.world.ctl(&[
            "account",
            "start",
            &self.address,
            "--passphrase-file",
            self.passphrase_file.to_str().unwrap(),
        ]);
        assert!(started.status.success(), "{}", text(&started));
        self.wait_for_gateways();
    }

    fn stop(&self) {
        let stopped = self.world.ctl(&["account", "stop", &self.address]);
        assert!(stopped.status.success(), "{}", text(&stopped));
    }

    /// Python's smtplib submits `message` (bytes literal) to `to`.
    fn send(&self, to: &[&str], message: &str) {
        let script = format!(
            "import smtplib\ns = smtplib.SMTP('127.0.0.1', {port})\ns.login('{me}', '{token}')\n\
             s.sendmail('{me}', {to:?}, {message})\ns.quit()",
            port = self.smtp_port,
            me = self.address,
            token = self.token(),
        );
        let sent = python(&script);
        assert!(sent.status.success(), "{}", text(&sent));
    }

    /// Python imaplib: the INBOX's messages as (UID, raw) pairs.
    fn inbox(&self) -> Vec<(u32, String)> {
        let script = format!(
            "import imaplib, json\nm = imaplib.IMAP4('127.0.0.1', {port})\nm.login('{me}', '{token}')\n\
             m.select('INBOX', readonly=True)\nout = []\n\
             typ, data = m.uid('FETCH', '1:*', '(UID BODY.PEEK[])')\n\
             for item in data:\n    if isinstance(item, tuple):\n\
             \x20       uid = int(item[0].split(b'UID ')[1].split()[0])\n\
             \x20       out.append([uid, item[1].decode('utf-8', 'replace')])\n\
             print(json.dumps(out))",
            port = self.imap_port,
            me = self.address,
            token = self.token(),
        );
        let listed = python(&script);
        assert!(listed.status.success(), "{}", text(&listed));
        let parsed: Vec<(u32, String)> = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        parsed
    }

    /// Waits until INBOX holds `count` messages; fails with the logs.
    fn wait_for_inbox(&self, count: usize) -> Vec<(u32, String)> {
        let start = std::time::Instant::now();
        loop {
            let inbox = self.inbox();
            if inbox.len() >= count {
                return inbox;
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "INBOX of {} has {} of {count} messages after 90 s\nstore log:\n{}\nimap log:\n{}",
                self.address,
                inbox.len(),
                self.world.log(&self.address, "store"),
                self.world.log(&self.address, "imap"),
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn python(script: &str) -> Output {
    let python = bitmask_testkit::workspace_root().join(".venv/bin/python");
    Command::new(python).args(["-c", script]).stdin(Stdio::null()).output().unwrap()
}

/// The value of a header of a raw message (the first one).
fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    let head = raw.split("\r\n\r\n").next().unwrap_or(raw);
    head.split("\r\n").find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn provider() -> ProviderProcess {
    ProviderProcess::start(DOMAIN, &[])
}

/// Nothing under the provider's directory contains `needle`.
fn assert_no_plaintext(provider: &ProviderProcess, needles: &[&str]) {
    let bytes = all_bytes(&provider.dir);
    for needle in needles {
        assert!(!contains(&bytes, needle.as_bytes()), "the provider's files hold {needle:?}");
    }
}

#[test]
fn alice_writes_to_bob_and_bob_reads_it_decrypted_and_verified() {
    let provider = provider();
    let alice = Person::join(&provider, ALICE, "alice passphrase");
    let bob = Person::join(&provider, BOB, "bob passphrase");

    // Bob idles on INBOX; he is told EXISTS when Alice's message arrives.
    let idle = format!(
        "import imaplib, time\nm = imaplib.IMAP4('127.0.0.1', {port})\nm.login('{me}', '{token}')\nm.select('INBOX')\n\
         m.send(b'i1 IDLE\\r\\n')\nassert m.readline().startswith(b'+')\nprint('idling', flush=True)\n\
         while True:\n    line = m.readline()\n    if b'EXISTS' in line:\n        print(line.decode().strip(), flush=True)\n        break\n\
         m.send(b'DONE\\r\\n')",
        port = bob.imap_port,
        me = BOB,
        token = bob.token(),
    );
    let python_path = bitmask_testkit::workspace_root().join(".venv/bin/python");
    let mut idler = Command::new(python_path).args(["-c", &idle]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(idler.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "idling");

    alice.send(&[BOB], "b'Subject: lunch on thursday\\r\\nFrom: alice@example.org\\r\\nTo: bob@example.org\\r\\n\\r\\nthe secret plan is pancakes\\r\\n'");
    let told = lines.next().unwrap().unwrap();
    assert!(told.ends_with("EXISTS"), "{told}");
    assert!(idler.wait().unwrap().success());

    let inbox = bob.wait_for_inbox(1);
    let raw = &inbox[0].1;
    assert!(raw.contains("the secret plan is pancakes"), "{raw}");
    assert_eq!(header(raw, "Subject"), Some("lunch on thursday"), "{raw}");
    assert_eq!(header(raw, "X-Leap-Encryption"), Some("decrypted"), "{raw}");
    let signature = header(raw, "X-Leap-Signature").unwrap_or_default();
    assert_eq!(signature, format!("valid; pubkey=\"{}\"", alice.fingerprint()), "{raw}");

    // swaks submits too (AUTH PLAIN with the mail token).
    let swaks = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", alice.smtp_port), "--auth", "PLAIN", "--auth-user", ALICE])
        .args(["--auth-password", &alice.token(), "--from", ALICE, "--to", BOB])
        .args(["--header", "Subject: sent with swaks", "--body", "swaks was here"])
        .output()
        .unwrap();
    assert!(swaks.status.success(), "{}", text(&swaks));
    let inbox = bob.wait_for_inbox(2);
    let raw = &inbox.iter().find(|(_, raw)| raw.contains("swaks was here")).unwrap().1;
    assert_eq!(header(raw, "Subject"), Some("sent with swaks"), "{raw}");
    assert!(header(raw, "X-Leap-Signature").unwrap_or_default().starts_with("valid;"), "{raw}");

    // Bob answers, also encrypted: Alice's key is known to him now.
    bob.send(
        &[ALICE],
        "b'Subject: re: lunch\\r\\nFrom: bob@example.org\\r\\nTo: alice@example.org\\r\\n\\r\\npancakes it is\\r\\n'",
    );
    let inbox = alice.wait_for_inbox(1);
    assert!(inbox[0].1.contains("pancakes it is"));
    assert!(header(&inbox[0].1, "X-Leap-Signature").unwrap_or_default().starts_with("valid;"), "{}", inbox[0].1);

    assert_no_plaintext(
        &provider,
        &["lunch on thursday", "the secret plan is pancakes", "pancakes it is", "swaks was here", "sent with swaks"],
    );
}

#[test]
fn a_stranger_writes_through_the_mx_and_the_provider_keeps_no_plaintext() {
    let provider = provider();
    let bob = Person::join(&provider, BOB, "bob passphrase");
    let mx = format!("127.0.0.1:{}", provider.port("mx_port"));
    let swaks = |to: &str, subject: &str, body: &str| {
        Command::new("swaks")
            .args(["--server", &mx, "--from", "stranger@example.net", "--to", to, "--helo", "mail.example.net"])
            .args(["--header", &format!("Subject: {subject}"), "--body", body])
            .output()
            .unwrap()
    };
    let sent = swaks(BOB, "hello from outside", "a plain message from a stranger");
    assert!(sent.status.success(), "{}", text(&sent));
    // An unknown user is refused at RCPT.
    let refused = swaks("nobody@example.org", "x", "y");
    assert!(!refused.status.success());
    assert!(text(&refused).contains("<** 550"), "{}", text(&refused));

    let inbox = bob.wait_for_inbox(1);
    let raw = &inbox[0].1;
    assert!(raw.contains("a plain message from a stranger"), "{raw}");
    assert_eq!(header(raw, "X-Leap-Signature"), Some("none"), "{raw}");
    assert_no_plaintext(&provider, &["hello from outside", "a plain message from a stranger"]);
}

#[test]
fn a_message_encrypted_by_gpg_to_bobs_key_is_read() {
    let provider = provider();
    let bob = Person::join(&provider, BOB, "bob passphrase");
    let gpg = Gpg::new();
    let exported = bob.world.ctl(&["keys", "export", BOB]);
    assert!(gpg.run(&["--import"], &exported.stdout).status.success());
    let encrypted = gpg.run(
        &["--armor", "--trust-model", "always", "--encrypt", "--recipient", BOB],
        b"Content-Type: text/plain\r\n\r\nencrypted by gnupg itself\r\n",
    );
    assert!(encrypted.status.success(), "{}", text(&encrypted));
    let armored = String::from_utf8(encrypted.stdout).unwrap().replace('\n', "\r\n");
    let message = format!(
        "From: stranger@example.net\r\nTo: {BOB}\r\nSubject: gpg\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\n\r\n{armored}\r\n--b1--\r\n"
    );
    let file = bob.world.path().join("gpg.eml");
    std::fs::write(&file, message).unwrap();
    let sent = Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", provider.port("mx_port")),
            "--from",
            "stranger@example.net",
            "--to",
            BOB,
        ])
        .arg("--data")
        .arg(&file)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{}", text(&sent));
    let inbox = bob.wait_for_inbox(1);
    let raw = &inbox[0].1;
    assert!(raw.contains("encrypted by gnupg itself"), "{raw}");
    assert_eq!(header(raw, "X-Leap-Encryption"), Some("decrypted"), "{raw}");
}

#[test]
fn mail_waits_while_bob_is_stopped_and_his_second_device_sees_the_same_inbox() {
    let provider = provider();
    let alice = Person::join(&provider, ALICE, "alice passphrase");
    let bob = Person::join(&provider, BOB, "bob passphrase");
    bob.stop();
    for n in 1..=3 {
        alice.send(&[BOB], &format!("b'Subject: while you were out {n}\\r\\n\\r\\nmessage {n}\\r\\n'"));
    }
    bob.start();
    let inbox = bob.wait_for_inbox(3);
    assert_eq!(inbox.len(), 3);
    for n in 1..=3 {
        assert!(inbox.iter().any(|(_, raw)| raw.contains(&format!("message {n}"))), "{inbox:?}");
    }
    // The client gave neither: the submission gateway added both.
    for (_, raw) in &inbox {
        assert!(header(raw, "Message-ID").is_some_and(|id| id.ends_with("@example.org>")), "{raw}");
        assert!(header(raw, "Date").is_some(), "{raw}");
    }

    // A second device: the same account and passphrase, another store.
    let laptop = Person::join(&provider, BOB, "bob passphrase");
    let synced = laptop.world.ctl(&["sync", BOB]);
    assert!(synced.status.success(), "{}", text(&synced));
    let second = laptop.wait_for_inbox(3);
    let bodies = |inbox: &[(u32, String)]| {
        let mut bodies: Vec<String> =
            inbox.iter().map(|(_, raw)| raw.rsplit("\r\n\r\n").next().unwrap().to_owned()).collect();
        bodies.sort();
        bodies
    };
    assert_eq!(bodies(&second), bodies(&inbox));
    // Its own UIDs, stable across a restart of its services.
    let uids: Vec<u32> = second.iter().map(|(uid, _)| *uid).collect();
    laptop.stop();
    laptop.start();
    let again: Vec<u32> = laptop.wait_for_inbox(3).iter().map(|(uid, _)| *uid).collect();
    assert_eq!(uids, again);
}

#[test]
fn a_changed_passphrase_reaches_the_provider_and_new_devices() {
    let provider = provider();
    let alice = Person::join(&provider, ALICE, "first passphrase");
    assert_eq!(alice.recovery_code.len(), 39, "{:?}", alice.recovery_code);
    let start = |person: &Person, passphrase: &str| {
        person.world.ctl_with_input(&["account", "start", &person.address], &format!("{passphrase}\n"))
    };

    // A second device, set up before the change, that knows nothing of it.
    let tablet = Person::join(&provider, ALICE, "first passphrase");

    // With the current passphrase.
    let changed =
        alice.world.ctl_with_input(&["account", "passphrase", ALICE], "first passphrase\nsecond passphrase\n");
    assert!(changed.status.success(), "{}", text(&changed));
    // The old device syncs and does not put the old passphrase's seal back.
    let synced = tablet.world.ctl(&["sync", ALICE]);
    assert!(synced.status.success(), "{}", text(&synced));
    alice.stop();
    let old = start(&alice, "first passphrase");
    assert!(!old.status.success() && text(&old).contains("wrong passphrase"), "{}", text(&old));
    let new = start(&alice, "second passphrase");
    assert!(new.status.success(), "{}\n{}", text(&new), alice.world.log(ALICE, "store"));
    // A new device restores the account with the new passphrase, not the old one.
    let laptop = Person::join(&provider, ALICE, "second passphrase");
    laptop.stop();
    let refused = Person::try_join(&provider, ALICE, "first passphrase");
    assert!(!refused.status.success() && text(&refused).contains("refused the passphrase"), "{}", text(&refused));

    // With the recovery code, when the passphrase is lost.
    let input = format!("{}\nthird passphrase\n", alice.recovery_code);
    let recovered = alice.world.ctl_with_input(&["account", "passphrase", ALICE, "--recovery-code"], &input);
    assert!(recovered.status.success(), "{}", text(&recovered));
    alice.stop();
    assert!(!start(&alice, "second passphrase").status.success());
    let third = start(&alice, "third passphrase");
    assert!(third.status.success(), "{}", text(&third));
    let phone = Person::join(&provider, ALICE, "third passphrase");
    assert!(!phone.token().is_empty());
}

/// big_mail.py (Python's smtplib and imaplib) in `mode` with `args`.
fn big_mail(mode: &str, person: &Person, args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/big_mail.py");
    let python = bitmask_testkit::workspace_root().join(".venv/bin/python");
    let port = if mode == "send" { person.smtp_port } else { person.imap_port };
    let output = Command::new(python)
        .arg(script)
        .args([mode, &port.to_string(), &person.address, &person.token()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "big_mail.py {mode}: {}", text(&output));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Waits until `person` reads the message `subject`, decrypted and
/// verified; its attachment's SHA-256.
fn read_big(person: &Person, subject: &str) -> String {
    let mut read = serde_json::Value::Null;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        read = serde_json::from_str(&big_mail("read", person, &[subject])).unwrap();
        if read["found"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let tail = |service: &str| {
        let log = person.world.log(&person.address, service);
        log[log.len().saturating_sub(4000)..].to_owned()
    };
    assert_eq!(read["found"], 1, "{subject} never arrived: {read}\nimap:\n{}\nstore:\n{}", tail("imap"), tail("store"));
    assert_eq!(read["encryption"], "decrypted", "{read}");
    assert!(read["signature"].as_str().unwrap().starts_with("valid"), "{read}");
    read["sha256"].as_str().unwrap().to_owned()
}

#[test]
fn big_attachments_reach_bob_and_his_second_device_byte_for_byte() {
    // 1 MiB and 20 MiB of random bytes attached, alice -> bob through the
    // provider (submission, relay, MX, bob's store, his IMAP gateway).
    let seed: u64 = std::env::var("BIG_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(rand_seed);
    println!("seed {seed}");
    let provider = provider();
    let alice = Person::join(&provider, ALICE, "alice passphrase");
    let bob = Person::join(&provider, BOB, "bob passphrase");
    for mib in [1u64, 20] {
        let subject = format!("{mib} MiB attached");
        let sent = big_mail("send", &alice, &[BOB, &subject, &mib.to_string(), &(seed + mib).to_string()]);
        assert_eq!(read_big(&bob, &subject), sent, "the {mib} MiB attachment bob reads differs");
    }
    // The same from swaks (its own MIME, AUTH PLAIN over STARTTLS).
    let file = alice.world.path().join("attachment.bin");
    let mut state = seed | 1;
    let data: Vec<u8> = (0..20 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(&file, &data).unwrap();
    let swaks = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", alice.smtp_port), "--tls", "--auth", "PLAIN"])
        .args(["--auth-user", ALICE, "--auth-password", &alice.token(), "--from", ALICE, "--to", BOB])
        .args(["--header", "Subject: 20 MiB from swaks", "--body", "the file, from swaks"])
        .args(["--attach-type", "application/octet-stream", "--attach-name", "file.bin"])
        .arg("--attach")
        .arg(format!("@{}", file.display()))
        .args(["--suppress-data"])
        .output()
        .unwrap();
    assert!(swaks.status.success() && text(&swaks).contains("250 2.0.0"), "{}", text(&swaks));
    let sent = format!("{:x}", sha2::Sha256::digest(&data));
    assert_eq!(read_big(&bob, "20 MiB from swaks"), sent, "the attachment swaks sent differs at bob's");
    // Bob's second device restores the account and reads the 20 MiB one.
    let laptop = Person::join(&provider, BOB, "bob passphrase");
    let synced = laptop.world.ctl(&["sync", BOB]);
    assert!(synced.status.success(), "{}", text(&synced));
    let sent = big_mail("send", &alice, &[BOB, "a check", "1", &seed.to_string()]);
    assert_eq!(read_big(&bob, "a check"), sent);
    let on_laptop = read_big(&laptop, "20 MiB attached");
    let on_phone = read_big(&bob, "20 MiB attached");
    assert_eq!(on_laptop, on_phone);
}

fn rand_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos().into()
}

#[test]
fn kill_9_of_the_provider_or_of_bobs_gateway_during_delivery_loses_and_repeats_nothing() {
    let mut provider = provider();
    let alice = Person::join(&provider, ALICE, "alice passphrase");
    let bob = Person::join(&provider, BOB, "bob passphrase");
    let count = 12;
    for n in 1..=count {
        alice.send(
            &[BOB],
            &format!("b'Subject: number {n}\\r\\nMessage-ID: <n{n}@example.org>\\r\\n\\r\\nbody {n}\\r\\n'"),
        );
        if n == count / 3 {
            provider.kill();
            provider.serve();
        }
        if n == 2 * count / 3 {
            let imap = bob.world.service_status(BOB, "imap");
            let pid = imap["pid"].as_u64().unwrap() as i32;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
        }
    }
    bob.wait_for_gateways();
    let inbox = bob.wait_for_inbox(count);
    for n in 1..=count {
        let copies = inbox.iter().filter(|(_, raw)| raw.contains(&format!("body {n}\r\n"))).count();
        assert_eq!(copies, 1, "message {n} is in INBOX {copies} times");
    }
    // Nothing more arrives later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bob.inbox().len(), count);
}

#[test]
fn bad_input_gets_clear_errors() {
    let provider = ProviderProcess::start(DOMAIN, &["--session-lifetime", "3"]);
    let alice = Person::join(&provider, ALICE, "alice passphrase");

    // The address is taken: another installation with another passphrase is refused.
    let intruder = World::new();
    let _daemon = intruder.bitmaskd(&[]);
    let wrong = intruder.path().join("wrong");
    std::fs::write(&wrong, "not alice's\n").unwrap();
    let add = |extra: &[&str]| {
        let mut args = vec!["account", "add", ALICE, "--provider"];
        let url = provider.url();
        args.push(&url);
        args.extend_from_slice(extra);
        intruder.ctl(&args)
    };
    let ca = provider.ca_file();
    let refused = add(&["--provider-ca", ca.to_str().unwrap(), "--passphrase-file", wrong.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("refused the passphrase"), "{}", text(&refused));
    assert!(intruder.ctl_json(&["account", "list"]).as_array().unwrap().is_empty(), "nothing half set up is left");

    // A CA that is not the provider's, and a fingerprint that does not match.
    let other = ProviderProcess::start(DOMAIN, &[]);
    let refused =
        add(&["--provider-ca", other.ca_file().to_str().unwrap(), "--passphrase-file", wrong.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("pinned CA"), "{}", text(&refused));
    let refused = add(&["--ca-fingerprint", &"00".repeat(32), "--passphrase-file", wrong.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("refused"), "{}", text(&refused));

    // Mail for an unknown user at the MX: 550.
    let refused = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", provider.port("mx_port")), "--to", "nobody@example.org"])
        .output()
        .unwrap();
    assert!(text(&refused).contains("<** 550"), "{}", text(&refused));

    // The session expires (3 s here): the store logs in again on its own.
    std::thread::sleep(Duration::from_secs(4));
    let synced = alice.world.ctl(&["sync", ALICE]);
    assert!(synced.status.success(), "{}", text(&synced));
    assert!(alice.world.log(ALICE, "store").contains("logged in again"), "{}", alice.world.log(ALICE, "store"));
}

/// Issue 14: at a provider that signs up by invitation, `account add
/// --provider` needs `--invite CODE` for a new account (and says so), and a
/// second device of an existing account needs none.
#[test]
fn an_invite_only_provider_takes_a_new_account_with_a_code_and_a_second_device_without() {
    let provider = ProviderProcess::start(DOMAIN, &["--signup", "invite"]);
    let add = |world: &World, extra: &[&str]| {
        let passphrase = world.path().join("passphrase");
        std::fs::write(&passphrase, "alice passphrase\n").unwrap();
        let (url, ca) = (provider.url(), provider.ca_file());
        let mut args = vec!["account", "add", ALICE, "--provider", &url, "--provider-ca", ca.to_str().unwrap()];
        let passphrase = passphrase.to_str().unwrap().to_owned();
        args.extend(["--passphrase-file", &passphrase]);
        args.extend_from_slice(extra);
        world.ctl(&args)
    };
    let first = World::new();
    let _first_daemon = first.bitmaskd(&[]);
    let refused = add(&first, &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("invite code"), "{}", text(&refused));
    assert!(first.ctl_json(&["account", "list"]).as_array().unwrap().is_empty(), "nothing half set up is left");

    let invite = Command::new(bitmask_testkit::bin("bitmask-provider"))
        .args(["invite", "--dir", provider.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(invite.status.success(), "{}", text(&invite));
    let code = String::from_utf8(invite.stdout).unwrap().trim().to_owned();
    let added = add(&first, &["--invite", &code]);
    assert!(added.status.success(), "{}", text(&added));

    let second = World::new();
    let _second_daemon = second.bitmaskd(&[]);
    let restored = add(&second, &[]);
    assert!(restored.status.success(), "a second device needs no code: {}", text(&restored));
}

#[test]
fn a_second_device_set_up_at_once_after_the_first_uses_the_same_account_key() {
    let provider = provider();
    let phone = Person::join(&provider, ALICE, "alice passphrase");
    let laptop = Person::join(&provider, ALICE, "alice passphrase");
    let secret_keys = |person: &Person| {
        let keys = person.world.ctl_json(&["keys", "list", ALICE]);
        let mut own: Vec<String> = keys
            .as_array()
            .unwrap()
            .iter()
            .filter(|key| key["has_secret"] == true)
            .map(|key| key["fingerprint"].as_str().unwrap().to_owned())
            .collect();
        own.sort();
        own
    };
    assert_eq!(secret_keys(&laptop), [phone.fingerprint()], "the second device made a key of its own");
    let synced = phone.world.ctl(&["sync", ALICE]);
    assert!(synced.status.success(), "{}", text(&synced));
    assert_eq!(secret_keys(&phone), [phone.fingerprint()]);
}
