//! The SMTP gateway through the whole stack, with peers this project did not
//! write: Python's smtplib and swaks submit, aiosmtpd is the relay, GnuPG
//! decrypts and verifies what arrives.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bitmask_testkit::{KillOnDrop, World, free_port, text, wait_until};

const ALICE: &str = "alice@example.org";

/// aiosmtpd saving what it accepts into `dir`; returns its port.
fn relay(dir: &Path) -> (KillOnDrop, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/relay.py");
    let python = bitmask_testkit::workspace_root().join(".venv/bin/python");
    let mut child =
        Command::new(python).arg(script).arg(dir).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (KillOnDrop(child), line.trim().parse().unwrap_or_else(|_| panic!("the relay did not start: {line:?}")))
}

/// The messages the relay has received: (envelope JSON, raw message).
fn received(dir: &Path) -> Vec<(serde_json::Value, Vec<u8>)> {
    let mut out = Vec::new();
    for n in 1.. {
        let Ok(envelope) = std::fs::read_to_string(dir.join(format!("{n}.json"))) else { break };
        out.push((serde_json::from_str(&envelope).unwrap(), std::fs::read(dir.join(format!("{n}.eml"))).unwrap()));
    }
    out
}

struct Gpg {
    _dir: tempfile::TempDir,
    home: PathBuf,
}

impl Gpg {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("g").tempdir_in("/tmp").unwrap();
        let home = dir.path().to_owned();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Self { _dir: dir, home }
    }

    fn run(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", "--trust-model", "always"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.home.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }
}

struct Stack {
    world: World,
    _daemon: KillOnDrop,
    _relay: KillOnDrop,
    relay_dir: PathBuf,
    smtp_port: u16,
    token: String,
}

fn stack(extra: &[&str]) -> Stack {
    let mut world = World::new();
    // Key discovery asks WKD: a closed port here, not the Internet.
    let closed = free_port();
    let resolve: Vec<String> = ["example.org", "example.net"]
        .iter()
        .flat_map(|domain| [format!("openpgpkey.{domain}=127.0.0.1:{closed}"), format!("{domain}=127.0.0.1:{closed}")])
        .collect();
    world.env.push(("BITMASK_KEYS_RESOLVE".into(), resolve.join(",")));
    let daemon = world.bitmaskd(&[]);
    let relay_dir = world.path().join("relay");
    let (relay, relay_port) = relay(&relay_dir);
    let smtp_port = free_port();
    let relay_address = format!("127.0.0.1:{relay_port}");
    let mut add = vec![
        "account",
        "add",
        ALICE,
        "--imap-port",
        &*Box::leak(free_port().to_string().into_boxed_str()),
        "--smtp-port",
        &*Box::leak(smtp_port.to_string().into_boxed_str()),
        "--relay",
        &relay_address,
        "--relay-tls",
        "none",
    ];
    add.extend_from_slice(extra);
    world.ctl_json(&add);
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "pass\n").unwrap();
    world.ctl_json(&["account", "start", ALICE, "--passphrase-file", passphrase.to_str().unwrap()]);
    wait_until(Duration::from_secs(10), "the SMTP port accepts connections", || {
        std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok()
    });
    let token = world.ctl_json(&["mail", "token", ALICE])["token"].as_str().unwrap().to_owned();
    Stack { world, _daemon: daemon, _relay: relay, relay_dir, smtp_port, token }
}

