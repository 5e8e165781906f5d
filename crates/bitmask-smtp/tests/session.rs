//! Conversations with the SMTP submission session, read like the protocol:
//! the client's bytes go in, the server's replies come out as `S:` lines and
//! the events for the service as `E:` lines. Every conversation is replayed
//! with the input whole, split at every byte, and in chunks of 1, 2, 3 and 7
//! bytes; all must give the same actions.

use bitmask_smtp::session::{Action, Config, Password, Reply, Session};
use data_encoding::BASE64;

// ---- the harness ----

/// The test service: one account (alice / secret); senders at
/// blocked.example and recipients at nokey.example are refused; messages
/// with an `X-Fail-Queue` header cannot be queued; everything else is
/// queued as Q1.
fn decide(session: &mut Session, action: &Action) -> Vec<Action> {
    match action {
        Action::Authenticate { user, .. } if user == "unavailable" => session.auth_unavailable(),
        Action::Authenticate { user, password, .. } => {
            session.auth_result(user == "alice" && password.expose() == "secret")
        }
        Action::MailFrom { address, .. } => {
            if address.ends_with("@blocked.example") {
                session.mail_from_result(Err(Reply::new(550, [5, 7, 1], "Sender not allowed")))
            } else {
                session.mail_from_result(Ok(()))
            }
        }
        Action::Rcpt { address } => {
            if address.ends_with("@nokey.example") {
                session.rcpt_result(Err(Reply::new(550, [5, 7, 1], "No key for recipient, policy is encrypted-only")))
            } else {
                session.rcpt_result(Ok(()))
            }
        }
        Action::Message { data, .. } => {
            if contains(data, b"X-Fail-Queue") {
                session.message_result(Err(Reply::new(451, [4, 3, 0], "Queue unavailable")))
            } else {
                session.message_result(Ok("Q1".to_owned()))
            }
        }
        Action::Send(_) | Action::StartTls | Action::Close => Vec::new(),
    }
}

fn needs_decision(action: &Action) -> bool {
    matches!(
        action,
        Action::Authenticate { .. } | Action::MailFrom { .. } | Action::Rcpt { .. } | Action::Message { .. }
    )
}

/// Answers every decision at once, logging all actions in order.
fn drive(session: &mut Session, mut actions: Vec<Action>, log: &mut Vec<Action>) {
    while !actions.is_empty() {
        let count = actions.len();
        let mut next = Vec::new();
        for (index, action) in actions.into_iter().enumerate() {
            if needs_decision(&action) {
                assert_eq!(index + 1, count, "a decision must be the last action");
                next = decide(session, &action);
            }
            log.push(action);
        }
        actions = next;
    }
}

#[derive(Debug, Clone, Copy)]
enum Split {
    Whole,
    At(usize),
    Chunks(usize),
}

fn pieces(segment: &[u8], split: Split) -> Vec<&[u8]> {
    match split {
        Split::Whole => vec![segment],
        Split::At(at) if at > 0 && at < segment.len() => {
            let (head, tail) = segment.split_at(at);
            vec![head, tail]
        }
        Split::At(_) => vec![segment],
        Split::Chunks(size) => segment.chunks(size).collect(),
    }
}

/// Runs a client script: segments in plain text, then each further segment
/// after a TLS handshake (the bytes of a segment all reach the session before
/// the handshake completes, as they would from a socket buffer).
fn run(config: &Config, segments: &[Vec<u8>], split: Split) -> Vec<Action> {
    let mut session = Session::new(config.clone());
    let mut log = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        if index > 0 {
            session.tls_started();
        }
        for piece in pieces(segment, split) {
            let actions = session.feed(piece);
            drive(&mut session, actions, &mut log);
        }
    }
    log
}

/// Runs the script split every way and checks all runs agree; returns the
/// transcript.
fn converse_segments(config: &Config, segments: &[Vec<u8>]) -> String {
    let whole = run(config, segments, Split::Whole);
    let longest = segments.iter().map(Vec::len).max().unwrap_or(0);
    for at in 1..longest {
        let split = run(config, segments, Split::At(at));
        assert_eq!(render(&whole), render(&split), "input split at byte {at} gives other actions");
        assert_eq!(whole, split);
    }
    for size in [1, 2, 3, 7] {
        let split = run(config, segments, Split::Chunks(size));
        assert_eq!(render(&whole), render(&split), "input in chunks of {size} gives other actions");
        assert_eq!(whole, split);
    }
    render(&whole)
}

fn converse(config: &Config, client: &[u8]) -> String {
    converse_segments(config, &[client.to_vec()])
}

fn render(actions: &[Action]) -> String {
    let mut out = String::new();
    for action in actions {
        match action {
            Action::Send(bytes) => {
                let text = String::from_utf8(bytes.clone()).expect("replies are UTF-8");
                let body = text.strip_suffix("\r\n").expect("a reply ends with CRLF");
                for line in body.split("\r\n") {
                    assert!(!line.contains(['\r', '\n']), "bare CR/LF in a reply");
                    // Trailing spaces ("334 ") are not shown.
                    out.push_str(&format!("S: {}\n", line.trim_end()));
                }
            }
            Action::Authenticate { mechanism, user, password } => {
                out.push_str(&format!("E: AUTH {mechanism:?} {user} {}\n", password.expose()))
            }
            Action::MailFrom { address, size, body, smtputf8 } => {
                out.push_str(&format!("E: MAIL <{address}> size={size:?} body={body:?} smtputf8={smtputf8}\n"))
            }
            Action::Rcpt { address } => out.push_str(&format!("E: RCPT <{address}>\n")),
            Action::Message { from, recipients, data, .. } => out.push_str(&format!(
                "E: MESSAGE <{from}> {} {:?}\n",
                recipients.iter().map(|recipient| format!("<{recipient}>")).collect::<Vec<_>>().join(","),
                String::from_utf8_lossy(data)
            )),
            Action::StartTls => out.push_str("E: STARTTLS\n"),
            Action::Close => out.push_str("E: CLOSE\n"),
        }
    }
    out
}

/// Compares a transcript with an indented expectation.
#[track_caller]
fn assert_transcript(actual: &str, expected: &str) {
    let expected: String =
        expected.lines().map(str::trim).filter(|line| !line.is_empty()).map(|line| format!("{line}\n")).collect();
    assert_eq!(actual, expected, "\nactual:\n{actual}\nexpected:\n{expected}");
}

