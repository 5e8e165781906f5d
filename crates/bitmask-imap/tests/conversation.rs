//! Conversations with the session state machine, replaying the examples of
//! RFC 3501 sections 6 and 7 (and of the extensions it serves: UIDPLUS,
//! MOVE, UNSELECT, IDLE, LITERAL+, SASL-IR) over imap-next's framing and an
//! in-memory store, with the client's bytes cut at every possible point.
//!
//! Each test is a transcript: `C:` what the client sends, `S:` what the
//! server must send (`…` ends a line where only free-form text follows),
//! `!` a change made to the store meanwhile; see `support/mod.rs`.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod support;

use std::sync::Arc;

use bitmask_mail::{FlagOperation, SpecialUse};
use support::{Conversation, Driver, MemStore};

/// The greeting and a LOGIN, for the tests that start authenticated.
macro_rules! logged_in {
    () => {
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a0 LOGIN alice@example.org s3cret-mail-token
        S: a0 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        "#
    };
}

/// Lines joined with CRLF, as messages travel.
fn crlf(text: &str) -> String {
    text.replace('\n', "\r\n")
}

/// RFC 3501 6.3.11's message (310 octets).
const FRED: &str = "Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
From: Fred Foobar <foobar@Blurdybloop.COM>
Subject: afternoon meeting
To: mooch@owatagu.siam.edu
Message-Id: <B27397-0100000@Blurdybloop.COM>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Hello Joe, do you think we can meet at 3:30 tomorrow?
";

/// The headers of RFC 3501 7.4.2's ENVELOPE example (378 octets).
const TERRY: &str = "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
Cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

The minutes of the meeting follow.
";

/// 133 octets.
const SMITH: &str = "Date: Thu, 3 Feb 1994 10:00:00 +0000
From: John Smith <smith@example.net>
Subject: lunch
To: alice@example.org

Lunch at noon?
";

/// UTF-8 in the body (226 octets).
const GRUSS: &str = "Date: Fri, 4 Feb 1994 11:00:00 +0100
From: Bob <bob@example.net>
Subject: greetings
To: alice@example.org
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Berlin.
";

/// A short message for mailboxes where only numbers matter.
fn filler(n: u32) -> String {
    crlf(&format!("From: someone@example.net\nSubject: message {n}\n\nbody {n}\n"))
}

/// INBOX with FRED, TERRY, SMITH and GRUSS (UIDs 1 to 4), seen by an
/// earlier session (none `\Recent`).
fn four_messages() -> Arc<MemStore> {
    let store = MemStore::new();
    store.deliver("INBOX", &crlf(FRED), "\\Seen \\Flagged", "07-Feb-1994 21:52:25 -0800");
    store.deliver("INBOX", &crlf(TERRY), "\\Flagged", "17-Jul-1996 02:44:25 -0700");
    store.deliver("INBOX", &crlf(SMITH), "\\Flagged", "03-Feb-1994 10:00:00 +0000");
    store.deliver("INBOX", &crlf(GRUSS), "", "04-Feb-1994 11:00:00 +0100");
    store.claim("INBOX");
    store
}

/// A mailbox of `count` filler messages with the given flags per sequence
/// number, seen by an earlier session.
fn mailbox_of(count: u32, flags: impl Fn(u32) -> &'static str) -> Arc<MemStore> {
    let store = MemStore::new();
    for n in 1..=count {
        store.deliver("INBOX", &filler(n), flags(n), "01-Jan-2024 12:00:00 +0000");
    }
    store.claim("INBOX");
    store
}

#[test]
fn fixtures_have_the_sizes_the_transcripts_use() {
    assert_eq!(crlf(FRED).len(), 310);
    assert_eq!(crlf(TERRY).len(), 378);
    assert_eq!(crlf(SMITH).len(), 133);
    assert_eq!(crlf(GRUSS).len(), 226);
}

// --- 6.1 any state ------------------------------------------------------------

#[test]
fn capability_noop_logout() {
    // RFC 3501 6.1.1, 6.1.2, 6.1.3; AUTH=PLAIN only before login, no LOGINDISABLED (no TLS here).
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: abcd CAPABILITY
        S: * CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN
        S: abcd OK …
        C: a002 NOOP
        S: a002 OK …
        C: a003 LOGIN alice@example.org s3cret-mail-token
        S: a003 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a004 CAPABILITY
        S: * CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN
        S: a004 OK …
        C: A023 LOGOUT
        S: * BYE …
        S: A023 OK …
        -- closed --
        "#,
    )
    .run();
}

#[test]
fn noop_reports_what_changed_elsewhere() {
    // RFC 3501 6.1.2: NOOP is how a client polls for updates. Another client
    // expunges message 2, flags message 3 and two messages arrive.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 4 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 1] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: a1 OK [READ-WRITE] …
        ! elsewhere
        C: a047 NOOP
        S: * 2 EXPUNGE
        S: * 2 FETCH (FLAGS (\Seen \Deleted) UID 3)
        S: * 5 EXISTS
        S: * 2 RECENT
        S: a047 OK …
        C: a048 NOOP
        S: a048 OK …
        "#
    ))
    .store(|| mailbox_of(4, |_| ""))
    .on("elsewhere", |store| {
        store.remove("INBOX", 2);
        store.flag("INBOX", 3, FlagOperation::Add, "\\Seen \\Deleted");
        store.deliver("INBOX", &filler(5), "", "02-Jan-2024 12:00:00 +0000");
        store.deliver("INBOX", &filler(6), "", "02-Jan-2024 12:00:00 +0000");
    })
    .run();
}

// --- 6.2 not authenticated -----------------------------------------------------

#[test]
fn login_with_the_token_and_with_a_wrong_one() {
    // RFC 3501 6.2.3; the user name is case-insensitive, strings may be
    // quoted or literals; a wrong token is NO [AUTHENTICATIONFAILED] (RFC 5530).
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a001 LOGIN alice@example.org wrong-token
        S: a001 NO [AUTHENTICATIONFAILED] …
        C: a002 LOGIN bob@example.org s3cret-mail-token
        S: a002 NO [AUTHENTICATIONFAILED] …
        C: a003 LOGIN alice@example.org s3cret-mail-toke
        S: a003 NO [AUTHENTICATIONFAILED] …
        C: a004 SELECT INBOX
        S: a004 BAD …
        C: a005 LOGIN {17}
        S: + ...
        C: ALICE@example.org "s3cret-mail-token"
        S: a005 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a006 LOGIN alice@example.org s3cret-mail-token
        S: a006 BAD …
        "#,
    )
    .run();
}

#[test]
fn an_empty_password_is_refused() {
    // LOGIN with an empty string, AUTHENTICATE PLAIN with an empty password.
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a1 LOGIN alice@example.org ""
        S: a1 NO [AUTHENTICATIONFAILED] …
        C: a2 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAA==
        S: a2 NO [AUTHENTICATIONFAILED] …
        "#,
    )
    .run();
}

#[test]
fn a_locked_account_refuses_every_login_as_unavailable() {
    // While the store is locked there is no mail token to compare with: an
    // empty, a wrong and the right password are all refused, with
    // [UNAVAILABLE] (RFC 5530), and they do not count as failed guesses.
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a1 LOGIN alice@example.org ""
        S: a1 NO [UNAVAILABLE] …
        C: a2 LOGIN alice@example.org wrong
        S: a2 NO [UNAVAILABLE] …
        C: a3 LOGIN alice@example.org s3cret-mail-token
        S: a3 NO [UNAVAILABLE] …
        C: a4 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAA==
        S: a4 NO [UNAVAILABLE] …
        C: a5 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHMzY3JldC1tYWlsLXRva2Vu
        S: a5 NO [UNAVAILABLE] …
        C: a6 LOGIN alice@example.org ""
        S: a6 NO [UNAVAILABLE] …
        C: a7 SELECT INBOX
        S: a7 BAD …
        "#,
    )
    .locked()
    .run();
}