impl Stack {
    /// Waits until the relay has received `count` messages; on a timeout
    /// fails with the gateway's log.
    fn wait(&self, count: usize) {
        let start = std::time::Instant::now();
        while received(&self.relay_dir).len() < count {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the relay has {} of {count} messages after 30 s; the gateway logged:\n{}",
                received(&self.relay_dir).len(),
                self.world.log(ALICE, "smtp")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Bob's key pair in his own GnuPG, his public key given to Alice.
fn bob(stack: &Stack) -> Gpg {
    let gpg = Gpg::new();
    let made = gpg.run(&["--quick-gen-key", "bob@example.org", "default", "default", "never"], b"");
    assert!(made.status.success(), "{}", text(&made));
    let public = gpg.run(&["--armor", "--export", "bob@example.org"], b"").stdout;
    let file = stack.world.path().join("bob.asc");
    std::fs::write(&file, public).unwrap();
    let imported = stack.world.ctl(&["keys", "import", ALICE, file.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", text(&imported));
    let alice = stack.world.ctl(&["keys", "export", ALICE]);
    assert!(gpg.run(&["--import"], &alice.stdout).status.success());
    gpg
}

fn smtplib(port: u16, script: &str) -> Output {
    let program = format!("import smtplib, sys\nport = {port}\n{script}\n");
    Command::new("python3").args(["-c", &program]).output().unwrap()
}

fn alice_fingerprint(stack: &Stack) -> String {
    let keys = stack.world.ctl_json(&["keys", "list", ALICE, "--for", ALICE]);
    keys[0]["fingerprint"].as_str().unwrap().to_owned()
}

/// The two MIME parts of a multipart/* message, split at its boundary
/// exactly as RFC 3156 says a verifier must.
fn parts(message: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(message);
    let boundary = text
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_start_matches('"')
        .split(['"', ';', '\r', '\n'])
        .next()
        .unwrap()
        .to_owned();
    let delimiter = format!("\r\n--{boundary}");
    let body_start = text.find(&format!("--{boundary}\r\n")).unwrap();
    let body = &message[body_start..];
    let mut out = Vec::new();
    let mut rest = &body[boundary.len() + 4..];
    while let Some(end) = rest.windows(delimiter.len()).position(|window| window == delimiter.as_bytes()) {
        out.push(rest[..end].to_vec());
        rest = &rest[end + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        rest = &rest[2..];
    }
    out
}

#[test]
fn mail_to_a_keyed_recipient_is_encrypted_and_to_others_signed() {
    let stack = stack(&[]);
    let gpg = bob(&stack);
    let fingerprint = alice_fingerprint(&stack);
    let token = &stack.token;
    let sent = smtplib(
        stack.smtp_port,
        &format!(
            r#"
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo()
try:
    s.login("{ALICE}", "wrong token")
    sys.exit("a wrong token was accepted")
except smtplib.SMTPAuthenticationError as error:
    assert error.smtp_code == 535, error
s.login("{ALICE}", "{token}")
msg = b"From: Alice <{ALICE}>\r\nTo: bob@example.org, carol@example.net\r\nBcc: dave@example.net\r\nSubject: secret plans\r\nMessage-ID: <1@example.org>\r\n\r\nMeet me at noon. \xc3\xa9\r\n"
refused = s.sendmail("{ALICE}", ["bob@example.org", "carol@example.net", "dave@example.net"], msg)
assert refused == {{}}, refused
try:
    s.sendmail("mallory@example.org", ["bob@example.org"], b"Subject: x\r\n\r\nx\r\n")
    sys.exit("another sender was accepted")
except smtplib.SMTPSenderRefused as error:
    assert error.smtp_code == 553, error
s.quit()
"#
        ),
    );
    assert!(sent.status.success(), "{}", text(&sent));
    // Bob's encrypted copy, and one signed copy for Carol and Dave (whose
    // Bcc line is gone from it: Carol cannot tell Dave got it).
    stack.wait(2);
    let messages = received(&stack.relay_dir);
    assert_eq!(messages.len(), 2, "{:?}", messages.iter().map(|m| &m.0).collect::<Vec<_>>());
    for (envelope, message) in &messages {
        let text = String::from_utf8_lossy(message);
        assert!(!text.contains("dave@example.net"), "Bcc leaked: {text}");
        assert!(text.contains("Autocrypt: addr=alice@example.org"), "{text}");
        assert!(text.contains(&format!("OpenPGP: id={fingerprint}")), "{text}");
        assert_eq!(envelope["from"], ALICE);
    }

    // Bob's copy: encrypted; GnuPG decrypts it and verifies Alice's signature.
    let (_, to_bob) = messages.iter().find(|(envelope, _)| envelope["to"][0] == "bob@example.org").unwrap();
    let text = String::from_utf8_lossy(to_bob);
    assert!(text.contains("multipart/encrypted"), "{text}");
    assert!(!text.contains("secret plans") && !text.contains("Meet me"), "plaintext outside: {text}");
    let armored =
        &text[text.find("-----BEGIN PGP MESSAGE-----").unwrap()..text.find("-----END PGP MESSAGE-----").unwrap() + 25];
    let decrypted = gpg.run(&["--status-fd", "1", "--decrypt"], armored.as_bytes());
    let status = String::from_utf8_lossy(&decrypted.stdout);
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY"), "{}", text_of(&decrypted));
    assert!(status.contains("[GNUPG:] GOODSIG"), "{}", text_of(&decrypted));
    assert!(status.contains(&format!("[GNUPG:] VALIDSIG {fingerprint}")) || status.contains("VALIDSIG"), "{status}");
    assert!(status.contains("Subject: secret plans"), "the real subject is inside: {status}");
    assert!(status.contains("Meet me at noon."), "{status}");

    // Carol's copy: signed; GnuPG verifies the signature over the first part.
    let (envelope, to_carol) = messages.iter().find(|(envelope, _)| envelope["to"][0] == "carol@example.net").unwrap();
    assert_eq!(envelope["to"], serde_json::json!(["carol@example.net", "dave@example.net"]));
    let text = String::from_utf8_lossy(to_carol);
    assert!(text.contains("multipart/signed"), "{text}");
    let parts = parts(to_carol);
    assert_eq!(parts.len(), 2, "{text}");
    let signed = gpg.file("signed.eml", &parts[0]);
    let signature_part = String::from_utf8_lossy(&parts[1]).into_owned();
    let signature = &signature_part[signature_part.find("-----BEGIN PGP SIGNATURE-----").unwrap()..];
    let signature = gpg.file("signature.asc", signature.as_bytes());
    let verified =
        gpg.run(&["--status-fd", "1", "--verify", signature.to_str().unwrap(), signed.to_str().unwrap()], b"");
    let status = String::from_utf8_lossy(&verified.stdout);
    assert!(status.contains("[GNUPG:] GOODSIG"), "{}", text_of(&verified));
    assert!(status.contains("[GNUPG:] VALIDSIG"), "{status}");
}

fn text_of(output: &Output) -> String {
    text(output)
}

#[test]
fn swaks_submits_with_auth_login_over_starttls_and_the_queue_empties() {
    let stack = stack(&[]);
    let output = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", stack.smtp_port), "--tls", "--auth", "LOGIN"])
        .args(["--auth-user", ALICE, "--auth-password", &stack.token, "--from", ALICE, "--to", "carol@example.net"])
        .args(["--header", "Subject: via swaks", "--body", "hello from swaks"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("250 2.0.0"), "{}", text(&output));
    stack.wait(1);
    let (envelope, message) = &received(&stack.relay_dir)[0];
    assert_eq!(envelope["to"][0], "carol@example.net");
    assert!(String::from_utf8_lossy(message).contains("multipart/signed"));
    let wrong = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", stack.smtp_port), "--auth", "PLAIN"])
        .args(["--auth-user", ALICE, "--auth-password", "nope", "--from", ALICE, "--to", "carol@example.net"])
        .output()
        .unwrap();
    assert!(text(&wrong).contains("535"), "{}", text(&wrong));
}

#[test]
fn encrypted_only_refuses_a_recipient_without_a_key_at_rcpt() {
    let stack = stack(&["--encrypted-only"]);
    let token = &stack.token;
    let sent = smtplib(
        stack.smtp_port,
        &format!(
            r#"
s = smtplib.SMTP("127.0.0.1", port)
s.login("{ALICE}", "{token}")
try:
    s.sendmail("{ALICE}", ["carol@example.net"], b"Subject: x\r\n\r\nx\r\n")
    sys.exit("a recipient without a key was accepted")
except smtplib.SMTPRecipientsRefused as error:
    code, reply = error.recipients["carol@example.net"]
    assert code == 550 and b"5.7.1" in reply, (code, reply)
s.quit()
"#
        ),
    );
    assert!(sent.status.success(), "{}", text(&sent));
}