/// Client lines, each ended with CRLF.
fn lines(lines: &[&str]) -> Vec<u8> {
    lines.iter().flat_map(|line| [line.as_bytes(), b"\r\n"].concat()).collect()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A BDAT command with its chunk.
fn bdat(chunk: &[u8], last: bool) -> Vec<u8> {
    let last = if last { " LAST" } else { "" };
    cat(&[format!("BDAT {}{last}\r\n", chunk.len()).as_bytes(), chunk])
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

fn config() -> Config {
    let mut config = Config::new("mx.test");
    config.max_message_size = 1000;
    config.max_recipients = 3;
    config.max_line = 512;
    config
}

fn open_config() -> Config {
    let mut config = config();
    config.auth_required = false;
    config
}

fn plain(authzid: &str, user: &str, password: &str) -> String {
    BASE64.encode(format!("{authzid}\0{user}\0{password}").as_bytes())
}

fn b64(text: &str) -> String {
    BASE64.encode(text.as_bytes())
}

/// EHLO and a good AUTH PLAIN, and their transcript.
fn login() -> Vec<u8> {
    lines(&["EHLO client.test", &format!("AUTH PLAIN {}", plain("", "alice", "secret"))])
}

const EHLO_REPLY: &str = "
    S: 250-mx.test
    S: 250-SMTPUTF8
    S: 250-SIZE 1000
    S: 250-PIPELINING
    S: 250-ENHANCEDSTATUSCODES
    S: 250-CHUNKING
    S: 250-AUTH PLAIN LOGIN
    S: 250 8BITMIME
";

fn login_transcript() -> String {
    format!("{EHLO_REPLY}\nE: AUTH Plain alice secret\nS: 235 2.7.0 Authentication successful\n")
}

// ---- greeting, EHLO, HELO ----

#[test]
fn greeting() {
    let session = Session::new(config());
    assert_eq!(session.greeting(), b"220 mx.test ESMTP bitmask\r\n");
}

#[test]
fn ehlo_lists_the_extensions() {
    let transcript = converse(&config(), &lines(&["EHLO client.test", "NOOP"]));
    assert_transcript(&transcript, &format!("{EHLO_REPLY}\nS: 250 2.0.0 Ok"));
}

#[test]
fn ehlo_offers_starttls_when_available() {
    let mut config = config();
    config.starttls_available = true;
    let transcript = converse(&config, &lines(&["EHLO client.test"]));
    assert_transcript(
        &transcript,
        "
        S: 250-mx.test
        S: 250-STARTTLS
        S: 250-SMTPUTF8
        S: 250-SIZE 1000
        S: 250-PIPELINING
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-AUTH PLAIN LOGIN
        S: 250 8BITMIME
        ",
    );
}

#[test]
fn ehlo_needs_a_domain() {
    let transcript = converse(&config(), &lines(&["EHLO"]));
    assert_transcript(&transcript, "S: 501 Syntax: EHLO domain");
}

#[test]
fn helo_gives_no_extensions_and_no_enhanced_codes() {
    let transcript = converse(
        &open_config(),
        &lines(&[
            "HELO client.test",
            "MAIL FROM:<alice@example.org> SIZE=10",
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "Hi",
            ".",
            "QUIT",
        ]),
    );
    assert_transcript(
        &transcript,
        r#"
        S: 250 mx.test
        S: 555 Unsupported MAIL parameter
        E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false
        S: 250 Sender OK
        E: RCPT <bob@example.org>
        S: 250 Recipient OK
        S: 354 End data with <CR><LF>.<CR><LF>
        E: MESSAGE <alice@example.org> <bob@example.org> "Hi\r\n"
        S: 250 Ok: queued as Q1
        S: 221 Bye
        E: CLOSE
        "#,
    );
}

// ---- AUTH ----

#[test]
fn auth_plain_with_initial_response() {
    let transcript = converse(&config(), &login());
    assert_transcript(&transcript, &login_transcript());
}

#[test]
fn auth_plain_after_an_empty_challenge() {
    let transcript =
        converse(&config(), &lines(&["EHLO client.test", "AUTH PLAIN", &plain("alice", "alice", "secret")]));
    assert_transcript(
        &transcript,
        &format!(
            "{EHLO_REPLY}
            S: 334
            E: AUTH Plain alice secret
            S: 235 2.7.0 Authentication successful"
        ),
    );
}

#[test]
fn auth_plain_refused_by_the_service() {
    let transcript = converse(
        &config(),
        &lines(&[
            "EHLO client.test",
            &format!("AUTH PLAIN {}", plain("", "alice", "wrong")),
            "MAIL FROM:<alice@example.org>",
        ]),
    );
    assert_transcript(
        &transcript,
        &format!(
            "{EHLO_REPLY}
            E: AUTH Plain alice wrong
            S: 535 5.7.8 Authentication credentials invalid
            S: 530 5.7.0 Authentication required"
        ),
    );
}

#[test]
fn auth_that_cannot_be_checked_now_is_a_temporary_failure() {
    let transcript = converse(
        &config(),
        &lines(&[
            "EHLO client.test",
            &format!("AUTH PLAIN {}", plain("", "unavailable", "secret")),
            &format!("AUTH PLAIN {}", plain("", "alice", "secret")),
        ]),
    );
    assert_transcript(
        &transcript,
        &format!(
            "{EHLO_REPLY}
            E: AUTH Plain unavailable secret
            S: 454 4.7.0 Temporary authentication failure, try again
            E: AUTH Plain alice secret
            S: 235 2.7.0 Authentication successful"
        ),
    );
}

#[test]
fn a_session_without_logins_neither_announces_nor_takes_auth() {
    let mut config = config();
    config.auth_offered = false;
    config.auth_required = false;
    let transcript = converse(
        &config,
        &lines(&[
            "EHLO client.test",
            &format!("AUTH PLAIN {}", plain("", "alice", "secret")),
            "MAIL FROM:<a@b.example>",
        ]),
    );
    assert!(!transcript.contains("250-AUTH"), "{transcript}");
    assert!(transcript.contains("S: 503 5.5.1 AUTH is not offered here\nE: MAIL"), "{transcript}");
    assert!(!transcript.contains("E: AUTH"), "{transcript}");
}

#[test]
fn auth_plain_for_another_identity_is_refused() {
    let transcript =
        converse(&config(), &lines(&["EHLO c", &format!("AUTH PLAIN {}", plain("bob", "alice", "secret"))]));
    assert!(transcript.ends_with("S: 535 5.7.8 Authentication credentials invalid\n"));
    assert!(!transcript.contains("E: AUTH"));
}

#[test]
fn auth_login() {
    let transcript = converse(&config(), &lines(&["EHLO client.test", "AUTH LOGIN", &b64("alice"), &b64("secret")]));
    assert_transcript(
        &transcript,
        &format!(
            "{EHLO_REPLY}
            S: 334 VXNlcm5hbWU6
            S: 334 UGFzc3dvcmQ6
            E: AUTH Login alice secret
            S: 235 2.7.0 Authentication successful"
        ),
    );
}

#[test]
fn auth_login_with_initial_response_refused() {
    let transcript = converse(&config(), &lines(&["EHLO c", &format!("AUTH LOGIN {}", b64("alice")), &b64("nope")]));
    assert!(
        transcript.ends_with(
            "S: 334 UGFzc3dvcmQ6\nE: AUTH Login alice nope\nS: 535 5.7.8 Authentication credentials invalid\n"
        )
    );
}

#[test]
fn auth_cancelled() {
    let transcript =
        converse(&config(), &lines(&["EHLO c", "AUTH PLAIN", "*", "AUTH LOGIN", &b64("alice"), "*", "NOOP"]));
    assert!(transcript.ends_with(
        "S: 334\nS: 501 5.7.0 Authentication cancelled\n\
         S: 334 VXNlcm5hbWU6\nS: 334 UGFzc3dvcmQ6\nS: 501 5.7.0 Authentication cancelled\n\
         S: 250 2.0.0 Ok\n"
    ));
}

#[test]
fn auth_errors() {
    let transcript = converse(
        &config(),
        &lines(&[
            "AUTH PLAIN",
            "EHLO c",
            "AUTH CRAM-MD5",
            "AUTH PLAIN !!!notbase64",
            "AUTH PLAIN =",
            &format!("AUTH PLAIN {}", plain("", "alice", "secret")),
            &format!("AUTH PLAIN {}", plain("", "alice", "secret")),
        ]),
    );
    assert_transcript(
        &transcript,
        &format!(
            "S: 503 Send EHLO first
            {EHLO_REPLY}
            S: 504 5.5.4 Unrecognized authentication type
            S: 501 5.5.2 Invalid base64 data
            S: 501 5.5.2 Invalid PLAIN response
            E: AUTH Plain alice secret
            S: 235 2.7.0 Authentication successful
            S: 503 5.5.1 Already authenticated"
        ),
    );
}

#[test]
fn auth_is_not_permitted_in_a_transaction() {
    let transcript = converse(
        &open_config(),
        &lines(&["EHLO c", "MAIL FROM:<a@example.org>", &format!("AUTH PLAIN {}", plain("", "alice", "secret"))]),
    );
    assert!(transcript.ends_with("S: 503 5.5.1 AUTH not permitted during a mail transaction\n"));
}

#[test]
fn password_is_redacted() {
    let password = Password::new("hunter2".to_owned());
    assert_eq!(format!("{password:?}"), "Password(<redacted>)");
    let mut session = Session::new(config());
    let actions = session.feed(&lines(&["EHLO c", &format!("AUTH PLAIN {}", plain("", "alice", "hunter2"))]));
    let debug = format!("{actions:?} {session:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains(&plain("", "alice", "hunter2")), "{debug}");
}

// ---- MAIL, RCPT ----

#[test]
fn authentication_required_before_mail() {
    let transcript =
        converse(&config(), &lines(&["EHLO c", "MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.org>"]));
    assert!(transcript.ends_with("S: 530 5.7.0 Authentication required\nS: 503 5.5.1 Need MAIL command\n"));
}

#[test]
fn mail_parameters() {
    let client = cat(&[
        &login(),
        &lines(&[
            "MAIL FROM:<alice@example.org> SIZE=1001",
            "MAIL FROM:<alice@example.org> BODY=BINARYMIME",
            "MAIL FROM:<alice@example.org> RET=FULL",
            "MAIL FROM:<alice@example.org> FOO=BAR",
            "MAIL FROM:<alice@example.org> SIZE=big",
            "MAIL FROM:<jörg@example.org>",
            "MAIL FROM:<alice@blocked.example>",
            "MAIL FROM:<jörg@example.org> SMTPUTF8 BODY=8BITMIME SIZE=1000",
            "MAIL FROM:<alice@example.org>",
            "RSET",
            "MAIL FROM:<> AUTH=<>",
        ]),
    ]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            "{}
            S: 552 5.3.4 Message size exceeds fixed maximum message size
            S: 555 5.5.4 Unsupported MAIL parameter
            S: 555 5.5.4 Unsupported MAIL parameter
            S: 555 5.5.4 Unsupported parameter FOO=BAR
            S: 501 5.5.4 Invalid SIZE parameter
            S: 553 5.6.7 Non-ASCII address requires SMTPUTF8
            E: MAIL <alice@blocked.example> size=None body=Unspecified smtputf8=false
            S: 550 5.7.1 Sender not allowed
            E: MAIL <jörg@example.org> size=Some(1000) body=EightBitMime smtputf8=true
            S: 250 2.1.0 Sender OK
            S: 503 5.5.1 Sender already specified
            S: 250 2.0.0 Ok
            E: MAIL <> size=None body=Unspecified smtputf8=false
            S: 250 2.1.0 Sender OK",
            login_transcript()
        ),
    );
}

#[test]
fn malformed_addresses() {
    let client = cat(&[
        &login(),
        &lines(&[
            "MAIL FROM:<alice@@example.org>",
            "MAIL FROM:<.alice@example.org>",
            "MAIL FROM:alice@example.org",
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob>",
            "RCPT TO:<bob@@example.org>",
            "RCPT TO:<>",
            "RCPT TO:<bob@exa mple.org>",
            "RCPT TO:<bøb@example.org>",
            "RCPT TO:<bob@example.org> NOTIFY=NEVER",
        ]),
    ]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            "{}
            S: 501 5.1.7 Bad sender address syntax
            S: 501 5.1.7 Bad sender address syntax
            S: 501 5.5.4 Syntax: MAIL FROM:<reverse-path> [parameters]
            E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false
            S: 250 2.1.0 Sender OK
            S: 501 5.1.3 Bad recipient address syntax
            S: 501 5.1.3 Bad recipient address syntax
            S: 501 5.1.3 Bad recipient address syntax
            S: 501 5.5.4 Syntax: RCPT TO:<forward-path> [parameters]
            S: 553 5.6.7 Non-ASCII address requires SMTPUTF8
            S: 555 5.5.4 Unsupported RCPT parameter",
            login_transcript()
        ),
    );
}

#[test]
fn recipients_decided_by_the_service_and_capped() {
    let client = cat(&[
        &login(),
        &lines(&[
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<carol@nokey.example>",
            "RCPT TO:<bob@example.org>",
            "RCPT TO:<dave@example.org>",
            "RCPT TO:<erin@example.org>",
            "RCPT TO:<frank@example.org>",
            "DATA",
            "Hi",
            ".",
        ]),
    ]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            r#"{}
            E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false
            S: 250 2.1.0 Sender OK
            E: RCPT <carol@nokey.example>
            S: 550 5.7.1 No key for recipient, policy is encrypted-only
            E: RCPT <bob@example.org>
            S: 250 2.1.5 Recipient OK
            E: RCPT <dave@example.org>
            S: 250 2.1.5 Recipient OK
            E: RCPT <erin@example.org>
            S: 250 2.1.5 Recipient OK
            S: 452 4.5.3 Too many recipients
            S: 354 End data with <CR><LF>.<CR><LF>
            E: MESSAGE <alice@example.org> <bob@example.org>,<dave@example.org>,<erin@example.org> "Hi\r\n"
            S: 250 2.0.0 Ok: queued as Q1"#,
            login_transcript()
        ),
    );
}