#[test]
fn five_failed_logins_close_the_connection() {
    // The gateway cuts a client off after five failed logins (it also slows them down).
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a1 LOGIN alice@example.org guess1
        S: a1 NO [AUTHENTICATIONFAILED] …
        C: a2 LOGIN alice@example.org guess2
        S: a2 NO [AUTHENTICATIONFAILED] …
        C: a3 LOGIN alice@example.org guess3
        S: a3 NO [AUTHENTICATIONFAILED] …
        C: a4 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n
        S: a4 NO [AUTHENTICATIONFAILED] …
        C: a5 LOGIN alice@example.org guess5
        S: a5 NO [AUTHENTICATIONFAILED] …
        -- closed --
        "#,
    )
    .run();
}

#[test]
fn authenticate_plain() {
    // RFC 3501 6.2.2 with the PLAIN mechanism (RFC 4616): the empty
    // challenge and the response; with an initial response (SASL-IR, RFC
    // 4959); cancelled with "*"; an authorization identity equal to the user.
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a001 AUTHENTICATE PLAIN
        S: +\x20
        C: AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n
        S: a001 NO [AUTHENTICATIONFAILED] …
        C: a002 AUTHENTICATE PLAIN
        S: +\x20
        C: *
        S: a002 BAD …
        C: a003 AUTHENTICATE CRAM-MD5
        S: a003 NO …
        C: a004 AUTHENTICATE PLAIN
        S: +\x20
        C: YWxpY2VAZXhhbXBsZS5vcmcAYWxpY2VAZXhhbXBsZS5vcmcAczNjcmV0LW1haWwtdG9rZW4=
        S: a004 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a005 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHMzY3JldC1tYWlsLXRva2Vu
        S: a005 BAD …
        C: a006 NOOP
        S: a006 OK …
        "#,
    )
    .run();
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a001 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHMzY3JldC1tYWlsLXRva2Vu
        S: a001 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        "#,
    )
    .run();
}

#[test]
fn starttls_is_refused_without_a_certificate() {
    // RFC 3501 6.2.1: not offered in CAPABILITY here, so BAD.
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a001 STARTTLS
        S: a001 BAD …
        C: a002 NOOP
        S: a002 OK …
        "#,
    )
    .run();
}

// --- 6.3 authenticated -------------------------------------------------------

/// RFC 3501 6.3.1's INBOX: 172 messages, the first unseen is 12, one is
/// `\Recent`, UIDVALIDITY 3857529045, UIDNEXT 4392.
fn rfc_inbox() -> Arc<MemStore> {
    let store = MemStore::new();
    store.skip_to_uid("INBOX", 4220);
    for n in 1..=171 {
        let flags = if n < 12 { "\\Seen" } else { "" };
        store.deliver("INBOX", &filler(n), flags, "01-Jan-2024 12:00:00 +0000");
    }
    store.claim("INBOX");
    store.deliver("INBOX", &filler(172), "", "02-Jan-2024 12:00:00 +0000");
    store
}

#[test]
fn select_as_in_rfc_3501() {
    // RFC 3501 6.3.1. The order of the untagged responses is free.
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A142 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 172 EXISTS
        S: * 1 RECENT
        S: * OK [UNSEEN 12] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4392] …
        S: A142 OK [READ-WRITE] …
        C: A143 FETCH 171:* (UID FLAGS)
        S: * 171 FETCH (UID 4390 FLAGS ())
        S: * 172 FETCH (UID 4391 FLAGS (\Recent))
        S: A143 OK …
        "#
    ))
    .store(rfc_inbox)
    .run();
    // This session claimed the \Recent message: the next one will not see it so.
    assert_eq!(store.info("INBOX").recent, 0);
}

#[test]
fn examine_is_read_only_and_claims_nothing() {
    // RFC 3501 6.3.2: EXAMINE does not change \Recent, STORE and EXPUNGE are
    // refused, reading a body does not set \Seen; a SELECT after it claims.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A932 EXAMINE INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 172 EXISTS
        S: * 1 RECENT
        S: * OK [UNSEEN 12] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4392] …
        S: A932 OK [READ-ONLY] …
        C: A933 FETCH 12 (BODY[TEXT])
        S: * 12 FETCH (BODY[TEXT] {9}
        S: body 12
        S: )
        S: A933 OK …
        C: A934 STORE 12 +FLAGS (\Seen)
        S: A934 NO …
        C: A935 EXPUNGE
        S: A935 NO …
        C: A936 MOVE 1 INBOX
        S: A936 NO …
        C: A937 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 172 EXISTS
        S: * 1 RECENT
        S: * OK [UNSEEN 12] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4392] …
        S: A937 OK [READ-WRITE] …
        "#
    ))
    .store(rfc_inbox)
    .run();
}

#[test]
fn select_failures_leave_no_mailbox_selected() {
    // RFC 3501 6.3.1: a failed SELECT closes the mailbox that was selected.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 0 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 1] …
        S: a1 OK [READ-WRITE] …
        C: a2 SELECT nosuchbox
        S: a2 NO …
        C: a3 FETCH 1 FLAGS
        S: a3 BAD …
        C: a4 select "inbox"
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 0 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 1] …
        S: a4 OK [READ-WRITE] …
        "#
    ))
    .run();
}

#[test]
fn create_delete_and_list() {
    // RFC 3501 6.3.3 and 6.3.4: a trailing delimiter declares a parent;
    // deleting a mailbox leaves its inferiors; INBOX cannot go.
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A003 CREATE owatagusiam/
        S: A003 OK …
        C: A004 CREATE owatagusiam/blurdybloop
        S: A004 OK …
        C: A005 CREATE foo/bar
        S: A005 OK …
        C: A006 CREATE blurdybloop
        S: A006 OK …
        C: A007 CREATE blurdybloop
        S: A007 NO [ALREADYEXISTS] …
        C: A008 CREATE INBOX
        S: A008 NO …
        C: A682 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" blurdybloop
        S: * LIST (\HasChildren) "/" foo
        S: * LIST (\HasNoChildren) "/" foo/bar
        S: * LIST (\HasChildren) "/" owatagusiam
        S: * LIST (\HasNoChildren) "/" owatagusiam/blurdybloop
        S: A682 OK …
        C: A683 DELETE blurdybloop
        S: A683 OK …
        C: A684 DELETE foo
        S: A684 OK …
        C: A685 DELETE blurdybloop
        S: A685 NO …
        C: A686 DELETE INBOX
        S: A686 NO …
        C: A687 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" foo/bar
        S: * LIST (\HasChildren) "/" owatagusiam
        S: * LIST (\HasNoChildren) "/" owatagusiam/blurdybloop
        S: A687 OK …
        "#
    ))
    .run();
    assert_eq!(store.names(), ["INBOX", "foo/bar", "owatagusiam", "owatagusiam/blurdybloop"]);
}

