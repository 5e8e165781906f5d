//! The IMAP gateway's connection without its socket: the input is what a
//! client sends, played through imap-next's server and a `Session` over an
//! in-memory mailbox (the conversation tests' `Driver` and `MemStore`),
//! once whole and once cut into reads of 1 to 7 bytes.
//!
//! Checked: no panic; the server's transcript does not depend on how the
//! input was cut (as the conversation tests assert for theirs), but for the
//! `+` or BAD imap-next itself sends, right before the connection closes,
//! for a literal that came in the same read; what it wrote ends with CRLF.

#![no_main]

use std::sync::Arc;

use bitmask_fuzz::block_on;
use bitmask_fuzz::imap_support::{Driver, MemStore};
use libfuzzer_sys::fuzz_target;

/// A small literal limit, so the fuzzer reaches it.
const MAX_LITERAL: u32 = 4096;

const PLAIN: &str = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\nFrom: Fred Foobar <foobar@Blurdybloop.COM>\r\n\
Subject: afternoon meeting\r\nTo: mooch@owatagu.siam.edu\r\nMessage-Id: <B27397-0100000@Blurdybloop.COM>\r\n\
MIME-Version: 1.0\r\nContent-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n";

const MULTIPART: &str = "From: Bob <bob@example.net>\r\nTo: alice@example.org, \"Carol\" <carol@example.org>\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
preamble\r\n--outer\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße\r\n\
--outer\r\nContent-Type: message/rfc822\r\n\r\nFrom: carol@example.org\r\nSubject: inner\r\n\
Content-Type: multipart/alternative; boundary=inner\r\n\r\n--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n\
--inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--inner--\r\n\
--outer\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Disposition: attachment; filename=a.bin\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--outer--\r\nepilogue\r\n";

const SHORT: &str = "From: someone@example.net\r\nSubject: message 3\r\n\r\nbody 3\r\n";

fn store() -> Arc<MemStore> {
    let store = MemStore::new();
    store.deliver("INBOX", PLAIN, "\\Seen \\Flagged", "07-Feb-1994 21:52:25 -0800");
    store.deliver("INBOX", MULTIPART, "\\Answered $Label1", "17-Jul-1996 02:44:25 -0700");
    store.deliver("INBOX", SHORT, "", "03-Feb-1994 10:00:00 +0000");
    store.deliver("INBOX", SHORT, "\\Deleted", "03-Feb-1994 10:00:00 +0000");
    store.claim("INBOX");
    store.deliver("INBOX", "Subject: new\r\n\r\nnew\r\n", "", "01-Jan-2024 12:00:00 +0000");
    store.create("Archive/2024");
    store.deliver("Archive/2024", MULTIPART, "\\Seen", "01-Jan-2024 12:00:00 +0000");
    store
}

fn play(input: &[u8], chunk: usize) -> String {
    block_on(async {
        let mut driver = Driver::connect(store(), MAX_LITERAL).await;
        // The two longer messages are streamed, as the gateway streams big ones.
        driver.stream_bodies_from(300);
        for piece in input.chunks(chunk) {
            driver.feed(piece).await;
        }
        driver.output()
    })
}

/// The transcript without what imap-next answers by itself, once the
/// connection is to close (after LOGOUT or the last failed login allowed),
/// to a literal announced in the same read: its `+`, or its BAD for a
/// literal over the limit, which come right before the close (the command
/// is not run: only that goes out).
fn normalized(transcript: &str) -> String {
    let mut lines: Vec<&str> = transcript.split_inclusive("\r\n").collect();
    if lines.last().is_some_and(|line| line.starts_with("-- closed --")) {
        let closed = lines.pop();
        while lines.last().is_some_and(|line| line.starts_with("+ ") || line.contains(" BAD ")) {
            lines.pop();
        }
        lines.extend(closed);
    }
    lines.concat()
}

fuzz_target!(|input: &[u8]| {
    if input.len() > 16 * 1024 {
        return;
    }
    let whole = normalized(&play(input, input.len().max(1)));
    assert!(whole.ends_with("\r\n"), "the server's output does not end with CRLF: {whole:?}");
    let chunk = 1 + input.len() % 7;
    let split = normalized(&play(input, chunk));
    assert_eq!(whole, split, "the transcript depends on how the input is split ({chunk}-byte reads)");
});