// ---- commands out of order, unknown, simple ones ----

#[test]
fn commands_out_of_order() {
    let transcript = converse(
        &open_config(),
        &lines(&[
            "MAIL FROM:<alice@example.org>",
            "EHLO c",
            "RCPT TO:<bob@example.org>",
            "DATA",
            "MAIL FROM:<alice@example.org>",
            "DATA",
            "RCPT TO:<bob@nokey.example>",
            "DATA",
        ]),
    );
    assert_transcript(
        &transcript,
        &format!(
            "S: 503 Send HELO/EHLO first
            {EHLO_REPLY}
            S: 503 5.5.1 Need MAIL command
            S: 503 5.5.1 Need MAIL command
            E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false
            S: 250 2.1.0 Sender OK
            S: 554 5.5.1 No valid recipients
            E: RCPT <bob@nokey.example>
            S: 550 5.7.1 No key for recipient, policy is encrypted-only
            S: 554 5.5.1 No valid recipients"
        ),
    );
}

#[test]
fn simple_commands() {
    let transcript = converse(
        &config(),
        &lines(&[
            "NOOP",
            "EHLO c",
            "noop hello",
            "VRFY bob",
            "VRFY",
            "HELP",
            "EXPN list",
            "RSET",
            "FOO bar",
            "",
            "QUIT",
            "NOOP",
        ]),
    );
    assert_transcript(
        &transcript,
        &format!(
            "S: 250 Ok
            {EHLO_REPLY}
            S: 250 2.0.0 Ok
            S: 252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery
            S: 501 5.5.4 Syntax: VRFY string
            S: 214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT
            S: 502 5.5.1 Command not supported here
            S: 250 2.0.0 Ok
            S: 500 5.5.1 Command unrecognized
            S: 500 5.5.1 Command unrecognized
            S: 221 2.0.0 Bye
            E: CLOSE"
        ),
    );
}