#[test]
fn rename_moves_inferiors_too() {
    // RFC 3501 6.3.5's example; renaming onto an existing name fails.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A682 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" blurdybloop
        S: * LIST (\HasChildren) "/" foo
        S: * LIST (\HasNoChildren) "/" foo/bar
        S: A682 OK …
        C: A683 RENAME blurdybloop sarasoop
        S: A683 OK …
        C: A684 RENAME foo zowie
        S: A684 OK …
        C: A685 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" sarasoop
        S: * LIST (\HasChildren) "/" zowie
        S: * LIST (\HasNoChildren) "/" zowie/bar
        S: A685 OK …
        C: A686 RENAME sarasoop zowie
        S: A686 NO [ALREADYEXISTS] …
        C: A687 RENAME nosuchbox other
        S: A687 NO …
        C: A688 STATUS zowie/bar (MESSAGES UIDVALIDITY)
        S: * STATUS zowie/bar (MESSAGES 1 UIDVALIDITY 3857529048)
        S: A688 OK …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        store.create("blurdybloop");
        store.create("foo/bar");
        store.deliver("foo/bar", &filler(1), "", "01-Jan-2024 12:00:00 +0000");
        store
    })
    .run();
}

#[test]
fn subscribe_unsubscribe_and_lsub() {
    // RFC 3501 6.3.6, 6.3.7 and 6.3.9 (with "/" for the example's ".").
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A002 SUBSCRIBE news/comp/mail/mime
        S: A002 OK …
        C: A003 SUBSCRIBE news/comp/mail/misc
        S: A003 OK …
        C: A004 SUBSCRIBE nosuchbox
        S: A004 NO …
        C: A005 LSUB "news/" "comp/mail/*"
        S: * LSUB () "/" news/comp/mail/mime
        S: * LSUB () "/" news/comp/mail/misc
        S: A005 OK …
        C: A006 LSUB "news/" "comp/%"
        S: * LSUB (\Noselect) "/" news/comp/mail
        S: A006 OK …
        C: A007 UNSUBSCRIBE news/comp/mail/mime
        S: A007 OK …
        C: A008 LSUB "" *
        S: * LSUB () "/" INBOX
        S: * LSUB () "/" news/comp/mail/misc
        S: A008 OK …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        store.create("news/comp/mail/mime");
        store.create("news/comp/mail/misc");
        store
    })
    .run();
}

#[test]
fn list_patterns() {
    // RFC 3501 6.3.8: "" gives the delimiter, "*" matches across levels, "%"
    // within one; the reference is prepended; INBOX matches case-insensitively;
    // special-use attributes (RFC 6154); names in modified UTF-7 (5.1.3).
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A101 LIST "" ""
        S: * LIST (\Noselect) "/" ""
        S: A101 OK …
        C: A102 LIST "" %
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" Entw&APw-rfe
        S: * LIST (\HasChildren) "/" Projects
        S: * LIST (\HasNoChildren \Sent) "/" Sent
        S: A102 OK …
        C: A103 LIST "" Projects/%
        S: * LIST (\HasChildren) "/" Projects/2024
        S: A103 OK …
        C: A104 LIST Projects/ *
        S: * LIST (\HasChildren) "/" Projects/2024
        S: * LIST (\HasNoChildren) "/" Projects/2024/bitmask
        S: A104 OK …
        C: A105 LIST "" *s
        S: * LIST (\HasChildren) "/" Projects
        S: A105 OK …
        C: A106 LIST "" inbox
        S: * LIST (\HasNoChildren) "/" INBOX
        S: A106 OK …
        C: A107 LIST "" "Entw&APw-*"
        S: * LIST (\HasNoChildren) "/" Entw&APw-rfe
        S: A107 OK …
        C: A108 LIST "" nothing%here
        S: A108 OK …
        C: A109 CREATE "&ZeVnLIqe-"
        S: A109 OK …
        C: A110 STATUS &ZeVnLIqe- (MESSAGES)
        S: * STATUS &ZeVnLIqe- (MESSAGES 0)
        S: A110 OK …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        store.create_special("Sent", SpecialUse::Sent);
        store.create("Projects/2024/bitmask");
        store.create("Entwürfe");
        store
    })
    .run();
}

#[test]
fn a_list_pattern_full_of_wildcards_is_answered_at_once() {
    // Trying every way a "*" can match is exponential in their number: 24
    // of them against a 200-character name would not end. They are matched
    // together, in time pattern times name.
    let stars = "*a".repeat(24);
    let name = "a".repeat(200);
    let transcript = format!(
        r#"{}
        C: A1 LIST "" "{stars}b"
        S: A1 OK …
        C: A2 LIST "" "{stars}"
        S: * LIST (\HasNoChildren) "/" {name}
        S: A2 OK …
        "#,
        logged_in!()
    );
    Conversation::new(&transcript)
        .store(move || {
            let store = MemStore::new();
            store.create(&"a".repeat(200));
            store
        })
        .run();
}

#[test]
fn mailbox_names_have_a_depth_and_a_length_limit() {
    // 32 levels and 512 bytes at most (RFC 5530 [LIMIT] beyond), by CREATE
    // and by RENAME.
    let deep = vec!["d"; 33].join("/");
    let deepest = vec!["d"; 32].join("/");
    let long = "l".repeat(513);
    let transcript = format!(
        r#"{}
        C: A1 CREATE "{deep}"
        S: A1 NO [LIMIT] …
        C: A2 CREATE "{long}"
        S: A2 NO [LIMIT] …
        C: A3 CREATE "{deepest}"
        S: A3 OK …
        C: A4 CREATE short
        S: A4 OK …
        C: A5 RENAME short "{deep}"
        S: A5 NO [LIMIT] …
        "#,
        logged_in!()
    );
    Conversation::new(&transcript).run();
}

/// RFC 3501 6.3.10's blurdybloop: 231 messages, UIDNEXT 44292.
fn status_store() -> Arc<MemStore> {
    let store = MemStore::new();
    store.create("blurdybloop");
    store.skip_to_uid("blurdybloop", 44061);
    for n in 1..=231 {
        let flags = if n <= 200 { "\\Seen" } else { "" };
        store.deliver("blurdybloop", &filler(n), flags, "01-Jan-2024 12:00:00 +0000");
    }
    store.claim("blurdybloop");
    store
}

#[test]
fn status() {
    // RFC 3501 6.3.10: the items come in the order asked for.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A042 STATUS blurdybloop (UIDNEXT MESSAGES)
        S: * STATUS blurdybloop (UIDNEXT 44292 MESSAGES 231)
        S: A042 OK …
        C: A043 STATUS blurdybloop (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)
        S: * STATUS blurdybloop (MESSAGES 231 RECENT 0 UIDNEXT 44292 UIDVALIDITY 3857529046 UNSEEN 31)
        S: A043 OK …
        C: A044 STATUS nosuchbox (MESSAGES)
        S: A044 NO …
        "#
    ))
    .store(status_store)
    .run();
}

