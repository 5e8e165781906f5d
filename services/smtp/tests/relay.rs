//! The SMTP gateway through the whole stack, with peers this project did not
//! write: Python's smtplib and swaks submit, aiosmtpd is the relay, GnuPG
//! decrypts and verifies what arrives.
#![allow(clippy::disallowed_methods)] // tests read what the code under test wrote with mail-parser itself
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use bitmask_testkit::gpg::Gpg;
use bitmask_testkit::{KillOnDrop, World, free_port, text, wait_until};

const ALICE: &str = "alice@example.org";

/// aiosmtpd saving what it accepts into `dir` (see relay.py for `args`);
/// returns its port.
fn relay(dir: &Path, args: &[&str]) -> (KillOnDrop, u16) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/relay.py");
    let python = bitmask_testkit::workspace_root().join(".venv/bin/python");
    let mut child = Command::new(python)
        .arg(script)
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
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

struct Stack {
    world: World,
    _daemon: KillOnDrop,
    relay: Option<KillOnDrop>,
    relay_dir: PathBuf,
    relay_port: u16,
    smtp_port: u16,
    token: String,
}

/// How the test stack is set up.
#[derive(Default)]
struct Options<'a> {
    /// More `bitmaskctl account add` arguments.
    account: &'a [&'a str],
    /// Arguments of relay.py.
    relay: &'a [&'a str],
    /// The relay is not started (its port is kept free for later).
    no_relay: bool,
    /// `--relay-tls` (default none).
    relay_tls: &'a str,
    /// The relay's host name (default 127.0.0.1).
    relay_host: &'a str,
}

fn stack(extra: &[&str]) -> Stack {
    stack_with(Options { account: extra, ..Options::default() })
}