#[test]
fn nothing_is_read_after_quit() {
    let mut session = Session::new(open_config());
    let actions = session.feed(b"QUIT\r\nNOOP\r\n");
    assert_eq!(actions, vec![Action::Send(b"221 Bye\r\n".to_vec()), Action::Close]);
    assert!(session.is_closed());
    assert!(session.feed(b"NOOP\r\n").is_empty());
}

#[test]
fn rset_clears_the_transaction() {
    let client = cat(&[
        &login(),
        &lines(&[
            "MAIL FROM:<alice@example.org>",
            "RCPT TO:<bob@example.org>",
            "RSET",
            "DATA",
            "RCPT TO:<bob@example.org>",
        ]),
    ]);
    let transcript = converse(&config(), &client);
    assert!(transcript.ends_with("S: 250 2.0.0 Ok\nS: 503 5.5.1 Need MAIL command\nS: 503 5.5.1 Need MAIL command\n"));
}

#[test]
fn lines_too_long() {
    let mut config = open_config();
    config.max_line = 32;
    let long = format!("NOOP {}", "x".repeat(40));
    let exact = format!("NOOP {}", "y".repeat(25)); // 30 + CRLF = 32
    let transcript = converse(&config, &lines(&["EHLO c", &long, &exact, "AUTH LOGIN", &long, "NOOP"]));
    assert_transcript(
        &transcript,
        "
        S: 250-mx.test
        S: 250-SMTPUTF8
        S: 250-SIZE 1000
        S: 250-PIPELINING
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-AUTH PLAIN LOGIN
        S: 250 8BITMIME
        S: 500 5.5.2 Line too long
        S: 250 2.0.0 Ok
        S: 334 VXNlcm5hbWU6
        S: 500 5.5.2 Line too long
        S: 250 2.0.0 Ok
        ",
    );
}

#[test]
fn command_lines_must_end_with_crlf() {
    let transcript = converse(
        &open_config(),
        b"EHLO c\r\nMAIL FROM:<a@example.org>\nNOOP\rMAIL FROM:<b@example.org>\r\nNOOP\x00\r\nNOOP\r\n",
    );
    assert_transcript(
        &transcript,
        &format!(
            "{EHLO_REPLY}
            S: 500 5.5.2 Syntax error: bare <LF> received, lines must end with <CR><LF>
            S: 500 5.5.2 Syntax error: bare <CR> or NUL received
            S: 500 5.5.2 Syntax error: bare <CR> or NUL received
            S: 250 2.0.0 Ok"
        ),
    );
}

// ---- DATA ----

fn transaction(recipients: &[&str]) -> Vec<u8> {
    let mut client = login();
    client.extend(lines(&["MAIL FROM:<alice@example.org>"]));
    for recipient in recipients {
        client.extend(lines(&[&format!("RCPT TO:<{recipient}>")]));
    }
    client
}