#[test]
fn append_with_a_literal() {
    // RFC 3501 6.3.11's example, with APPENDUID (RFC 4315); with a date and
    // a LITERAL+ literal; to a missing mailbox: NO [TRYCREATE].
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A003 APPEND saved-messages (\Seen) {310}
        S: + ...
        C: Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
        C: From: Fred Foobar <foobar@Blurdybloop.COM>
        C: Subject: afternoon meeting
        C: To: mooch@owatagu.siam.edu
        C: Message-Id: <B27397-0100000@Blurdybloop.COM>
        C: MIME-Version: 1.0
        C: Content-Type: TEXT/PLAIN; CHARSET=US-ASCII
        C:
        C: Hello Joe, do you think we can meet at 3:30 tomorrow?
        C:
        S: A003 OK [APPENDUID 3857529046 1] …
        C: A004 APPEND saved-messages (\Flagged $Important) "17-Jul-1996 02:44:25 -0700" {133+}
        C: Date: Thu, 3 Feb 1994 10:00:00 +0000
        C: From: John Smith <smith@example.net>
        C: Subject: lunch
        C: To: alice@example.org
        C:
        C: Lunch at noon?
        C:
        S: A004 OK [APPENDUID 3857529046 2] …
        C: A005 APPEND nosuchbox {5}
        S: + ...
        C: hello
        S: A005 NO [TRYCREATE] …
        C: A006 SELECT saved-messages
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 2] …
        S: * OK [UIDVALIDITY 3857529046] …
        S: * OK [UIDNEXT 3] …
        S: A006 OK [READ-WRITE] …
        C: A007 FETCH 1:2 (UID FLAGS INTERNALDATE RFC822.SIZE)
        S: * 1 FETCH (UID 1 FLAGS (\Seen \Recent) INTERNALDATE "14-Nov-2023 22:13:20 +0000" RFC822.SIZE 310)
        S: * 2 FETCH (UID 2 FLAGS (\Flagged $Important \Recent) INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 133)
        S: A007 OK …
        C: A008 APPEND saved-messages {5}
        S: + ...
        C: hello
        S: * 3 EXISTS
        S: * 3 RECENT
        S: A008 OK [APPENDUID 3857529046 3] …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        store.create("saved-messages");
        store
    })
    .run();
    assert_eq!(store.flags_of("saved-messages", 1), "\\Seen");
}

// --- 6.4 selected ------------------------------------------------------------

#[test]
fn check_close_and_unselect() {
    // RFC 3501 6.4.1, 6.4.2 (CLOSE expunges silently, not after EXAMINE)
    // and RFC 3691 (UNSELECT does not expunge).
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: FXXZ EXAMINE INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 6 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 1] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 7] …
        S: FXXZ OK [READ-ONLY] …
        C: A340 CLOSE
        S: A340 OK …
        C: A341 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 6 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 1] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 7] …
        S: A341 OK [READ-WRITE] …
        C: FXXY CHECK
        S: FXXY OK …
        C: A342 UNSELECT
        S: A342 OK …
        C: A343 FETCH 1 FLAGS
        S: A343 BAD …
        C: A344 UNSELECT
        S: A344 BAD …
        C: A345 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 6 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 1] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 7] …
        S: A345 OK [READ-WRITE] …
        C: A346 CLOSE
        S: A346 OK …
        C: A347 CLOSE
        S: A347 BAD …
        C: A348 STATUS INBOX (MESSAGES)
        S: * STATUS INBOX (MESSAGES 3)
        S: A348 OK …
        "#
    ))
    .store(|| mailbox_of(6, |n| if n % 2 == 0 { "\\Deleted" } else { "" }))
    .run();
    assert_eq!(store.uids("INBOX"), [1, 3, 5]);
}

#[test]
fn expunge_sends_decreasing_sequence_numbers() {
    // RFC 3501 7.4.1's example: messages 3, 4, 7 and 11 are \Deleted.
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A201 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 11 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 12] …
        S: A201 OK [READ-WRITE] …
        C: A202 EXPUNGE
        S: * 3 EXPUNGE
        S: * 3 EXPUNGE
        S: * 5 EXPUNGE
        S: * 8 EXPUNGE
        S: A202 OK …
        C: A203 SEARCH ALL
        S: * SEARCH 1 2 3 4 5 6 7
        S: A203 OK …
        C: A204 UID SEARCH ALL
        S: * SEARCH 1 2 5 6 8 9 10
        S: A204 OK …
        C: A205 EXPUNGE
        S: A205 OK …
        "#
    ))
    .store(|| mailbox_of(11, |n| if [3, 4, 7, 11].contains(&n) { "\\Seen \\Deleted" } else { "\\Seen" }))
    .run();
    assert_eq!(store.uids("INBOX"), [1, 2, 5, 6, 8, 9, 10]);
    // The expunged messages' bytes are collected.
    assert_eq!(store.raw_count(), 7);
}

#[test]
fn uid_expunge_removes_only_the_given_uids() {
    // RFC 4315 2.1.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A200 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 5 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 6] …
        S: A200 OK [READ-WRITE] …
        C: A202 UID EXPUNGE 3:4
        S: * 3 EXPUNGE
        S: * 3 EXPUNGE
        S: A202 OK …
        C: A203 UID SEARCH DELETED
        S: * SEARCH 1 5
        S: A203 OK …
        "#
    ))
    .store(|| mailbox_of(5, |n| if n == 2 { "\\Seen" } else { "\\Seen \\Deleted" }))
    .run();
}

#[test]
fn expunges_elsewhere_wait_until_a_command_may_announce_them() {
    // RFC 3501 7.4.1: no EXPUNGE while answering FETCH, STORE or SEARCH
    // (sequence numbers must stay as the client knows them); NOOP, or a UID
    // command, announces it.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 3 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4] …
        S: a1 OK [READ-WRITE] …
        ! expunge 2
        C: a2 FETCH 1:3 (UID FLAGS)
        S: * 1 FETCH (UID 1 FLAGS (\Seen))
        S: * 2 FETCH (UID 2 FLAGS (\Seen))
        S: * 3 FETCH (UID 3 FLAGS (\Seen))
        S: a2 OK …
        C: a3 STORE 3 +FLAGS (\Flagged)
        S: * 3 FETCH (FLAGS (\Seen \Flagged))
        S: a3 OK …
        C: a4 SEARCH ALL
        S: * SEARCH 1 2 3
        S: a4 OK …
        C: a5 NOOP
        S: * 2 EXPUNGE
        S: a5 OK …
        ! expunge 3
        C: a6 UID FETCH 1:* FLAGS
        S: * 1 FETCH (UID 1 FLAGS (\Seen))
        S: * 2 FETCH (UID 3 FLAGS (\Seen \Flagged))
        S: * 2 EXPUNGE
        S: a6 OK …
        "#
    ))
    .store(|| mailbox_of(3, |_| "\\Seen"))
    .on("expunge 2", |store| store.remove("INBOX", 2))
    .on("expunge 3", |store| store.remove("INBOX", 3))
    .run();
}

#[test]
fn search() {
    // RFC 3501 6.4.4's examples; a literal in UTF-8; an unknown charset.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A281 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 4 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 2] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: A281 OK [READ-WRITE] …
        C: A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"
        S: * SEARCH 1 2
        S: A282 OK …
        C: A283 SEARCH TEXT "string not in mailbox"
        S: * SEARCH
        S: A283 OK …
        C: A284 SEARCH CHARSET UTF-8 TEXT {7}
        S: + ...
        C: Grüße
        S: * SEARCH 4
        S: A284 OK …
        C: A285 SEARCH CHARSET KOI8-R TEXT hello
        S: A285 NO [BADCHARSET (US-ASCII UTF-8)] …
        C: A286 SEARCH OR SUBJECT lunch SUBJECT meeting UNSEEN
        S: * SEARCH 3
        S: A286 OK …
        C: A287 SEARCH 2:* LARGER 200 BEFORE 1-Jan-1996
        S: * SEARCH 4
        S: A287 OK …
        C: A288 UID SEARCH HEADER Message-Id <B27397-0100000@cac.washington.edu>
        S: * SEARCH 2
        S: A288 OK …
        C: A289 SEARCH BODY minutes SEEN
        S: * SEARCH
        S: A289 OK …
        "#
    ))
    .store(four_messages)
    .run();
}