fn stack_with(options: Options) -> Stack {
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
    let (relay, relay_port) = if options.no_relay {
        (None, free_port())
    } else {
        let (relay, port) = relay(&relay_dir, options.relay);
        (Some(relay), port)
    };
    let smtp_port = free_port().to_string();
    let imap_port = free_port().to_string();
    let relay_host = if options.relay_host.is_empty() { "127.0.0.1" } else { options.relay_host };
    let relay_address = format!("{relay_host}:{relay_port}");
    let relay_tls = if options.relay_tls.is_empty() { "none" } else { options.relay_tls };
    let mut add = vec!["account", "add", ALICE, "--imap-port", &imap_port, "--smtp-port", &smtp_port];
    add.extend_from_slice(&["--relay", &relay_address, "--relay-tls", relay_tls]);
    add.extend_from_slice(options.account);
    world.ctl_json(&add);
    let passphrase = world.path().join("passphrase");
    std::fs::write(&passphrase, "pass\n").unwrap();
    world.ctl_json(&["account", "start", ALICE, "--passphrase-file", passphrase.to_str().unwrap()]);
    let smtp_port: u16 = smtp_port.parse().unwrap();
    wait_until(Duration::from_secs(10), "the SMTP port accepts connections", || {
        std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok()
    });
    let token = world.ctl_json(&["mail", "token", ALICE])["token"].as_str().unwrap().to_owned();
    Stack { world, _daemon: daemon, relay, relay_dir, relay_port, smtp_port, token }
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

impl Stack {
    /// `bitmaskctl --json mail queue ALICE ARGS`.
    fn queue(&self, args: &[&str]) -> Vec<serde_json::Value> {
        self.world.ctl_json(&[&["mail", "queue", ALICE], args].concat()).as_array().unwrap().clone()
    }

    fn submit(&self, script: &str) {
        let token = &self.token;
        let program =
            format!("s = smtplib.SMTP('127.0.0.1', port)\ns.login('{ALICE}', '{token}')\n{script}\ns.quit()\n");
        let sent = smtplib(self.smtp_port, &program);
        assert!(sent.status.success(), "{}", text(&sent));
    }
}

#[test]
fn swaks_and_smtplib_log_in_with_plain_and_login_with_and_without_starttls() {
    let stack = stack(&[]);
    let server = format!("127.0.0.1:{}", stack.smtp_port);
    for mechanism in ["PLAIN", "LOGIN"] {
        for tls in [false, true] {
            let subject = format!("Subject: swaks {mechanism} tls={tls}");
            let mut swaks = Command::new("swaks");
            swaks.args([
                "--server",
                &server,
                "--auth",
                mechanism,
                "--auth-user",
                ALICE,
                "--auth-password",
                &stack.token,
            ]);
            swaks.args(["--from", ALICE, "--to", "carol@example.net", "--header", &subject, "--body", "hi"]);
            if tls {
                swaks.arg("--tls");
            }
            let output = swaks.output().unwrap();
            assert!(output.status.success() && text(&output).contains("250 2.0.0"), "{}", text(&output));
            let mut wrong = Command::new("swaks");
            wrong.args(["--server", &server, "--auth", mechanism, "--auth-user", ALICE, "--auth-password", "wrong"]);
            wrong.args(["--from", ALICE, "--to", "carol@example.net"]);
            if tls {
                wrong.arg("--tls");
            }
            let output = wrong.output().unwrap();
            assert!(text(&output).contains("535 5.7.8"), "{}", text(&output));
        }
    }
    let token = &stack.token;
    let sent = smtplib(
        stack.smtp_port,
        &format!(
            r#"
import ssl
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
for mechanism in ("PLAIN", "LOGIN"):
    for tls in (False, True):
        for password, good in (("wrong", False), ("{token}", True)):
            s = smtplib.SMTP("127.0.0.1", port)
            if tls:
                s.starttls(context=context)
            s.ehlo()
            s.user, s.password = "{ALICE}", password
            try:
                s.auth(mechanism, s.auth_plain if mechanism == "PLAIN" else s.auth_login)
                assert good, "a wrong token was accepted"
                s.sendmail("{ALICE}", ["carol@example.net"], f"Subject: smtplib {{mechanism}} tls={{tls}}\r\n\r\nhi\r\n".encode())
            except smtplib.SMTPAuthenticationError as error:
                assert not good and error.smtp_code == 535, error
            s.quit()
"#
        ),
    );
    assert!(sent.status.success(), "{}", text(&sent));
    stack.wait(8);
    let subjects: Vec<String> = received(&stack.relay_dir)
        .iter()
        .map(|(_, message)| {
            let text = String::from_utf8_lossy(message);
            text.lines().find(|line| line.starts_with("Subject: ")).unwrap_or_default().to_owned()
        })
        .collect();
    for client in ["swaks", "smtplib"] {
        for mechanism in ["PLAIN", "LOGIN"] {
            for tls in ["false", "true"] {
                let tls = if client == "smtplib" { if tls == "true" { "True" } else { "False" } } else { tls };
                let wanted = format!("Subject: {client} {mechanism} tls={tls}");
                assert!(subjects.contains(&wanted), "{wanted} missing from {subjects:?}");
            }
        }
    }
}

#[test]
fn a_hundred_recipients_each_get_the_right_form() {
    let stack = stack(&[]);
    // Ten recipients with keys (one GnuPG home holds all their secret keys).
    let gpg = Gpg::new();
    let keyed: Vec<String> = (0..10).map(|n| format!("keyed{n}@example.org")).collect();
    for address in &keyed {
        let made = gpg.run(&["--quick-gen-key", address, "default", "default", "never"], b"");
        assert!(made.status.success(), "{}", text(&made));
    }
    let public = gpg.run(&["--armor", "--export"], b"").stdout;
    let file = stack.world.path().join("keyed.asc");
    std::fs::write(&file, public).unwrap();
    let imported = stack.world.ctl(&["keys", "import", ALICE, file.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", text(&imported));
    let alice = stack.world.ctl(&["keys", "export", ALICE]);
    assert!(gpg.run(&["--import"], &alice.stdout).status.success());
    // Ninety without; two of the keyed ones are Bcc (in no header).
    let plain: Vec<String> = (0..90).map(|n| format!("plain{n}@example.net")).collect();
    let visible: Vec<&String> = keyed[..8].iter().chain(&plain).collect();
    let all: Vec<&String> = keyed.iter().chain(&plain).collect();
    let to = visible.iter().map(|address| address.as_str()).collect::<Vec<_>>().join(",\\r\\n ");
    let envelope = all.iter().map(|address| format!("'{address}'")).collect::<Vec<_>>().join(", ");
    stack.submit(&format!(
        "refused = s.sendmail('{ALICE}', [{envelope}], b'From: {ALICE}\\r\\nTo: {to}\\r\\nSubject: to a hundred\\r\\n\\r\\nHello all.\\r\\n')\nassert refused == {{}}, refused"
    ));
    // One encrypted copy for the eight named keyed recipients, one each for
    // the two Bcc ones, one signed copy for the ninety.
    stack.wait(4);
    let messages = received(&stack.relay_dir);
    assert_eq!(messages.len(), 4);
    let mut reached: Vec<String> = Vec::new();
    for (envelope, message) in &messages {
        let to: Vec<String> =
            envelope["to"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
        let text = String::from_utf8_lossy(message);
        assert!(!text.contains("keyed8@") && !text.contains("keyed9@"), "a Bcc recipient is named: {text}");
        if to.iter().all(|address| address.starts_with("keyed")) {
            assert!(text.contains("multipart/encrypted") && !text.contains("Hello all"), "{text}");
            let armored = &text[text.find("-----BEGIN PGP MESSAGE-----").unwrap()
                ..text.find("-----END PGP MESSAGE-----").unwrap() + 25];
            let decrypted = gpg.run(&["--status-fd", "1", "--decrypt"], armored.as_bytes());
            let status = String::from_utf8_lossy(&decrypted.stdout);
            assert!(status.contains("[GNUPG:] DECRYPTION_OKAY") && status.contains("[GNUPG:] GOODSIG"), "{status}");
            assert!(status.contains("Hello all."), "{status}");
            // A Bcc copy is encrypted to that recipient (and the sender) only.
            let keys = status.matches("[GNUPG:] ENC_TO ").count();
            assert_eq!(keys, if to.len() == 1 { 2 } else { 9 }, "{status}");
        } else {
            assert!(to.iter().all(|address| address.starts_with("plain")), "{to:?}");
            assert_eq!(to.len(), 90);
            assert!(text.contains("multipart/signed") && text.contains("Hello all."), "{text}");
        }
        reached.extend(to);
    }
    reached.sort();
    let mut wanted: Vec<String> = all.iter().map(|address| address.to_string()).collect();
    wanted.sort();
    assert_eq!(reached, wanted, "each recipient exactly once");
}

#[test]
fn a_25_mb_attachment_goes_through_encrypted() {
    let stack = stack(&[]);
    let gpg = bob(&stack);
    stack.submit(&format!(
        r#"
import email.message, hashlib, random
data = random.Random(7).randbytes(25 * 1024 * 1024)
message = email.message.EmailMessage()
message["From"], message["To"], message["Subject"] = "{ALICE}", "bob@example.org", "big"
message.set_content("The file is attached.")
message.add_attachment(data, maintype="application", subtype="octet-stream", filename="big.bin")
raw = message.as_bytes().replace(b"\n", b"\r\n")
print(len(raw), hashlib.sha256(data).hexdigest())
s.sendmail("{ALICE}", ["bob@example.org"], raw)
"#
    ));
    stack.wait(1);
    let (_, message) = &received(&stack.relay_dir)[0];
    let text = String::from_utf8_lossy(message);
    let armored =
        &text[text.find("-----BEGIN PGP MESSAGE-----").unwrap()..text.find("-----END PGP MESSAGE-----").unwrap() + 25];
    let decrypted = gpg.run(&["--status-fd", "2", "--decrypt"], armored.as_bytes());
    let status = String::from_utf8_lossy(&decrypted.stderr);
    assert!(status.contains("[GNUPG:] DECRYPTION_OKAY") && status.contains("[GNUPG:] GOODSIG"), "{status}");
    // The attachment inside is the one sent, byte for byte.
    let inner = mail_parser::MessageParser::default().parse(&decrypted.stdout).unwrap();
    let attachment =
        inner.attachments().find(|part| mail_parser::MimeHeaders::attachment_name(*part) == Some("big.bin")).unwrap();
    assert_eq!(attachment.contents().len(), 25 * 1024 * 1024);
    let expected = Command::new("python3")
        .args(["-c", "import random,sys; sys.stdout.buffer.write(random.Random(7).randbytes(25*1024*1024))"])
        .output()
        .unwrap()
        .stdout;
    assert!(attachment.contents() == expected.as_slice(), "the attachment changed on the way");
}

#[test]
fn killed_between_250_and_the_relay_the_message_is_relayed_exactly_once() {
    let mut stack = stack_with(Options { no_relay: true, ..Options::default() });
    stack.submit(&format!("s.sendmail('{ALICE}', ['carol@example.net'], b'Subject: once\\r\\n\\r\\nonly once\\r\\n')"));
    // Queued (the relay is down, so it waits there); the gateway dies hard.
    wait_until(Duration::from_secs(20), "a delivery attempt failed", || {
        stack.queue(&[]).first().is_some_and(|entry| entry["attempts"].as_u64() >= Some(1))
    });
    let old = stack.world.service_status(ALICE, "smtp")["pid"].as_u64().unwrap();
    assert_eq!(unsafe_kill(old as i32), 0);
    let (relay, _) = relay(&stack.relay_dir, &["--port", &stack.relay_port.to_string()]);
    stack.relay = Some(relay);
    wait_until(Duration::from_secs(20), "bitmaskd restarted the gateway", || {
        let status = stack.world.service_status(ALICE, "smtp");
        status["state"] == "serving" && status["pid"].as_u64().is_some_and(|pid| pid != old)
    });
    let queue = stack.queue(&["--flush"]);
    assert_eq!(queue.len(), 1, "the message survived: {queue:?}");
    stack.wait(1);
    wait_until(Duration::from_secs(20), "the queue is empty", || stack.queue(&[]).is_empty());
    // Nothing is left to send a second time, even when asked to.
    stack.queue(&["--flush"]);
    let messages = received(&stack.relay_dir);
    assert_eq!(messages.len(), 1, "relayed exactly once");
    assert!(String::from_utf8_lossy(&messages[0].1).contains("only once"));
}

fn unsafe_kill(pid: i32) -> i32 {
    Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().code().unwrap_or(1)
}

#[test]
fn bad_input_gets_the_right_replies_and_the_gateway_goes_on() {
    let stack = stack(&[]);
    let token = &stack.token;
    let sent = smtplib(
        stack.smtp_port,
        &format!(
            r#"
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo()
assert s.docmd("FROB")[0] == 500
assert s.docmd("MAIL FROM:<{ALICE}>")[0] == 530, "MAIL before AUTH"
s.login("{ALICE}", "{token}")
assert s.docmd("RCPT TO:<carol@example.net>")[0] == 503, "RCPT before MAIL"
assert s.docmd("DATA")[0] == 503, "DATA before MAIL"
assert s.docmd("MAIL FROM:<mallory@example.org>")[0] == 553
assert s.docmd("MAIL FROM:<not an address>")[0] == 501
assert s.docmd("MAIL FROM:<{ALICE}> SIZE=999999999")[0] == 552
assert s.docmd("MAIL FROM:<{ALICE}>")[0] == 250
assert s.docmd("RCPT TO:<carol@@example.net>")[0] == 501
assert s.docmd("RCPT TO:carol")[0] == 501
assert s.docmd("DATA")[0] in (503, 554), "DATA without a recipient"
assert s.docmd("RCPT TO:<carol@example.net>")[0] == 250
assert s.docmd("RSET")[0] == 250
# Larger than the limit, without SIZE announced: refused after the data.
big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (41 * 1024)
try:
    s.sendmail("{ALICE}", ["carol@example.net"], big, mail_options=[])
    sys.exit("an oversized message was accepted")
except smtplib.SMTPSenderRefused as error:
    assert error.smtp_code == 552, error
except smtplib.SMTPDataError as error:
    assert error.smtp_code == 552, error
s.quit()
# The gateway goes on: a good message after all that.
s = smtplib.SMTP("127.0.0.1", port)
s.login("{ALICE}", "{token}")
s.sendmail("{ALICE}", ["carol@example.net"], b"Subject: after\r\n\r\nstill here\r\n")
s.quit()
"#
        ),
    );
    assert!(sent.status.success(), "{}", text(&sent));
    stack.wait(1);
    let messages = received(&stack.relay_dir);
    assert_eq!(messages.len(), 1, "only the good message was relayed");
    assert!(String::from_utf8_lossy(&messages[0].1).contains("still here"));
}

#[test]
fn the_relay_gets_the_client_certificate_and_one_that_refuses_it_loses_nothing() {
    let server = bitmask_testkit::https::TestCertificates::new(&["localhost"]);
    let client = bitmask_testkit::https::TestCertificates::new(&["alice.example.org"]);
    let stranger = bitmask_testkit::https::TestCertificates::new(&["alice.example.org"]);
    for (name, certificates, accepted) in [("good", &client, true), ("refused", &stranger, false)] {
        let dir = tempfile::Builder::new().prefix("tls").tempdir_in("/tmp").unwrap();
        let file = |file: &str, data: &str| {
            let path = dir.path().join(file);
            std::fs::write(&path, data).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (server_cert, server_key) =
            (file("server.pem", &server.certificate_pem), file("server.key", &server.key_pem));
        let server_ca = file("server-ca.pem", &server.ca_pem);
        let client_ca = file("client-ca.pem", &client.ca_pem);
        let (cert, key) =
            (file("client.pem", &certificates.certificate_pem), file("client.key", &certificates.key_pem));
        let stack = stack_with(Options {
            relay: &["--tls", &server_cert, &server_key, "--client-ca", &client_ca],
            relay_tls: "starttls",
            relay_host: "localhost",
            account: &["--relay-ca", &server_ca, "--relay-client-cert", &cert, "--relay-client-key", &key],
            ..Options::default()
        });
        stack.submit(&format!("s.sendmail('{ALICE}', ['carol@example.net'], b'Subject: {name}\\r\\n\\r\\nx\\r\\n')"));
        if accepted {
            stack.wait(1);
        } else {
            wait_until(Duration::from_secs(20), "a delivery attempt failed", || {
                stack.queue(&[]).first().is_some_and(|entry| entry["attempts"].as_u64() >= Some(1))
            });
            let queue = stack.queue(&[]);
            assert_eq!(queue.len(), 1, "kept: {queue:?}");
            assert_eq!(queue[0]["state"], "deferred", "{queue:?}");
            assert!(!queue[0]["last_error"].as_str().unwrap().is_empty(), "{queue:?}");
            assert!(received(&stack.relay_dir).is_empty());
            let status = stack.world.service_status(ALICE, "smtp");
            assert_eq!(status["state"], "serving");
        }
    }
}

#[test]
fn smuggling_through_the_gateway_sends_nothing_smuggled() {
    let stack = stack(&[]);
    let token = &stack.token;
    // Raw socket: smtplib would escape what we want to send as it is.
    let sent = smtplib(
        stack.smtp_port,
        &format!(
            r#"
import base64, socket
# \x00, not \0: a token starting with a digit 2-7 would make "\0" an octal escape.
auth = base64.b64encode(b"\x00{ALICE}\x00{token}").decode()
for payload in (b"\n.\r\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r"):
    c = socket.create_connection(("127.0.0.1", port))
    f = c.makefile("rb")
    def reply():
        lines = []
        while True:
            line = f.readline()
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)
    reply()
    c.sendall(b"EHLO test\r\n"); reply()
    c.sendall(f"AUTH PLAIN {{auth}}\r\n".encode()); answer = reply(); assert answer.startswith(b"235"), (payload, answer)
    c.sendall(b"MAIL FROM:<{ALICE}>\r\n"); reply()
    c.sendall(b"RCPT TO:<carol@example.net>\r\n"); reply()
    c.sendall(b"DATA\r\n"); assert reply().startswith(b"354")
    c.sendall(b"Subject: legit\r\n\r\nlegitimate" + payload + b"MAIL FROM:<{ALICE}>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
    answer = reply()
    assert answer.startswith(b"550 5.5.2"), (payload, answer)
    c.sendall(b"NOOP\r\n"); assert reply().startswith(b"250"), payload
    c.close()
s = smtplib.SMTP("127.0.0.1", port)
s.login("{ALICE}", "{token}")
s.sendmail("{ALICE}", ["carol@example.net"], b"Subject: good\r\n\r\nfine\r\n")
s.quit()
"#
        ),
    );
    assert!(sent.status.success(), "{}", text(&sent));
    stack.wait(1);
    let messages = received(&stack.relay_dir);
    assert_eq!(messages.len(), 1, "only the good message left");
    assert_eq!(messages[0].0["to"], serde_json::json!(["carol@example.net"]));
    assert!(!String::from_utf8_lossy(&messages[0].1).contains("smuggled"));
}

#[test]
fn a_refused_recipient_is_reported_in_inbox_with_the_original_attached() {
    let stack = stack(&[]);
    stack.submit(&format!(
        "s.sendmail('{ALICE}', ['rejectme@example.net', 'carol@example.net'], b'Subject: half of it\\r\\n\\r\\nbody\\r\\n')"
    ));
    stack.wait(1);
    assert_eq!(received(&stack.relay_dir)[0].0["to"], serde_json::json!(["carol@example.net"]));
    // The report is filed in INBOX; the queue forgets the message.
    wait_until(Duration::from_secs(20), "the queue is empty", || stack.queue(&[]).is_empty());
    let status = stack.world.ctl_json(&["mail", "status", ALICE]);
    let inbox = status["mailboxes"].as_array().unwrap().iter().find(|mailbox| mailbox["name"] == "INBOX").unwrap();
    assert_eq!(inbox["messages"], 1, "{status}");
    let imap_port = stack.world.ctl_json(&["account", "list"])[0]["imap_port"].as_u64().unwrap();
    let token = &stack.token;
    let fetched = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import imaplib\nm = imaplib.IMAP4('127.0.0.1', {imap_port})\nm.login('{ALICE}', '{token}')\nm.select('INBOX')\n\
                 print(m.fetch('1', '(BODY[])')[1][0][1].decode())"
            ),
        ])
        .output()
        .unwrap();
    let report = text(&fetched);
    assert!(report.contains("Subject: Undelivered Mail Returned to Sender: half of it"), "{report}");
    assert!(report.contains("rejectme@example.net: permanent error (550): 5.1.1 no such user here"), "{report}");
    assert!(report.contains("Content-Type: message/rfc822") && report.contains("\r\nbody\r\n"), "{report}");
    assert!(!report.contains("carol@example.net:"), "carol got it: {report}");
}