fn transaction_transcript(recipients: &[&str]) -> String {
    let mut out = login_transcript();
    out.push_str("E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false\n");
    out.push_str("S: 250 2.1.0 Sender OK\n");
    for recipient in recipients {
        out.push_str(&format!("E: RCPT <{recipient}>\nS: 250 2.1.5 Recipient OK\n"));
    }
    out
}

#[test]
fn data_with_dot_stuffing() {
    let client = cat(&[
        &transaction(&["bob@example.org"]),
        b"DATA\r\nSubject: dots\r\n\r\n..\r\n...leading\r\n.single\r\nmid.dle\r\n.\r\nNOOP\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            r#"{}
            S: 354 End data with <CR><LF>.<CR><LF>
            E: MESSAGE <alice@example.org> <bob@example.org> "Subject: dots\r\n\r\n.\r\n..leading\r\nsingle\r\nmid.dle\r\n"
            S: 250 2.0.0 Ok: queued as Q1
            S: 250 2.0.0 Ok"#,
            transaction_transcript(&["bob@example.org"])
        ),
    );
}

#[test]
fn empty_message_and_queue_failure() {
    let client = cat(&[
        &transaction(&["bob@example.org"]),
        b"DATA\r\n.\r\n",
        &lines(&["MAIL FROM:<alice@example.org>", "RCPT TO:<bob@example.org>"]),
        b"DATA\r\nX-Fail-Queue: yes\r\n.\r\nRSET\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert!(transcript.contains(
        "S: 354 End data with <CR><LF>.<CR><LF>\nE: MESSAGE <alice@example.org> <bob@example.org> \"\"\nS: 250 2.0.0 Ok: queued as Q1\n"
    ));
    assert!(transcript.ends_with("S: 451 4.3.0 Queue unavailable\nS: 250 2.0.0 Ok\n"));
}

#[test]
fn oversized_message_is_read_and_refused() {
    let body = "x".repeat(100);
    let mut data = b"DATA\r\n".to_vec();
    for _ in 0..12 {
        data.extend_from_slice(body.as_bytes());
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b"MAIL FROM:<smuggled@evil.example>\r\n.\r\n");
    let client = cat(&[&transaction(&["bob@example.org"]), &data, &lines(&["RCPT TO:<bob@example.org>", "NOOP"])]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            "{}
            S: 354 End data with <CR><LF>.<CR><LF>
            S: 552 5.3.4 Message size exceeds fixed maximum message size
            S: 503 5.5.1 Need MAIL command
            S: 250 2.0.0 Ok",
            transaction_transcript(&["bob@example.org"])
        ),
    );
}

/// RFC 2920 section 3.1, with this server's replies.
#[test]
fn pipelining_rfc2920_example() {
    let client = cat(&[
        &lines(&["EHLO dbc.mtview.ca.us"]),
        &lines(&[
            "MAIL FROM:<mrose@dbc.mtview.ca.us>",
            "RCPT TO:<ned@ymir.claremont.edu>",
            "RCPT TO:<dan@ymir.claremont.edu>",
            "RCPT TO:<kvc@ymir.claremont.edu>",
            "DATA",
        ]),
        &lines(&["Subject: pipelining", "", "Hi.", ".", "QUIT"]),
    ]);
    let transcript = converse(&open_config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            r#"{EHLO_REPLY}
            E: MAIL <mrose@dbc.mtview.ca.us> size=None body=Unspecified smtputf8=false
            S: 250 2.1.0 Sender OK
            E: RCPT <ned@ymir.claremont.edu>
            S: 250 2.1.5 Recipient OK
            E: RCPT <dan@ymir.claremont.edu>
            S: 250 2.1.5 Recipient OK
            E: RCPT <kvc@ymir.claremont.edu>
            S: 250 2.1.5 Recipient OK
            S: 354 End data with <CR><LF>.<CR><LF>
            E: MESSAGE <mrose@dbc.mtview.ca.us> <ned@ymir.claremont.edu>,<dan@ymir.claremont.edu>,<kvc@ymir.claremont.edu> "Subject: pipelining\r\n\r\nHi.\r\n"
            S: 250 2.0.0 Ok: queued as Q1
            S: 221 2.0.0 Bye
            E: CLOSE"#
        ),
    );
}