#[test]
fn fetch_data_items() {
    // RFC 3501 6.4.5 and 7.4.2: FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE
    // (7.4.2's example message), BODY, header fields, partial fetches;
    // BODY[] sets \Seen and says so, BODY.PEEK does not.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A653 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 4 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 2] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: A653 OK [READ-WRITE] …
        C: A654 FETCH 2 (FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY)
        S: * 2 FETCH (FLAGS (\Flagged) INTERNALDATE "17-Jul-1996 02:44:25 -0700" RFC822.SIZE 378
        S+ ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"
        S+ (("Terry Gray" NIL "gray" "cac.washington.edu")) (("Terry Gray" NIL "gray" "cac.washington.edu"))
        S+ (("Terry Gray" NIL "gray" "cac.washington.edu")) ((NIL NIL "imap" "cac.washington.edu"))
        S+ ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL
        S+ "<B27397-0100000@cac.washington.edu>")
        S+ BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 36 1))
        S: A654 OK …
        C: A655 FETCH 1:2 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])
        S: * 1 FETCH (FLAGS (\Seen \Flagged) BODY[HEADER.FIELDS (DATE FROM)] {90}
        S: Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
        S: From: Fred Foobar <foobar@Blurdybloop.COM>
        S:
        S: )
        S: * 2 FETCH (FLAGS (\Seen \Flagged) BODY[HEADER.FIELDS (DATE FROM)] {91}
        S: Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
        S: From: Terry Gray <gray@cac.washington.edu>
        S:
        S: )
        S: A655 OK …
        C: A656 FETCH 3 BODY.PEEK[HEADER]
        S: * 3 FETCH (BODY[HEADER] {117}
        S: Date: Thu, 3 Feb 1994 10:00:00 +0000
        S: From: John Smith <smith@example.net>
        S: Subject: lunch
        S: To: alice@example.org
        S:
        S: )
        S: A656 OK …
        C: A657 FETCH 3 (BODY[]<0.10> BODY.PEEK[TEXT]<4.100> BODY[]<1000.10>)
        S: * 3 FETCH (BODY[]<0> {10}
        S: Date: Thu, BODY[TEXT]<4> {12}
        S: h at noon?
        S:  BODY[]<1000> {0}
        S:  FLAGS (\Seen \Flagged))
        S: A657 OK …
        C: A658 FETCH 4 BODY[]
        S: * 4 FETCH (BODY[] {226}
        S: Date: Fri, 4 Feb 1994 11:00:00 +0100
        S: From: Bob <bob@example.net>
        S: Subject: greetings
        S: To: alice@example.org
        S: MIME-Version: 1.0
        S: Content-Type: text/plain; charset=utf-8
        S: Content-Transfer-Encoding: 8bit
        S:
        S: Grüße aus Berlin.
        S:  FLAGS (\Seen))
        S: A658 OK …
        C: A659 FETCH 4 FAST
        S: * 4 FETCH (FLAGS (\Seen) INTERNALDATE "04-Feb-1994 11:00:00 +0100" RFC822.SIZE 226)
        S: A659 OK …
        C: A660 FETCH 1 (RFC822.HEADER BODY[1] UID)
        S: * 1 FETCH (RFC822.HEADER {255}
        S: Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
        S: From: Fred Foobar <foobar@Blurdybloop.COM>
        S: Subject: afternoon meeting
        S: To: mooch@owatagu.siam.edu
        S: Message-Id: <B27397-0100000@Blurdybloop.COM>
        S: MIME-Version: 1.0
        S: Content-Type: TEXT/PLAIN; CHARSET=US-ASCII
        S:
        S:  BODY[1] {55}
        S: Hello Joe, do you think we can meet at 3:30 tomorrow?
        S:  UID 1)
        S: A660 OK …
        "#
    ))
    .store(four_messages)
    .run();
}

#[test]
fn store_flags() {
    // RFC 3501 6.4.6: +FLAGS answers with the new flags, .SILENT does not,
    // FLAGS replaces (keywords too, PERMANENTFLAGS has \*).
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A002 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 4 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 2] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: A002 OK [READ-WRITE] …
        C: A003 STORE 2:4 +FLAGS (\Deleted)
        S: * 2 FETCH (FLAGS (\Flagged \Deleted))
        S: * 3 FETCH (FLAGS (\Flagged \Deleted))
        S: * 4 FETCH (FLAGS (\Deleted))
        S: A003 OK …
        C: A004 STORE 2:3 -FLAGS.SILENT (\Deleted)
        S: A004 OK …
        C: A005 STORE 1 FLAGS (\Answered $Forwarded)
        S: * 1 FETCH (FLAGS (\Answered $Forwarded))
        S: A005 OK …
        C: A006 STORE 1:* -FLAGS (\Flagged \Answered)
        S: * 1 FETCH (FLAGS ($Forwarded))
        S: * 2 FETCH (FLAGS ())
        S: * 3 FETCH (FLAGS ())
        S: * 4 FETCH (FLAGS (\Deleted))
        S: A006 OK …
        C: A007 FETCH 1:4 FLAGS
        S: * 1 FETCH (FLAGS ($Forwarded))
        S: * 2 FETCH (FLAGS ())
        S: * 3 FETCH (FLAGS ())
        S: * 4 FETCH (FLAGS (\Deleted))
        S: A007 OK …
        "#
    ))
    .store(four_messages)
    .run();
    assert_eq!(store.flags_of("INBOX", 1), "$Forwarded");
    assert_eq!(store.flags_of("INBOX", 4), "\\Deleted");
}

#[test]
fn copy_keeps_flags_and_reports_copyuid() {
    // RFC 3501 6.4.7 with COPYUID (RFC 4315); a missing destination is NO [TRYCREATE].
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A002 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 4 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 2] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: A002 OK [READ-WRITE] …
        C: A003 COPY 2:4 MEETING
        S: A003 OK [COPYUID 3857529046 2:4 1:3] …
        C: A004 COPY 1 nosuchbox
        S: A004 NO [TRYCREATE] …
        C: A005 STATUS MEETING (MESSAGES RECENT UIDNEXT)
        S: * STATUS MEETING (MESSAGES 3 RECENT 3 UIDNEXT 4)
        S: A005 OK …
        C: A006 COPY 1 INBOX
        S: * 5 EXISTS
        S: * 1 RECENT
        S: A006 OK [COPYUID 3857529045 1 5] …
        "#
    ))
    .store(|| {
        let store = four_messages();
        store.create("MEETING");
        store
    })
    .run();
    assert_eq!(store.flags_of("MEETING", 1), "\\Flagged");
    assert_eq!(store.flags_of("INBOX", 5), "\\Seen \\Flagged");
    // Copies share the message's bytes.
    assert_eq!(store.raw_count(), 4);
}

/// RFC 3501 6.4.8's mailbox: messages 23 to 25 have UIDs 4827313, 4827943
/// and 4828442.
fn uid_store() -> Arc<MemStore> {
    let store = MemStore::new();
    store.skip_to_uid("INBOX", 4827291);
    for n in 1..=23 {
        store.deliver("INBOX", &filler(n), "\\Seen", "01-Jan-2024 12:00:00 +0000");
    }
    store.skip_to_uid("INBOX", 4827943);
    store.deliver("INBOX", &filler(24), "\\Seen", "01-Jan-2024 12:00:00 +0000");
    store.skip_to_uid("INBOX", 4828442);
    store.deliver("INBOX", &filler(25), "\\Seen", "01-Jan-2024 12:00:00 +0000");
    store.claim("INBOX");
    store.create("archive");
    store
}

