//! The SMTP session (submission, and the provider's MX and relay without
//! AUTH): the input is what a client sends; the last byte of the input
//! chooses the configuration (AUTH required or offered, STARTTLS offered)
//! and how the input is cut. Decisions are answered as the session tests'
//! service does (refusals by address and content).
//!
//! Checked: no panic; a decision is always the last action of a batch; the
//! actions do not depend on how the input was cut; a message handed on has
//! CRLF line endings only, no NUL and fits the size limit; every reply is
//! whole lines ending in CRLF.

#![no_main]

use bitmask_fuzz::{Choices, contains};
use bitmask_smtp::session::{Action, Config, Reply, Session};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 2000;

fn decide(session: &mut Session, action: &Action) -> Vec<Action> {
    match action {
        Action::Authenticate { user, .. } if user == "unavailable" => session.auth_unavailable(),
        Action::Authenticate { user, password, .. } => {
            session.auth_result(user == "alice" && password.expose() == "secret")
        }
        Action::MailFrom { address, .. } if address.ends_with("@blocked.example") => {
            session.mail_from_result(Err(Reply::new(550, [5, 7, 1], "Sender not allowed")))
        }
        Action::MailFrom { .. } => session.mail_from_result(Ok(())),
        Action::Rcpt { address } if address.ends_with("@nokey.example") => {
            session.rcpt_result(Err(Reply::new(550, [5, 7, 1], "No key")))
        }
        Action::Rcpt { .. } => session.rcpt_result(Ok(())),
        Action::Message { data, .. } if contains(data, b"X-Fail-Queue") => {
            session.message_result(Err(Reply::new(451, [4, 3, 0], "Queue unavailable")))
        }
        Action::Message { .. } => session.message_result(Ok("Q1".to_owned())),
        Action::Send(_) | Action::StartTls | Action::Close => Vec::new(),
    }
}

fn check(action: &Action) {
    match action {
        Action::Send(reply) => {
            assert!(reply.ends_with(b"\r\n"), "a reply does not end with CRLF: {reply:?}");
            for (at, byte) in reply.iter().enumerate() {
                match byte {
                    b'\r' => assert_eq!(reply.get(at + 1), Some(&b'\n'), "bare CR in a reply: {reply:?}"),
                    b'\n' => assert_eq!(reply.get(at.wrapping_sub(1)), Some(&b'\r'), "bare LF in a reply: {reply:?}"),
                    0 => panic!("NUL in a reply: {reply:?}"),
                    _ => {}
                }
            }
        }
        Action::Message { data, .. } => {
            assert!(data.len() <= MAX_MESSAGE, "a message of {} bytes passed the limit", data.len());
            assert!(!data.contains(&0), "a message with NUL was handed on");
            for (at, byte) in data.iter().enumerate() {
                match byte {
                    b'\r' => assert_eq!(data.get(at + 1), Some(&b'\n'), "a message with a bare CR was handed on"),
                    b'\n' => {
                        assert_eq!(data.get(at.wrapping_sub(1)), Some(&b'\r'), "a message with a bare LF was handed on")
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

fn run(config: &Config, input: &[u8], chunk: usize) -> Vec<Action> {
    let mut session = Session::new(config.clone());
    let mut log = Vec::new();
    let mut tls_pending = false;
    for piece in input.chunks(chunk) {
        if tls_pending {
            // The handshake completes between two reads.
            session.tls_started();
            tls_pending = false;
        }
        let mut actions = session.feed(piece);
        while !actions.is_empty() {
            let count = actions.len();
            let mut next = Vec::new();
            for (index, action) in actions.into_iter().enumerate() {
                check(&action);
                if matches!(
                    action,
                    Action::Authenticate { .. }
                        | Action::MailFrom { .. }
                        | Action::Rcpt { .. }
                        | Action::Message { .. }
                ) {
                    assert_eq!(index + 1, count, "a decision is not the last action of its batch");
                    next = decide(&mut session, &action);
                }
                tls_pending |= action == Action::StartTls;
                log.push(action);
            }
            actions = next;
        }
    }
    log
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 16 * 1024 {
        return;
    }
    let mut choices = Choices::new(data);
    let flags = choices.byte();
    let input = &data[..data.len().saturating_sub(1)];
    let mut config = Config::new("mx.test");
    config.max_message_size = MAX_MESSAGE;
    config.max_recipients = 3;
    config.max_line = 512;
    config.auth_required = flags & 1 == 0;
    config.auth_offered = flags & 2 == 0;
    config.starttls_available = flags & 4 != 0;
    let chunk = 1 + usize::from(flags >> 5);
    // STARTTLS: the handshake happens between reads, so only runs cut the
    // same way can be compared once it was asked for.
    let whole = run(&config, input, input.len().max(1));
    let split = run(&config, input, chunk);
    if !whole.contains(&Action::StartTls) {
        assert_eq!(whole, split, "the actions depend on how the input is cut ({chunk}-byte reads)");
    }
});