#[test]
fn input_waits_for_decisions() {
    let mut session = Session::new(open_config());
    let actions = session.feed(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nNOOP\r\n");
    assert_eq!(actions.len(), 2);
    assert!(matches!(&actions[1], Action::MailFrom { address, .. } if address == "a@example.org"));
    // More input while waiting is queued, not answered.
    assert!(session.feed(b"NOOP\r\n").is_empty());
    // A result nobody asked for is ignored.
    assert!(session.rcpt_result(Ok(())).is_empty());
    assert!(session.message_result(Ok("x".into())).is_empty());
    let actions = session.mail_from_result(Ok(()));
    assert_eq!(
        actions,
        vec![Action::Send(b"250 2.1.0 Sender OK\r\n".to_vec()), Action::Rcpt { address: "b@example.org".into() }]
    );
    let actions = session.rcpt_result(Ok(()));
    assert_eq!(
        actions,
        vec![
            Action::Send(b"250 2.1.5 Recipient OK\r\n".to_vec()),
            Action::Send(b"250 2.0.0 Ok\r\n".to_vec()),
            Action::Send(b"250 2.0.0 Ok\r\n".to_vec()),
        ]
    );
}

#[test]
fn a_refusal_must_be_a_failure_code() {
    let mut session = Session::new(open_config());
    session.feed(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n");
    let actions = session.mail_from_result(Err(Reply::new(250, [2, 0, 0], "fine\r\n250 ok")));
    assert_eq!(actions, vec![Action::Send(b"451 4.3.0 Local error in processing\r\n".to_vec())]);
    session.feed(b"MAIL FROM:<a@example.org>\r\n");
    let actions = session.mail_from_result(Err(Reply::new(550, [5, 7, 1], "no\r\n250 injected")));
    assert_eq!(actions, vec![Action::Send(b"550 5.7.1 no??250 injected\r\n".to_vec())]);
}

#[test]
fn too_much_pipelined_input_closes_after_the_decision() {
    let mut config = open_config();
    config.max_message_size = 100;
    let mut session = Session::new(config);
    session.feed(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n");
    assert!(session.feed(&vec![b'x'; 70 * 1024]).is_empty());
    let actions = session.mail_from_result(Ok(()));
    assert_eq!(
        actions,
        vec![
            Action::Send(b"250 2.1.0 Sender OK\r\n".to_vec()),
            Action::Send(b"421 4.7.0 Too much pipelined input, closing connection\r\n".to_vec()),
            Action::Close,
        ]
    );
    assert!(session.feed(b"NOOP\r\n").is_empty());
}

// ---- BDAT ----

#[test]
fn bdat_chunks() {
    let client = cat(&[
        &transaction(&["bob@example.org"]),
        &bdat(b"Subject: chunks\r\n\r\n", false),
        &bdat(b".\r\nMAIL FROM:<x@example.org>\r\n..\r\n", false),
        &bdat(b"end\n", true),
    ]);
    // The last chunk has a bare LF: refused after the chunk.
    let transcript = converse(&config(), &client);
    assert!(transcript.ends_with(
        "S: 250 2.0.0 19 octets received\nS: 250 2.0.0 34 octets received\n\
         S: 550 5.5.2 Message rejected: bare <LF> received, lines must end with <CR><LF>\n"
    ));

    let client = cat(&[
        &transaction(&["bob@example.org"]),
        &bdat(b"Subject: chunks\r\n\r\n", false),
        &bdat(b".\r\nMAIL FROM:<x@example.org>\r\n..\r\n", false),
        &bdat(b"end\r\n", true),
        b"NOOP\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            r#"{}
            S: 250 2.0.0 19 octets received
            S: 250 2.0.0 34 octets received
            E: MESSAGE <alice@example.org> <bob@example.org> "Subject: chunks\r\n\r\n.\r\nMAIL FROM:<x@example.org>\r\n..\r\nend\r\n"
            S: 250 2.0.0 Ok: queued as Q1
            S: 250 2.0.0 Ok"#,
            transaction_transcript(&["bob@example.org"])
        ),
    );
}

#[test]
fn bdat_zero_last_and_data_after_bdat() {
    let client = cat(&[
        &transaction(&["bob@example.org"]),
        b"BDAT 4\r\nHi\r\n",
        b"DATA\r\n",
        b"RCPT TO:<carol@example.org>\r\n",
        b"BDAT 0 LAST\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert!(transcript.ends_with(
        "S: 250 2.0.0 4 octets received\n\
         S: 503 5.5.1 DATA not permitted after BDAT\n\
         S: 503 5.5.1 RCPT not permitted after BDAT\n\
         E: MESSAGE <alice@example.org> <bob@example.org> \"Hi\\r\\n\"\n\
         S: 250 2.0.0 Ok: queued as Q1\n"
    ));
}

#[test]
fn refused_bdat_chunks_are_consumed_not_executed() {
    let client = cat(&[
        &login(),
        &bdat(b"MAIL FROM:<evil@example.org>\r\n", false),
        b"MAIL FROM:<alice@example.org>\r\n",
        &bdat(b"MAIL FROM:<evil@example.org>\r\n", true),
        b"NOOP\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert_transcript(
        &transcript,
        &format!(
            "{}
            S: 503 5.5.1 Need MAIL command
            E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false
            S: 250 2.1.0 Sender OK
            S: 554 5.5.1 No valid recipients
            S: 250 2.0.0 Ok",
            login_transcript()
        ),
    );
}

#[test]
fn oversized_bdat_is_consumed_and_refused() {
    let chunk = vec![b'x'; 1001];
    let client = cat(&[
        &transaction(&["bob@example.org"]),
        b"BDAT 600\r\n",
        &chunk[..600],
        b"BDAT 401\r\n",
        &chunk[..401],
        &bdat(b"MAIL\r\n", true),
        b"NOOP\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert!(transcript.ends_with(
        "S: 250 2.0.0 600 octets received\n\
         S: 552 5.3.4 Message size exceeds fixed maximum message size\n\
         S: 503 5.5.1 Need MAIL command\n\
         S: 250 2.0.0 Ok\n"
    ));
}

#[test]
fn bdat_with_a_bad_size_closes() {
    let client = cat(&[
        &transaction(&["bob@example.org"]),
        b"BDAT 99999999999999999999999999 LAST\r\nMAIL FROM:<x@example.org>\r\n",
    ]);
    let transcript = converse(&config(), &client);
    assert!(
        transcript.ends_with("S: 421 4.5.4 Syntax: BDAT chunk-size [LAST], closing connection\nE: CLOSE\n"),
        "{transcript}"
    );
}

/// smtp-proto 0.2.5 reads numbers of more than 20 digits as their last
/// digits; the session does not let that through.
#[test]
fn oversized_numbers_are_not_misread() {
    let client = cat(&[&login(), &lines(&["MAIL FROM:<alice@example.org> SIZE=1000000000000000000000000000005"])]);
    let transcript = converse(&config(), &client);
    assert!(transcript.ends_with("S: 501 5.5.4 Invalid SIZE parameter\n"), "{transcript}");

    let client = cat(&[&transaction(&["bob@example.org"]), b" bdat  1000000000000000000000000000005 LAST\r\nhello"]);
    let transcript = converse(&config(), &client);
    assert!(
        transcript.ends_with("S: 421 4.5.4 Syntax: BDAT chunk-size [LAST], closing connection\nE: CLOSE\n"),
        "{transcript}"
    );
}

// ---- STARTTLS ----

fn tls_config() -> Config {
    let mut config = config();
    config.starttls_available = true;
    config
}

#[test]
fn starttls_discards_pipelined_commands_and_resets() {
    let plain_text = cat(&[
        &lines(&["EHLO c", &format!("AUTH PLAIN {}", plain("", "alice", "secret")), "STARTTLS"]),
        // Injected after STARTTLS in the same packet (CVE-2011-0411).
        &lines(&["MAIL FROM:<evil@example.org>", "RCPT TO:<victim@example.org>"]),
    ]);
    let after_tls = lines(&["MAIL FROM:<alice@example.org>", "EHLO c", "MAIL FROM:<alice@example.org>", "STARTTLS"]);
    let transcript = converse_segments(&tls_config(), &[plain_text, after_tls]);
    assert_transcript(
        &transcript,
        "
        S: 250-mx.test
        S: 250-STARTTLS
        S: 250-SMTPUTF8
        S: 250-SIZE 1000
        S: 250-PIPELINING
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-AUTH PLAIN LOGIN
        S: 250 8BITMIME
        E: AUTH Plain alice secret
        S: 235 2.7.0 Authentication successful
        S: 220 2.0.0 Ready to start TLS
        E: STARTTLS
        S: 503 Send HELO/EHLO first
        S: 250-mx.test
        S: 250-SMTPUTF8
        S: 250-SIZE 1000
        S: 250-PIPELINING
        S: 250-ENHANCEDSTATUSCODES
        S: 250-CHUNKING
        S: 250-AUTH PLAIN LOGIN
        S: 250 8BITMIME
        S: 530 5.7.0 Authentication required
        S: 503 5.5.1 TLS already active
        ",
    );
}

#[test]
fn starttls_refusals() {
    let transcript = converse(&config(), &lines(&["EHLO c", "STARTTLS"]));
    assert!(transcript.ends_with("S: 502 5.5.1 STARTTLS not available\n"));
    let transcript = converse(&tls_config(), &lines(&["STARTTLS", "NOOP"]));
    assert_transcript(&transcript, "S: 503 Send EHLO first\nS: 250 Ok");
}

#[test]
fn starttls_after_a_decision_discards_the_rest() {
    let mut config = tls_config();
    config.auth_required = false;
    let plain_text = lines(&["EHLO c", "MAIL FROM:<alice@example.org>", "STARTTLS", "RCPT TO:<victim@example.org>"]);
    let transcript = converse_segments(&config, &[plain_text, lines(&["NOOP"])]);
    assert!(transcript.ends_with(
        "E: MAIL <alice@example.org> size=None body=Unspecified smtputf8=false\n\
         S: 250 2.1.0 Sender OK\nS: 220 2.0.0 Ready to start TLS\nE: STARTTLS\nS: 250 Ok\n"
    ));
}

// ---- SMTP smuggling ----

/// Each payload carries a fake end of data followed by a smuggled
/// transaction. The session must either keep it all as content or refuse
/// the whole message after the real end; never end early, never run the
/// smuggled commands.
#[test]
fn smuggling_payloads() {
    let payloads: &[(&[u8], &str)] = &[
        (b"\n.\n", "550 5.5.2"),
        (b"\n.\r\n", "550 5.5.2"),
        (b"\r.\r\n", "550 5.5.2"),
        (b"\r.\r", "550 5.5.2"),
        (b"\r\n.\r", "550 5.5.2"),
        (b"\r\n.\n", "550 5.5.2"),
        (b"\n.\r", "550 5.5.2"),
        (b"\r\n\x00.\r\n", "550 5.6.0"),
        (b"\r\n.\x00\r\n", "550 5.6.0"),
        (b"\r\n\r.\r\n", "550 5.5.2"),
        (b"\r\n.\r\r\n", "550 5.5.2"),
        (b"\r\r\n.\r\n", "end"),
        (b"\r\n..\r\n", "250 2.0.0"),
        (b"\r\n .\r\n", "250 2.0.0"),
    ];
    for &(payload, outcome) in payloads {
        let data = cat(&[
            b"DATA\r\nFrom: alice@example.org\r\n\r\nlegitimate",
            payload,
            b"MAIL FROM:<smuggled@evil.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\n",
            b"NOOP\r\n",
        ]);
        let client = cat(&[&transaction(&["bob@example.org"]), &data]);
        let transcript = converse(&config(), &client);
        let after_354 = transcript
            .split_once("S: 354 End data with <CR><LF>.<CR><LF>\n")
            .map(|(_, after)| after)
            .unwrap_or_else(|| panic!("no 354 for {payload:?}:\n{transcript}"));
        if outcome == "end" {
            // "\r\r\n.\r\n" holds a real "\r\n.\r\n": the end of data is
            // there, and what follows runs as commands (the client's own).
            assert!(after_354.contains("E: MAIL <smuggled@evil.example>"));
            continue;
        }
        assert!(
            !after_354.contains("E: MAIL") && !after_354.contains("E: RCPT"),
            "smuggled commands ran for {payload:?}:\n{transcript}"
        );
        if outcome.starts_with("550") {
            assert_eq!(after_354.lines().collect::<Vec<_>>().len(), 2, "{payload:?}:\n{after_354}");
            assert!(after_354.starts_with(&format!("S: {outcome} Message rejected")), "{payload:?}:\n{after_354}");
        } else {
            let message_line = after_354.lines().next().unwrap_or_default();
            assert!(message_line.starts_with("E: MESSAGE"), "{payload:?}:\n{after_354}");
            assert!(message_line.contains("MAIL FROM:<smuggled@evil.example>"));
            assert!(after_354.contains("S: 250 2.0.0 Ok: queued as Q1\n"));
        }
        assert!(
            after_354.ends_with("S: 250 2.0.0 Ok\n"),
            "the command after the real end must run: {payload:?}:\n{after_354}"
        );
    }
}

#[test]
fn a_bdat_message_with_a_smuggling_payload_is_refused() {
    for payload in [&b"\n.\n"[..], b"\r\n.\r", b"\n.\r\n", b"\r.\r\n", b"\x00"] {
        let chunk = cat(&[b"Subject: x\r\n\r\nhi", payload, b"MAIL FROM:<e@evil.example>\r\n"]);
        let client = cat(&[
            &transaction(&["bob@example.org"]),
            format!("BDAT {} LAST\r\n", chunk.len()).as_bytes(),
            &chunk,
            b"NOOP\r\n",
        ]);
        let transcript = converse(&config(), &client);
        assert!(!transcript.contains("E: MESSAGE"), "{payload:?}:\n{transcript}");
        assert!(transcript.contains("S: 550 5."), "{payload:?}:\n{transcript}");
        assert!(transcript.ends_with("S: 250 2.0.0 Ok\n"), "{payload:?}:\n{transcript}");
    }
}

// ---- DATA framing against a reference ----

/// A small deterministic generator (no dependencies, same cases every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// RFC 5321 section 4.1.1.4 and 4.5.2 read strictly: the end of data is the
/// first CRLF "." CRLF (the CRLF of the DATA command counting); lines start
/// only after CRLF; a leading dot is removed.
fn reference_message(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let framed = cat(&[b"\r\n", data, b"\r\n.\r\n"]);
    // The first defect in stream order decides the reply.
    for index in 2..framed.len() {
        let byte = framed[index];
        if byte == 0 {
            return Err("550 5.6.0");
        }
        let bare_lf = byte == b'\n' && framed[index - 1] != b'\r';
        let bare_cr = byte == b'\r' && framed.get(index + 1) != Some(&b'\n');
        if bare_lf || bare_cr {
            return Err("550 5.5.2");
        }
    }
    let text = cat(&[data, b"\r\n"]);
    let mut message = Vec::new();
    let body = text.strip_suffix(b"\r\n").unwrap_or(&text);
    for line in body.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = line.strip_prefix(b".").unwrap_or(line);
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    Ok(message)
}

#[test]
fn data_framing_matches_the_reference() {
    let alphabet: &[&[u8]] = &[b"\r", b"\n", b".", b"a", b"\x00", b"\r\n", b"\r\n.", b"MAIL"];
    let mut random = Lcg(0x5eed);
    let mut checked = 0;
    for case in 0..3000 {
        let length = random.below(12);
        let data: Vec<u8> = (0..length).flat_map(|_| alphabet[random.below(alphabet.len())].to_vec()).collect();
        // Only data whose end is the appended terminator.
        if find(&cat(&[b"\r\n", &data, b"\r\n.\r\n"]), b"\r\n.\r\n") != Some(data.len() + 2) {
            continue;
        }
        checked += 1;
        let client = cat(&[
            b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
            &data,
            b"\r\n.\r\nNOOP\r\n",
        ]);
        let splits: &[Split] = if case % 10 == 0 { &[Split::Whole, Split::Chunks(1)] } else { &[Split::Whole] };
        for &split in splits {
            let log = run(&open_config(), std::slice::from_ref(&client), split);
            let transcript = render(&log);
            let after_354 =
                transcript.split_once("S: 354 End data with <CR><LF>.<CR><LF>\n").map(|(_, after)| after).expect("354");
            match reference_message(&data) {
                Ok(message) => {
                    let messages: Vec<_> = log
                        .iter()
                        .filter_map(|action| match action {
                            Action::Message { data, .. } => Some(data.clone()),
                            _ => None,
                        })
                        .collect();
                    assert_eq!(messages, vec![message], "data {data:?}");
                    assert!(after_354.ends_with("S: 250 2.0.0 Ok: queued as Q1\nS: 250 2.0.0 Ok\n"));
                }
                Err(code) => {
                    assert!(after_354.starts_with(&format!("S: {code} ")), "data {data:?}:\n{after_354}");
                    assert_eq!(after_354.lines().count(), 2, "data {data:?}:\n{after_354}");
                    assert!(after_354.ends_with("S: 250 2.0.0 Ok\n"));
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} cases");
}

/// Garbage from SMTP fragments: no panic, and the same actions however the
/// input is split.
#[test]
fn arbitrary_input_never_panics() {
    let fragments: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@example.org>\r\n",
        b"MAIL FROM:<a@blocked.example> SIZE=5\r\n",
        b"RCPT TO:<b@example.org>\r\n",
        b"RCPT TO:<b@nokey.example>\r\n",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 2 LAST\r\n",
        b"BDAT x\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AGFsaWNlAHNlY3JldA==\r\n",
        b"*\r\n",
        b"STARTTLS\r\n",
        b"RSET\r\n",
        b"QUIT\r\n",
        b"\r\n.\r\n",
        b".",
        b"\r",
        b"\n",
        b"\x00",
        b"\xff\xfe",
        b"x",
        b"NOOP",
    ];
    let mut config = tls_config();
    config.max_line = 40;
    config.max_message_size = 50;
    let mut random = Lcg(42);
    for _ in 0..300 {
        let count = random.below(40);
        let client: Vec<u8> = (0..count).flat_map(|_| fragments[random.below(fragments.len())].to_vec()).collect();
        let whole = run(&config, std::slice::from_ref(&client), Split::Whole);
        for split in [Split::Chunks(1), Split::Chunks(3), Split::At(client.len() / 2)] {
            assert_eq!(whole, run(&config, std::slice::from_ref(&client), split), "{client:?}");
        }
        assert_replies_are_lines(&whole);
    }
    // Bytes of any value.
    for _ in 0..200 {
        let count = random.below(300);
        let client: Vec<u8> = (0..count).map(|_| random.next() as u8).collect();
        let whole = run(&config, std::slice::from_ref(&client), Split::Whole);
        for split in [Split::Chunks(1), Split::Chunks(7)] {
            assert_eq!(whole, run(&config, std::slice::from_ref(&client), split), "{client:?}");
        }
        assert_replies_are_lines(&whole);
    }
}

/// Every reply is whole lines ended by CRLF, without a bare CR or LF.
fn assert_replies_are_lines(actions: &[Action]) {
    for action in actions {
        if let Action::Send(bytes) = action {
            assert!(bytes.ends_with(b"\r\n"));
            for (index, &byte) in bytes.iter().enumerate() {
                match byte {
                    b'\r' => assert_eq!(bytes.get(index + 1), Some(&b'\n')),
                    b'\n' => assert_eq!(bytes[index - 1], b'\r'),
                    _ => {}
                }
            }
        }
    }
}

// ---- memory ----

/// The message a conversation queued, as the session handed it on.
fn queued(client: &[u8]) -> Vec<u8> {
    let actions = run(&open_config(), &[client.to_vec()], Split::Chunks(64));
    actions
        .into_iter()
        .find_map(|action| match action {
            Action::Message { data, .. } => Some(data),
            _ => None,
        })
        .expect("a message was queued")
}

#[test]
fn a_message_is_handed_on_in_a_buffer_of_its_size() {
    // 600 bytes of text: the buffer grew by doubling past them, or was
    // reserved for the 1000 declared; either way nothing is left over.
    let body = "x".repeat(58);
    let text: Vec<&str> = std::iter::repeat_n(body.as_str(), 10).collect();
    for mail in ["MAIL FROM:<alice@example.org>", "MAIL FROM:<alice@example.org> SIZE=1000"] {
        let data = queued(&cat(&[
            &lines(&["EHLO client.test", mail, "RCPT TO:<bob@example.org>", "DATA"]),
            &lines(&text),
            b".\r\n",
        ]));
        assert_eq!(data.len(), 600, "{mail}");
        assert_eq!(data.capacity(), data.len(), "{mail}: the buffer was not shrunk to the message");
        let chunked = queued(&cat(&[
            &lines(&["EHLO client.test", mail, "RCPT TO:<bob@example.org>"]),
            &bdat(&lines(&text), true),
        ]));
        assert_eq!(chunked.capacity(), chunked.len(), "{mail}: BDAT");
    }
}