#[test]
fn uid_commands() {
    // RFC 3501 6.4.8: UID FETCH, STORE, COPY and SEARCH take and give UIDs;
    // UIDs that do not exist are ignored; n:* with n past the last UID
    // still names the last message.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A998 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 25 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4828443] …
        S: A998 OK [READ-WRITE] …
        C: A999 UID FETCH 4827313:4828442 FLAGS
        S: * 23 FETCH (UID 4827313 FLAGS (\Seen))
        S: * 24 FETCH (UID 4827943 FLAGS (\Seen))
        S: * 25 FETCH (UID 4828442 FLAGS (\Seen))
        S: A999 OK …
        C: B000 UID FETCH 4828443:* (FLAGS)
        S: * 25 FETCH (UID 4828442 FLAGS (\Seen))
        S: B000 OK …
        C: B001 UID FETCH 1:100 FLAGS
        S: B001 OK …
        C: B002 UID STORE 4827943 +FLAGS (\Flagged)
        S: * 24 FETCH (FLAGS (\Seen \Flagged) UID 4827943)
        S: B002 OK …
        C: B003 UID SEARCH UID 4827313:* FLAGGED
        S: * SEARCH 4827943
        S: B003 OK …
        C: B004 UID SEARCH 23:*
        S: * SEARCH 4827313 4827943 4828442
        S: B004 OK …
        C: B005 UID COPY 4827313:4828442 archive
        S: B005 OK [COPYUID 3857529046 4827313,4827943,4828442 1:3] …
        C: B006 UID STORE 4827312:4827313 -FLAGS.SILENT (\Seen)
        S: B006 OK …
        C: B007 FETCH 22:23 FLAGS
        S: * 22 FETCH (FLAGS ())
        S: * 23 FETCH (FLAGS ())
        S: B007 OK …
        "#
    ))
    .store(uid_store)
    .run();
}

#[test]
fn move_reports_copyuid_and_expunges() {
    // RFC 6851 3.3's example (UID MOVE) and MOVE by sequence numbers.
    let store = Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a0 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 25 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4828443] …
        S: a0 OK [READ-WRITE] …
        C: a UID MOVE 4827943:4828442 archive
        S: * OK [COPYUID 3857529046 4827943,4828442 1:2] …
        S: * 24 EXPUNGE
        S: * 24 EXPUNGE
        S: a OK …
        C: b MOVE 2,4 archive
        S: * OK [COPYUID 3857529046 4827292,4827294 3:4] …
        S: * 2 EXPUNGE
        S: * 3 EXPUNGE
        S: b OK …
        C: c MOVE 1 nosuchbox
        S: c NO [TRYCREATE] …
        C: d STATUS archive (MESSAGES)
        S: * STATUS archive (MESSAGES 4)
        S: d OK …
        C: e FETCH 21 UID
        S: * 21 FETCH (UID 4827313)
        S: e OK …
        "#
    ))
    .store(uid_store)
    .run();
    assert_eq!(store.uids("archive"), [1, 2, 3, 4]);
    assert_eq!(store.uids("INBOX").len(), 21);
}

#[test]
fn idle_reports_changes_as_they_happen() {
    // RFC 2177's example: a message arrives while idling; other changes of
    // the selected mailbox too; changes elsewhere are not announced.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A001 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 3 EXISTS
        S: * 0 RECENT
        S: * OK [UNSEEN 1] …
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4] …
        S: A001 OK [READ-WRITE] …
        C: A002 IDLE
        S: + idling
        ! new mail
        S: * 4 EXISTS
        S: * 1 RECENT
        ! read elsewhere
        S: * 1 FETCH (FLAGS (\Seen) UID 1)
        ! other mailbox
        ! expunged elsewhere
        S: * 2 EXPUNGE
        C: DONE
        S: A002 OK …
        C: A003 FETCH 1:* (UID FLAGS)
        S: * 1 FETCH (UID 1 FLAGS (\Seen))
        S: * 2 FETCH (UID 3 FLAGS ())
        S: * 3 FETCH (UID 4 FLAGS (\Recent))
        S: A003 OK …
        C: A004 IDLE
        S: + idling
        C: done
        S: A004 OK …
        "#
    ))
    .store(|| {
        let store = mailbox_of(3, |_| "");
        store.create("Other");
        store
    })
    .on("new mail", |store| {
        store.deliver("INBOX", &crlf(SMITH), "", "03-Feb-1994 10:00:00 +0000");
    })
    .on("read elsewhere", |store| store.flag("INBOX", 1, FlagOperation::Add, "\\Seen"))
    .on("other mailbox", |store| {
        store.deliver("Other", &crlf(SMITH), "", "03-Feb-1994 10:00:00 +0000");
    })
    .on("expunged elsewhere", |store| store.remove("INBOX", 2))
    .run();
}

#[test]
fn idle_before_login_or_without_a_mailbox() {
    // IDLE needs the authenticated state; without a selected mailbox there
    // is nothing to report but it is allowed (RFC 2177).
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a1 IDLE
        S: a1 BAD …
        C: a2 LOGIN alice@example.org s3cret-mail-token
        S: a2 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a3 IDLE
        S: + idling
        ! new mail
        C: DONE
        S: a3 OK …
        "#,
    )
    .on("new mail", |store| {
        store.deliver("INBOX", &filler(1), "", "01-Jan-2024 12:00:00 +0000");
    })
    .run();
}

// --- bad input ----------------------------------------------------------------

#[test]
fn unknown_and_malformed_commands_get_bad_and_the_session_goes_on() {
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 FROBNICATE INBOX
        S: a1 BAD …
        C: a2 NOOP
        S: a2 OK …
        C: a3 FETCH 1 FLAGS
        S: a3 BAD …
        C: a4 SELECT
        S: a4 BAD …
        C: \x00\xff junk
        S: * BAD …
        C: a5 NOOP
        S: a5 OK …
        C: a6 LIST "" "unterminated
        S: a6 BAD …
        C: a7 NOOP
        S: a7 OK …
        "#
    ))
    .run();
}

#[test]
fn commands_in_the_wrong_state() {
    // RFC 3501 6.3 and 6.4 commands before login are BAD (or NO); selected
    // state commands without a mailbox are BAD.
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a1 SELECT INBOX
        S: a1 BAD …
        C: a2 LIST "" *
        S: a2 BAD …
        C: a3 APPEND INBOX {5}
        S: + ...
        C: hello
        S: a3 BAD …
        C: a4 FETCH 1 FLAGS
        S: a4 BAD …
        C: a5 LOGIN alice@example.org s3cret-mail-token
        S: a5 OK [CAPABILITY IMAP4REV1 IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a6 FETCH 1 FLAGS
        S: a6 BAD …
        C: a7 EXPUNGE
        S: a7 BAD …
        C: a8 CLOSE
        S: a8 BAD …
        C: a9 STORE 1 +FLAGS (\Seen)
        S: a9 BAD …
        C: a10 UID SEARCH ALL
        S: a10 BAD …
        "#,
    )
    .run();
}

#[test]
fn bad_sequence_sets() {
    // Sequence numbers past the last message are BAD (RFC 3501 9,
    // seq-number); UIDs past it are not (6.4.8).
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 3 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4] …
        S: a1 OK [READ-WRITE] …
        C: a2 FETCH 99 FLAGS
        S: a2 BAD …
        C: a3 FETCH 2:4 FLAGS
        S: a3 BAD …
        C: a4 STORE 4 +FLAGS (\Seen)
        S: a4 BAD …
        C: a5 COPY 1,7 INBOX
        S: a5 BAD …
        C: a6 FETCH 0 FLAGS
        S: a6 BAD …
        C: a7 UID FETCH 99 FLAGS
        S: a7 OK …
        C: a8 FETCH 3:* FLAGS
        S: * 3 FETCH (FLAGS (\Seen))
        S: a8 OK …
        "#
    ))
    .store(|| mailbox_of(3, |_| "\\Seen"))
    .run();
}

#[test]
fn invalid_modified_utf7_names() {
    // RFC 3501 5.1.3: "&Jjo" is not modified UTF-7 (no "-"), nor is "&AGE-"
    // (printable ASCII must not be encoded); "&Jjo-" is "☺".
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT &Jjo
        S: a1 BAD …
        C: a2 CREATE &AGE-
        S: a2 BAD …
        C: a3 CREATE &Jjo-
        S: a3 OK …
        C: a4 LIST "" &Jjo-
        S: * LIST (\HasNoChildren) "/" &Jjo-
        S: a4 OK …
        C: a5 STATUS &Jjo (MESSAGES)
        S: a5 BAD …
        C: a6 NOOP
        S: a6 OK …
        "#
    ))
    .run();
}

#[test]
fn a_literal_over_the_limit_is_refused_and_the_session_goes_on() {
    // A synchronizing literal over the limit is refused before it is sent;
    // the client does not send it.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 APPEND INBOX {67108865}
        S: a1 BAD ...
        C: a2 NOOP
        S: a2 OK …
        C: a3 APPEND INBOX {5}
        S: + ...
        C: hello
        S: a3 OK [APPENDUID 3857529045 1] …
        "#
    ))
    .run();
    // A non-synchronizing one (LITERAL+) arrives anyway: read and dropped.
    let big = "x".repeat(200);
    Conversation::new(&format!(
        "{}C: a1 APPEND INBOX {{200+}}\nC: {big}\nS: a1 BAD …\nC: a2 NOOP\nS: a2 OK …\n",
        logged_in!()
    ))
    .max_literal(100)
    .run();
}

#[test]
fn bare_line_feeds_are_accepted() {
    // The gateway is lenient about LF without CR (crlf_relaxed).
    Conversation::new(concat!(logged_in!(), "C| a1 NOOP\\x0a\nS: a1 OK …\nC| a2 NOOP\\x0d\\x0a\nS: a2 OK …\n")).run();
}

// --- cases that once failed ----------------------------------------------
//
// The driver copies services/imap/src/gateway.rs's loop: commands pipelined
// behind LOGOUT, a cut-off or STARTTLS are not run.

#[test]
fn twenty_protocol_errors_in_a_row_close_the_connection() {
    let mut script = String::from(logged_in!());
    for n in 1..=20 {
        script.push_str(&format!("C: b{n} BOGUS\nS: b{n} BAD …\n"));
    }
    script.push_str("S: * BYE …\n-- closed --\nC: a1 NOOP\n");
    Conversation::new(&script).run();
}

#[test]
fn nothing_is_answered_after_logout() {
    // RFC 3501 6.1.3: after LOGOUT the server closes the connection; a
    // command the client pipelined behind it is not executed.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 LOGOUT
        C: a2 NOOP
        S: * BYE …
        S: a1 OK …
        -- closed --
        "#
    ))
    .run();
}

#[test]
fn a_malformed_line_behind_logout_is_not_answered() {
    // Found by scripts/fuzz (imap_session): a line that does not parse,
    // pipelined behind LOGOUT, was answered BAD after the LOGOUT's OK when it
    // came in the same read (and not when it came later): nothing is
    // answered after LOGOUT, whatever the client sent behind it.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 LOGOUT
        C: 2PO OaN
        C: )
        S: * BYE …
        S: a1 OK …
        -- closed --
        "#
    ))
    .run();
}

#[test]
fn idle_or_authenticate_behind_logout_is_not_answered() {
    // Found by scripts/fuzz (imap_session): IDLE pipelined behind LOGOUT was
    // answered BAD after the LOGOUT's OK when it came in the same read.
    for behind in ["C: A002 IDLE\nC: DONE", "C: A002 AUTHENTICATE PLAIN\nC: *", "C: A002 AUTHENTICATE PLAIN AGFsaWNl"] {
        Conversation::new(&format!(
            "{}\nC: a1 LOGOUT\n{behind}\nC: a3 NOOP\nS: * BYE …\nS: a1 OK …\n-- closed --\n",
            logged_in!()
        ))
        .run();
    }
}

#[test]
fn lsub_percent_shows_unsubscribed_parents_as_noselect() {
    // RFC 3501 6.3.9: "foo/bar" subscribed, "foo" not: LSUB with "%" MUST
    // return "foo", flagged \Noselect.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: A002 LSUB "news/" "comp/%"
        S: * LSUB (\Noselect) "/" news/comp/mail
        S: A002 OK …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        store.create("news/comp/mail/mime");
        store.subscribe("news/comp/mail/mime");
        store
    })
    .run();
}

#[test]
fn examine_counts_recent_messages_with_uid_gaps() {
    // Three messages no session has seen (UIDs 1 to 3; 4 was expunged):
    // STATUS, EXAMINE and SELECT must agree on RECENT (RFC 3501 6.3.2:
    // EXAMINE reports the same as SELECT and claims nothing).
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 STATUS INBOX (MESSAGES RECENT)
        S: * STATUS INBOX (MESSAGES 3 RECENT 3)
        S: a1 OK …
        C: a2 EXAMINE INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 3 EXISTS
        S: * 3 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: a2 OK [READ-ONLY] …
        C: a3 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 3 EXISTS
        S: * 3 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 5] …
        S: a3 OK [READ-WRITE] …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        for n in 1..=4 {
            store.deliver("INBOX", &filler(n), "\\Seen", "01-Jan-2024 12:00:00 +0000");
        }
        store.remove("INBOX", 4);
        store
    })
    .run();
}

#[test]
fn fetching_a_message_expunged_elsewhere() {
    // Another client expunged message 2 (its bytes are gone). Until the
    // session may announce the EXPUNGE, a FETCH of its body must not be
    // answered OK without data (RFC 2180 4.1: keep serving it, or NO, or
    // answer with empty data).
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 3 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 4] …
        S: a1 OK [READ-WRITE] …
        ! expunge 2
        C: a2 FETCH 2 BODY.PEEK[TEXT]
        S: a2 NO [EXPUNGEISSUED] …
        C: a3 NOOP
        S: * 2 EXPUNGE
        S: a3 OK …
        "#
    ))
    .store(|| mailbox_of(3, |_| "\\Seen"))
    .on("expunge 2", |store| store.remove("INBOX", 2))
    .run();
}

#[test]
fn a_failed_delete_of_the_selected_mailbox_keeps_it_selected() {
    // RFC 3501 6.3.4: DELETE INBOX fails; nothing else may change.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 1 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529045] …
        S: * OK [UIDNEXT 2] …
        S: a1 OK [READ-WRITE] …
        C: a2 DELETE INBOX
        S: a2 NO …
        C: a3 FETCH 1 FLAGS
        S: * 1 FETCH (FLAGS (\Seen))
        S: a3 OK …
        "#
    ))
    .store(|| mailbox_of(1, |_| "\\Seen"))
    .run();
}

#[test]
fn renaming_the_selected_mailbox() {
    // RFC 3501 leaves it open whether the mailbox stays selected; if the
    // session keeps it selected it must keep working under the new name.
    Conversation::new(concat!(
        logged_in!(),
        r#"
        C: a1 SELECT foo
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft \*)] …
        S: * 1 EXISTS
        S: * 0 RECENT
        S: * OK [UIDVALIDITY 3857529046] …
        S: * OK [UIDNEXT 2] …
        S: a1 OK [READ-WRITE] …
        C: a2 RENAME foo bar
        S: a2 OK …
        C: a3 STORE 1 +FLAGS (\Flagged)
        S: * 1 FETCH (FLAGS (\Seen \Flagged))
        S: a3 OK …
        "#
    ))
    .store(|| {
        let store = MemStore::new();
        store.create("foo");
        store.deliver("foo", &filler(1), "\\Seen", "01-Jan-2024 12:00:00 +0000");
        store.claim("foo");
        store
    })
    .run();
}

#[test]
fn a_command_pipelined_after_the_fifth_failed_login_does_not_keep_the_connection() {
    Conversation::new(
        r#"
        S: * OK [CAPABILITY IMAP4REV1 AUTH=PLAIN SASL-IR IDLE UIDPLUS MOVE NAMESPACE LITERAL+ ENABLE ID UNSELECT BINARY SPECIAL-USE CHILDREN] …
        C: a1 LOGIN alice@example.org guess1
        S: a1 NO [AUTHENTICATIONFAILED] …
        C: a2 LOGIN alice@example.org guess2
        S: a2 NO [AUTHENTICATIONFAILED] …
        C: a3 LOGIN alice@example.org guess3
        S: a3 NO [AUTHENTICATIONFAILED] …
        C: a4 LOGIN alice@example.org guess4
        S: a4 NO [AUTHENTICATIONFAILED] …
        C: a5 LOGIN alice@example.org guess5
        C: a6 NOOP
        S: a5 NO [AUTHENTICATIONFAILED] …
        -- closed --
        "#,
    )
    .run();
}

#[test]
fn a_long_fetch_is_answered_in_order_and_whole_before_the_next_command() {
    // More messages than a batch of flags (1,000) or of contents (200):
    // the session answers a batch at a time as the client reads; every
    // response comes in order, the completion after the last, and the
    // commands pipelined behind it only then.
    const COUNT: u32 = 2345;
    let seen = |n: u32| if n.is_multiple_of(3) { "\\Seen" } else { "" };
    let mut transcript = String::from(logged_in!());
    transcript.push_str("C: b EXAMINE INBOX\nC: c FETCH 1:* (FLAGS)\nC: d UID FETCH 1001:1450 (BODY.PEEK[TEXT])\n");
    transcript.push_str("C: e NOOP\n");
    transcript.push_str("S: * FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\n");
    transcript.push_str("S: * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] …\n");
    transcript.push_str(&format!("S: * {COUNT} EXISTS\nS: * 0 RECENT\nS: * OK [UNSEEN 1] …\n"));
    transcript.push_str(&format!("S: * OK [UIDVALIDITY 3857529045] …\nS: * OK [UIDNEXT {}] …\n", COUNT + 1));
    transcript.push_str("S: b OK [READ-ONLY] …\n");
    for n in 1..=COUNT {
        transcript.push_str(&format!("S: * {n} FETCH (FLAGS ({}))\n", seen(n)));
    }
    transcript.push_str("S: c OK …\n");
    for n in 1001..=1450 {
        let body = format!("body {n}");
        transcript.push_str(&format!("S: * {n} FETCH (UID {n} BODY[TEXT] {{{}}}\nS: {body}\nS: )\n", body.len() + 2));
    }
    transcript.push_str("S: d OK …\nS: e OK …\n");
    Conversation::new(&transcript).store(move || mailbox_of(COUNT, seen)).run();
}

/// The responses of a server's output, each FETCH with its items sorted
/// (a streamed body comes last; items may come in any order).
fn responses_of(output: &[u8]) -> Vec<String> {
    use bitmask_imap::imap_types::response::{Data, Response};
    use imap_codec::decode::Decoder as _;
    let codec = imap_codec::ResponseCodec::default();
    let mut rest = output;
    let mut responses = Vec::new();
    while !rest.is_empty() {
        let (remaining, response) = codec.decode(rest).unwrap_or_else(|error| {
            panic!("undecodable output {error:?} at {:?}", String::from_utf8_lossy(&rest[..rest.len().min(200)]))
        });
        responses.push(match response {
            Response::Data(Data::Fetch { seq, items }) => {
                let mut items: Vec<String> = items.into_iter().map(|item| format!("{item:?}")).collect();
                items.sort();
                format!("* {seq} FETCH {items:?}")
            }
            Response::Status(status) => format!("{status:?}"),
            other => format!("{other:?}"),
        });
        rest = remaining;
    }
    responses
}

#[test]
fn a_streamed_body_is_what_a_body_read_whole_would_be() {
    // Big bodies (BODY[], RFC822, their partial forms) are sent by the
    // connection from the store, after the responses before them; the
    // client must see the same data as when the session reads the bodies
    // itself, in the same order, whatever the sizes, the ranges, the NUL
    // octets and the mix of streamed and read messages in one batch.
    let seed = std::env::var("STREAM_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("STREAM_SEED={seed}");
    let mut state = seed | 1;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below.max(1)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for round in 0..40 {
        let count = 1 + next(12) as u32;
        let messages: Vec<String> = (0..count)
            .map(|n| {
                let length = [0, 5, 300, 1200, 5000][next(5) as usize] + next(100) as usize;
                let body: String = (0..length)
                    .map(|_| match next(40) {
                        0 => '\0',
                        1 => '\n',
                        other => char::from(b'a' + (other % 26) as u8),
                    })
                    .collect();
                crlf(&format!("Subject: message {n} of round {round}\n\n{body}"))
            })
            .collect();
        let store = || {
            let store = MemStore::new();
            for message in &messages {
                store.deliver("INBOX", message, "", "17-Jul-1996 02:44:25 -0700");
            }
            store
        };
        let (origin, length) = (next(3000), 1 + next(3000));
        let mut commands = vec![
            "b FETCH 1:* BODY.PEEK[]\r\n".to_owned(),
            format!("c FETCH 1:* (UID FLAGS BODY.PEEK[]<{origin}.{length}>)\r\n"),
            "d UID FETCH 1:* (RFC822 INTERNALDATE)\r\n".to_owned(),
            "e FETCH 1:* (BODY[] RFC822.SIZE)\r\n".to_owned(),
            format!("f FETCH {}:* (BODY.PEEK[] BODY.PEEK[TEXT])\r\n", 1 + next(u64::from(count))),
            "g FETCH 1:* (BODY.PEEK[] RFC822)\r\n".to_owned(),
        ];
        // Another client expunges a message; its bytes go before this
        // session may announce it.
        let gone = 1 + next(u64::from(count)) as u32;
        commands.push(format!("h FETCH {gone} BODY.PEEK[]\r\n"));
        commands.push("i NOOP\r\n".to_owned());
        let stream_from = [0, 100, 2000, 6000][next(4) as usize];
        let outputs: Vec<Vec<String>> = [u64::MAX, stream_from]
            .into_iter()
            .map(|threshold| {
                runtime.block_on(async {
                    let store = store();
                    let mut driver = Driver::connect(store.clone(), support::MAX_LITERAL).await;
                    driver.stream_bodies_from(threshold);
                    driver.feed(b"a LOGIN alice@example.org s3cret-mail-token\r\na SELECT INBOX\r\n").await;
                    let start = driver.output().len();
                    for command in &commands {
                        if command.starts_with('h') {
                            store.remove("INBOX", gone);
                        }
                        driver.feed(command.as_bytes()).await;
                    }
                    responses_of(&driver.output_bytes()[start..])
                })
            })
            .collect();
        assert_eq!(outputs[0], outputs[1], "round {round}, streaming from {stream_from} bytes (STREAM_SEED={seed})");
        assert!(
            outputs[0].iter().any(|response| response.contains("EXPUNGEISSUED")),
            "round {round}: {:?}",
            &outputs[0][outputs[0].len() - 3..]
        );
    }
}
