//! SEARCH (RFC 3501 section 6.4.4) for one message, without I/O.
//!
//! The caller walks the mailbox and asks [`matches`] (or [`matches_all`] for
//! the implicitly ANDed criteria of a SEARCH command) about each message. A
//! [`Candidate`] carries what the index knows (numbers, flags, internal date,
//! size) and a loader for the raw message, which is called at most once per
//! evaluation and only when a key needs headers, body or the Date: header
//! ([`needs_raw`] tells in advance).
//!
//! Where RFC 3501 leaves room, this follows Dovecot:
//! - BEFORE/ON/SINCE compare the date part of the internal date in the
//!   internal date's own timezone; SENTBEFORE/SENTON/SENTSINCE the date part of
//!   the Date: header as written, falling back to the internal date when the
//!   message has no parseable Date:.
//! - String keys are case-insensitive substring matches on decoded text:
//!   RFC 2047 encoded words decoded, addresses shown as `Name <addr>`, body
//!   parts with their transfer encoding undone and converted to UTF-8. BODY
//!   searches the text parts (`text/*`, and nested `message/rfc822` messages,
//!   headers included); binary parts are not searched.
//! - A header key with an empty string matches every message that has that
//!   header; BODY and TEXT with an empty string match every message.
//! - Sequence and UID ranges may be given in either order; `*` is the number
//!   of messages (sequence numbers) or the highest UID in the mailbox.
//!
//! A message whose bytes cannot be loaded matches no key that needs them.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate};
use mail_parser::parsers::MessageStream;
use mail_parser::{Addr, Address, Header, HeaderValue, Message, PartType};

use crate::imap_types::core::{AString, Charset};
use crate::imap_types::search::SearchKey;
use crate::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

/// The charsets SEARCH accepts, as named in `NO [BADCHARSET (US-ASCII UTF-8)]`.
pub const SUPPORTED_CHARSETS: [&str; 2] = ["US-ASCII", "UTF-8"];

/// The flags of one message, as SEARCH sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub seen: bool,
    pub answered: bool,
    pub flagged: bool,
    pub deleted: bool,
    pub draft: bool,
    /// `\Recent`: this session is the first to see the message.
    pub recent: bool,
    /// Keywords (`$Forwarded`, `Work`, ...); compared case-insensitively.
    pub keywords: Vec<String>,
}

impl Flags {
    /// Whether the keyword is set, ignoring ASCII case.
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|candidate| candidate.eq_ignore_ascii_case(keyword))
    }
}

/// Loads the raw message (RFC 5322 bytes); `None` when it cannot be loaded.
pub type RawLoader<'a> = dyn Fn() -> Option<Cow<'a, [u8]>> + 'a;

/// What SEARCH needs of one message; the raw bytes only when a key needs them.
pub struct Candidate<'a> {
    /// Message sequence number (1-based).
    pub seq: u32,
    pub uid: u32,
    pub flags: &'a Flags,
    pub internal_date: DateTime<FixedOffset>,
    /// RFC822.SIZE.
    pub size: u64,
    /// Called at most once per [`matches`] call, and only if a key needs the
    /// headers or the body.
    pub raw: &'a RawLoader<'a>,
}

impl fmt::Debug for Candidate<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Candidate")
            .field("seq", &self.seq)
            .field("uid", &self.uid)
            .field("flags", &self.flags)
            .field("internal_date", &self.internal_date)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What `*` stands for in sequence sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The number of messages in the mailbox (sequence number `*`).
    pub max_seq: u32,
    /// The highest UID in the mailbox (UID `*`).
    pub max_uid: u32,
}

/// SEARCH CHARSET named a charset other than [`SUPPORTED_CHARSETS`]; the
/// server answers `NO [BADCHARSET (US-ASCII UTF-8)]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("search charset {charset} is not supported")]
pub struct UnsupportedCharset {
    pub charset: String,
}

/// Accepts no charset, US-ASCII and UTF-8 (case-insensitively).
pub fn check_charset(charset: Option<&Charset<'_>>) -> Result<(), UnsupportedCharset> {
    match charset {
        None => Ok(()),
        Some(charset) => {
            let name: &str = charset.as_ref();
            if SUPPORTED_CHARSETS.iter().any(|supported| supported.eq_ignore_ascii_case(name)) {
                Ok(())
            } else {
                Err(UnsupportedCharset { charset: name.to_owned() })
            }
        }
    }
}

/// Whether any key needs the message bytes (headers, body, text, sent dates).
pub fn needs_raw(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_raw),
        SearchKey::Not(key) => needs_raw(key),
        SearchKey::Or(left, right) => needs_raw(left) || needs_raw(right),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        SearchKey::SequenceSet(_)
        | SearchKey::All
        | SearchKey::Answered
        | SearchKey::Before(_)
        | SearchKey::Deleted
        | SearchKey::Draft
        | SearchKey::Flagged
        | SearchKey::Keyword(_)
        | SearchKey::Larger(_)
        | SearchKey::New
        | SearchKey::Old
        | SearchKey::On(_)
        | SearchKey::Recent
        | SearchKey::Seen
        | SearchKey::Since(_)
        | SearchKey::Smaller(_)
        | SearchKey::Uid(_)
        | SearchKey::Unanswered
        | SearchKey::Undeleted
        | SearchKey::Undraft
        | SearchKey::Unflagged
        | SearchKey::Unkeyword(_)
        | SearchKey::Unseen => false,
    }
}

/// Whether the message matches the key.
pub fn matches(key: &SearchKey<'_>, message: &Candidate<'_>, limits: &Limits) -> bool {
    matches_all(std::slice::from_ref(key), message, limits)
}

/// Whether the message matches all keys: the criteria of one SEARCH command,
/// which are ANDed. The raw message is loaded at most once for all of them.
pub fn matches_all(criteria: &[SearchKey<'_>], message: &Candidate<'_>, limits: &Limits) -> bool {
    let raw = OnceCell::new();
    let evaluation = Evaluation { candidate: message, limits, raw: &raw, loaded: OnceCell::new() };
    evaluation.all(criteria)
}

/// One message under evaluation; loads and parses the raw message on first
/// need and keeps the decoded text for further keys.
struct Evaluation<'e, 'a> {
    candidate: &'e Candidate<'a>,
    limits: &'e Limits,
    raw: &'e OnceCell<Option<Cow<'a, [u8]>>>,
    loaded: OnceCell<Option<Loaded<'e>>>,
}

impl<'e> Evaluation<'e, '_> {
    /// ANDs the keys, the ones that need no message bytes first.
    fn all(&self, keys: &[SearchKey<'_>]) -> bool {
        keys.iter().filter(|key| !needs_raw(key)).all(|key| self.matches(key))
            && keys.iter().filter(|key| needs_raw(key)).all(|key| self.matches(key))
    }

    fn matches(&self, key: &SearchKey<'_>) -> bool {
        let candidate = self.candidate;
        let flags = candidate.flags;
        match key {
            SearchKey::And(keys) => self.all(keys.as_ref()),
            SearchKey::Not(key) => !self.matches(key),
            SearchKey::Or(left, right) => {
                // The side that needs no message bytes first.
                let (first, second) = if needs_raw(left) && !needs_raw(right) { (right, left) } else { (left, right) };
                self.matches(first) || self.matches(second)
            }
            SearchKey::All => true,
            SearchKey::SequenceSet(set) => contains(set, candidate.seq, self.limits.max_seq),
            SearchKey::Uid(set) => contains(set, candidate.uid, self.limits.max_uid),

            SearchKey::Answered => flags.answered,
            SearchKey::Unanswered => !flags.answered,
            SearchKey::Deleted => flags.deleted,
            SearchKey::Undeleted => !flags.deleted,
            SearchKey::Draft => flags.draft,
            SearchKey::Undraft => !flags.draft,
            SearchKey::Flagged => flags.flagged,
            SearchKey::Unflagged => !flags.flagged,
            SearchKey::Seen => flags.seen,
            SearchKey::Unseen => !flags.seen,
            SearchKey::Recent => flags.recent,
            SearchKey::Old => !flags.recent,
            SearchKey::New => flags.recent && !flags.seen,
            SearchKey::Keyword(keyword) => flags.has_keyword(keyword.as_ref()),
            SearchKey::Unkeyword(keyword) => !flags.has_keyword(keyword.as_ref()),

            SearchKey::Larger(size) => candidate.size > u64::from(*size),
            SearchKey::Smaller(size) => candidate.size < u64::from(*size),

            SearchKey::Before(date) => candidate.internal_date.date_naive() < *date.as_ref(),
            SearchKey::On(date) => candidate.internal_date.date_naive() == *date.as_ref(),
            SearchKey::Since(date) => candidate.internal_date.date_naive() >= *date.as_ref(),
            SearchKey::SentBefore(date) => self.sent_date() < *date.as_ref(),
            SearchKey::SentOn(date) => self.sent_date() == *date.as_ref(),
            SearchKey::SentSince(date) => self.sent_date() >= *date.as_ref(),

            SearchKey::From(needle) => self.address_contains("From", needle),
            SearchKey::To(needle) => self.address_contains("To", needle),
            SearchKey::Cc(needle) => self.address_contains("Cc", needle),
            SearchKey::Bcc(needle) => self.address_contains("Bcc", needle),
            SearchKey::Subject(needle) => self.header_contains("Subject", needle),
            SearchKey::Header(name, needle) => self.header_contains(&String::from_utf8_lossy(name.as_ref()), needle),
            SearchKey::Body(needle) => self.body_contains(&folded(needle)),
            SearchKey::Text(needle) => {
                let needle = folded(needle);
                self.loaded()
                    .is_some_and(|loaded| loaded.header_lines().iter().any(|line| line.line.contains(needle.as_str())))
                    || self.body_contains(&needle)
            }
        }
    }

    /// The raw message, loaded and parsed on first use.
    fn loaded(&self) -> Option<&Loaded<'e>> {
        self.loaded
            .get_or_init(|| {
                let raw = self.raw.get_or_init(|| (self.candidate.raw)());
                raw.as_deref().map(Loaded::new)
            })
            .as_ref()
    }

    /// The Date: header's date as written, else the internal date's.
    fn sent_date(&self) -> NaiveDate {
        self.loaded()
            .and_then(|loaded| loaded.message.as_ref())
            .and_then(|message| message.date())
            .filter(|date| date.is_valid())
            .and_then(|date| NaiveDate::from_ymd_opt(i32::from(date.year), u32::from(date.month), u32::from(date.day)))
            .unwrap_or_else(|| self.candidate.internal_date.date_naive())
    }

    /// SUBJECT and HEADER: the decoded value of any header of that name.
    fn header_contains(&self, name: &str, needle: &AString<'_>) -> bool {
        let needle = folded(needle);
        self.loaded().is_some_and(|loaded| {
            loaded
                .header_lines()
                .iter()
                .filter(|line| line.name.eq_ignore_ascii_case(name))
                .any(|line| line.value().contains(needle.as_str()))
        })
    }

    /// FROM, TO, CC and BCC: the addresses as `Name <addr>`.
    fn address_contains(&self, name: &str, needle: &AString<'_>) -> bool {
        let needle = folded(needle);
        let Some(loaded) = self.loaded() else {
            return false;
        };
        let Some(message) = &loaded.message else {
            return false;
        };
        message.headers().iter().filter(|header| header.name().eq_ignore_ascii_case(name)).any(|header| {
            let shown = match header.value() {
                HeaderValue::Address(address) => show_address(address),
                _ => decoded_value(message.raw_message(), header),
            };
            shown.to_lowercase().contains(needle.as_str())
        })
    }

    fn body_contains(&self, needle: &str) -> bool {
        if needle.is_empty() {
            return true;
        }
        self.loaded().is_some_and(|loaded| loaded.body_texts().iter().any(|text| text.contains(needle)))
    }
}

/// A loaded message and, computed on first need, its decoded text in
/// lower case.
struct Loaded<'m> {
    raw: &'m [u8],
    message: Option<Message<'m>>,
    header_lines: OnceCell<Vec<HeaderLine>>,
    body_texts: OnceCell<Vec<String>>,
}

impl<'m> Loaded<'m> {
    fn new(raw: &'m [u8]) -> Self {
        Loaded {
            raw,
            // A message too deeply nested for mail-parser matches on nothing it holds.
            message: bitmask_mime::parse(raw),
            header_lines: OnceCell::new(),
            body_texts: OnceCell::new(),
        }
    }

    /// The top-level header fields, decoded.
    fn header_lines(&self) -> &[HeaderLine] {
        self.header_lines.get_or_init(|| match &self.message {
            Some(message) => header_lines(message),
            None => Vec::new(),
        })
    }

    /// The decoded text of the text parts (and of nested messages).
    fn body_texts(&self) -> &[String] {
        self.body_texts.get_or_init(|| match &self.message {
            Some(message) => collect_body_texts(message),
            // Not a message mail-parser recognises (no header): all body.
            None => vec![String::from_utf8_lossy(self.raw).to_lowercase()],
        })
    }
}

/// One header field as `name: decoded value`, in lower case.
struct HeaderLine {
    /// The field name as written.
    name: String,
    /// `name: value`, lower case.
    line: String,
    /// Where the value starts in `line`.
    value_start: usize,
}

impl HeaderLine {
    fn new(name: &str, value: &str) -> Self {
        let mut line = name.to_lowercase();
        line.push_str(": ");
        let value_start = line.len();
        line.push_str(&value.to_lowercase());
        HeaderLine { name: name.to_owned(), line, value_start }
    }

    fn value(&self) -> &str {
        self.line.get(self.value_start..).unwrap_or_default()
    }
}

fn header_lines(message: &Message<'_>) -> Vec<HeaderLine> {
    message
        .headers()
        .iter()
        .map(|header| HeaderLine::new(header.name(), &decoded_value(message.raw_message(), header)))
        .collect()
}

/// The decoded text parts of the message and of the messages nested in it
/// (with their header: a message/rfc822 body is text to Dovecot), in lower
/// case. Iterative: nesting depth is the sender's choice.
fn collect_body_texts(message: &Message<'_>) -> Vec<String> {
    let mut texts = Vec::new();
    let mut pending = vec![message];
    while let Some(message) = pending.pop() {
        for part in &message.parts {
            match &part.body {
                PartType::Text(text) | PartType::Html(text) => texts.push(text.to_lowercase()),
                PartType::Message(nested) => {
                    texts.extend(header_lines(nested).into_iter().map(|line| line.line));
                    pending.push(nested);
                }
                PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Multipart(_) => {}
            }
        }
    }
    texts
}

/// A header's value unfolded, with RFC 2047 encoded words decoded.
fn decoded_value(raw: &[u8], header: &Header<'_>) -> String {
    let Some(bytes) = raw.get(header.offset_start() as usize..header.offset_end() as usize) else {
        return shown_value(header.value());
    };
    // The unstructured parser wants the line end that closes the field.
    let bytes: Cow<'_, [u8]> = if bytes.ends_with(b"\n") {
        Cow::Borrowed(bytes)
    } else {
        let mut owned = bytes.to_vec();
        owned.push(b'\n');
        Cow::Owned(owned)
    };
    match MessageStream::new(&bytes).parse_unstructured() {
        HeaderValue::Text(text) => text.into_owned(),
        _ => String::new(),
    }
}

/// A parsed header value as text, when its raw bytes are not at hand.
fn shown_value(value: &HeaderValue<'_>) -> String {
    match value {
        HeaderValue::Address(address) => show_address(address),
        HeaderValue::Text(text) => text.to_string(),
        HeaderValue::TextList(texts) => texts.join(", "),
        HeaderValue::DateTime(date) => date.to_rfc822(),
        HeaderValue::ContentType(content_type) => match content_type.subtype() {
            Some(subtype) => format!("{}/{subtype}", content_type.ctype()),
            None => content_type.ctype().to_owned(),
        },
        HeaderValue::Received(_) | HeaderValue::Empty => String::new(),
    }
}

/// Addresses as a mail client shows them: `Name <addr>, addr, group: ...;`.
fn show_address(address: &Address<'_>) -> String {
    fn show_list(addresses: &[Addr<'_>], shown: &mut String) {
        for (index, addr) in addresses.iter().enumerate() {
            if index > 0 {
                shown.push_str(", ");
            }
            match (addr.name(), addr.address()) {
                (Some(name), Some(address)) => {
                    shown.push_str(name);
                    shown.push_str(" <");
                    shown.push_str(address);
                    shown.push('>');
                }
                (Some(only), None) | (None, Some(only)) => shown.push_str(only),
                (None, None) => {}
            }
        }
    }

    let mut shown = String::new();
    match address {
        Address::List(addresses) => show_list(addresses, &mut shown),
        Address::Group(groups) => {
            for (index, group) in groups.iter().enumerate() {
                if index > 0 {
                    shown.push_str(", ");
                }
                match &group.name {
                    Some(name) => {
                        shown.push_str(name);
                        shown.push_str(": ");
                        show_list(&group.addresses, &mut shown);
                        shown.push(';');
                    }
                    None => show_list(&group.addresses, &mut shown),
                }
            }
        }
    }
    shown
}

/// A search string for case-insensitive comparison (simple case folding:
/// lower case); bytes that are not UTF-8 are replaced.
fn folded(needle: &AString<'_>) -> String {
    String::from_utf8_lossy(needle.as_ref()).to_lowercase()
}

/// Whether the number is in the set; `*` is `largest`, ranges go either way.
fn contains(set: &SequenceSet, number: u32, largest: u32) -> bool {
    let expand = |value: &SeqOrUid| match value {
        SeqOrUid::Value(value) => value.get(),
        SeqOrUid::Asterisk => largest,
    };
    set.0.as_ref().iter().any(|sequence| match sequence {
        Sequence::Single(value) => expand(value) == number,
        Sequence::Range(from, to) => {
            let (from, to) = (expand(from), expand(to));
            from.min(to) <= number && number <= from.max(to)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use imap_codec::CommandCodec;
    use imap_codec::decode::Decoder;

    use super::*;
    use crate::imap_types::command::CommandBody;
    use crate::imap_types::core::Vec1;

    /// One message of the test mailbox.
    struct Mail {
        seq: u32,
        uid: u32,
        flags: Flags,
        internal_date: &'static str,
        size: u64,
        raw: &'static str,
    }

    const PLAIN: &str = "Date: Sun, 01 Feb 2026 23:30:00 -0500\r\n\
        From: Alice Example <alice@example.org>\r\n\
        To: bob@example.net\r\n\
        Cc: Carol <carol@example.com>\r\n\
        Subject: Quarterly report\r\n\
        Message-ID: <q1@example.org>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=us-ascii\r\n\
        \r\n\
        Please find the numbers below.\r\n";

    /// Encoded words in From and Subject, a quoted-printable body, no Date:.
    const ENCODED: &str = "From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>\r\n\
        To: Alice Example <alice@example.org>\r\n\
        Bcc: dave@example.org\r\n\
        Subject: =?UTF-8?B?w5xiZXJ3ZWlzdW5nIGbDvHIgTcOkcno=?=\r\n\
        X-Priority: 1\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: quoted-printable\r\n\
        \r\n\
        Gr=C3=BC=C3=9Fe aus K=C3=B6ln, die Rech=\r\n\
        nung ist bezahlt.\r\n";

    /// A base64 text part, a binary attachment and a forwarded message.
    const MULTIPART: &str = "Date: Mon, 02 Mar 2026 00:30:00 +0900\r\n\
        From: Carol <carol@example.com>\r\n\
        To: undisclosed-recipients:;\r\n\
        Subject: Plans\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
        \r\n\
        --b1\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        Content-Transfer-Encoding: base64\r\n\
        \r\n\
        U2VjcmV0IG1lZXRpbmcgYXQgbm9vbi4NCg==\r\n\
        --b1\r\n\
        Content-Type: application/octet-stream\r\n\
        Content-Transfer-Encoding: base64\r\n\
        \r\n\
        bmVlZGxlLWluLWJpbmFyeQ==\r\n\
        --b1\r\n\
        Content-Type: message/rfc822\r\n\
        \r\n\
        From: Erin <erin@example.net>\r\n\
        Subject: Forwarded plan\r\n\
        \r\n\
        Inner text of the forwarded message.\r\n\
        --b1--\r\n";

    fn mailbox() -> Vec<Mail> {
        vec![
            Mail {
                seq: 1,
                uid: 101,
                flags: Flags { seen: true, answered: true, keywords: vec!["$Forwarded".into()], ..Flags::default() },
                // Delivered a minute after the Date:, already 2 February here.
                internal_date: "02-Feb-2026 05:31:00 +0100",
                size: 800,
                raw: PLAIN,
            },
            Mail {
                seq: 2,
                uid: 102,
                flags: Flags { flagged: true, recent: true, ..Flags::default() },
                // 14 March in UTC.
                internal_date: "15-Mar-2026 00:10:00 +0100",
                size: 1500,
                raw: ENCODED,
            },
            Mail {
                seq: 3,
                uid: 105,
                flags: Flags {
                    seen: true,
                    deleted: true,
                    draft: true,
                    recent: true,
                    keywords: vec!["Work".into()],
                    ..Flags::default()
                },
                // The Date: says 2 March (+0900), the same day in UTC is 1 March.
                internal_date: "01-Mar-2026 15:31:00 +0000",
                size: 4000,
                raw: MULTIPART,
            },
        ]
    }

    const LIMITS: Limits = Limits { max_seq: 3, max_uid: 105 };

    impl Mail {
        fn candidate<'a>(&'a self, raw: &'a RawLoader<'a>) -> Candidate<'a> {
            Candidate {
                seq: self.seq,
                uid: self.uid,
                flags: &self.flags,
                internal_date: DateTime::parse_from_str(self.internal_date, "%d-%b-%Y %H:%M:%S %z").unwrap(),
                size: self.size,
                raw,
            }
        }
    }

    /// The charset and criteria of `A1 <command>` (SEARCH or UID SEARCH).
    fn parse(command: &str) -> (Option<Charset<'static>>, Vec1<SearchKey<'static>>) {
        let line = format!("A1 {command}\r\n");
        let (remaining, command) = CommandCodec::default()
            .decode_static(line.as_bytes())
            .unwrap_or_else(|error| panic!("{command:?} does not parse: {error:?}"));
        assert!(remaining.is_empty());
        match command.body {
            CommandBody::Search { charset, criteria, .. } => (charset, criteria),
            other => panic!("not a SEARCH: {other:?}"),
        }
    }

    /// A string as an IMAP literal, for non-ASCII search strings.
    fn literal(text: &str) -> String {
        format!("{{{}}}\r\n{text}", text.len())
    }

    /// The UIDs the command finds, and how often a message was loaded.
    fn search_counting_loads(command: &str) -> (Vec<u32>, usize) {
        let (_, criteria) = parse(command);
        let loads = Cell::new(0);
        let hits = mailbox()
            .iter()
            .filter(|mail| {
                let loader = || {
                    loads.set(loads.get() + 1);
                    Some(Cow::Borrowed(mail.raw.as_bytes()))
                };
                matches_all(criteria.as_ref(), &mail.candidate(&loader), &LIMITS)
            })
            .map(|mail| mail.uid)
            .collect();
        (hits, loads.get())
    }

    fn search(command: &str) -> Vec<u32> {
        search_counting_loads(command).0
    }

    #[test]
    fn flags() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH ALL", &[101, 102, 105]),
            ("SEARCH ANSWERED", &[101]),
            ("SEARCH UNANSWERED", &[102, 105]),
            ("SEARCH DELETED", &[105]),
            ("SEARCH UNDELETED", &[101, 102]),
            ("SEARCH DRAFT", &[105]),
            ("SEARCH UNDRAFT", &[101, 102]),
            ("SEARCH FLAGGED", &[102]),
            ("SEARCH UNFLAGGED", &[101, 105]),
            ("SEARCH SEEN", &[101, 105]),
            ("SEARCH UNSEEN", &[102]),
            ("SEARCH RECENT", &[102, 105]),
            ("SEARCH OLD", &[101]),
            ("SEARCH NEW", &[102]),
            ("SEARCH KEYWORD $forwarded", &[101]),
            ("SEARCH KEYWORD Junk", &[]),
            ("SEARCH UNKEYWORD WORK", &[101, 102]),
            ("SEARCH UNKEYWORD Junk", &[101, 102, 105]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
    }

    #[test]
    fn internal_date_is_the_date_in_its_own_timezone() {
        let table: &[(&str, &[u32])] = &[
            // 101 arrived 2026-02-02 05:31 +0100 (04:31 UTC).
            ("SEARCH ON 2-Feb-2026", &[101]),
            ("SEARCH ON 1-Feb-2026", &[]),
            // 102 arrived 2026-03-15 00:10 +0100, still 14 March in UTC.
            ("SEARCH ON 15-Mar-2026", &[102]),
            ("SEARCH ON 14-Mar-2026", &[]),
            ("SEARCH ON 1-Mar-2026", &[105]),
            ("SEARCH BEFORE 1-Mar-2026", &[101]),
            ("SEARCH BEFORE 2-Feb-2026", &[]),
            ("SEARCH SINCE 1-Mar-2026", &[102, 105]),
            ("SEARCH SINCE 16-Mar-2026", &[]),
            ("UID SEARCH SINCE 2-Feb-2026 BEFORE 15-Mar-2026", &[101, 105]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
    }

    #[test]
    fn sent_date_is_the_date_header_as_written() {
        let table: &[(&str, &[u32])] = &[
            // 101: Date: Sun, 01 Feb 2026 23:30:00 -0500 (2 February in UTC).
            ("SEARCH SENTON 1-Feb-2026", &[101]),
            ("SEARCH SENTON 2-Feb-2026", &[]),
            // 105: Date: Mon, 02 Mar 2026 00:30:00 +0900 (1 March in UTC).
            ("SEARCH SENTON 2-Mar-2026", &[105]),
            ("SEARCH SENTON 1-Mar-2026", &[]),
            // 102 has no Date: and falls back to its internal date.
            ("SEARCH SENTON 15-Mar-2026", &[102]),
            ("SEARCH SENTBEFORE 2-Feb-2026", &[101]),
            ("SEARCH SENTBEFORE 1-Feb-2026", &[]),
            ("SEARCH SENTSINCE 2-Mar-2026", &[102, 105]),
            ("SEARCH SENTSINCE 3-Mar-2026", &[102]),
            ("SEARCH SENTSINCE 16-Mar-2026", &[]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
    }

    #[test]
    fn sizes() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH LARGER 1500", &[105]),
            ("SEARCH LARGER 799", &[101, 102, 105]),
            ("SEARCH LARGER 4000", &[]),
            ("SEARCH SMALLER 1500", &[101]),
            ("SEARCH SMALLER 800", &[]),
            ("SEARCH LARGER 800 SMALLER 4000", &[102]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
    }

    #[test]
    fn sequence_and_uid_sets() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH 2", &[102]),
            ("SEARCH 4", &[]),
            ("SEARCH *", &[105]),
            ("SEARCH 1,3", &[101, 105]),
            ("SEARCH 3:2", &[102, 105]),
            ("SEARCH *:2", &[102, 105]),
            ("SEARCH 2:*", &[102, 105]),
            ("SEARCH 1:*", &[101, 102, 105]),
            ("UID SEARCH UID 102", &[102]),
            ("UID SEARCH UID 103", &[]),
            ("UID SEARCH UID *", &[105]),
            ("UID SEARCH UID 102:*", &[102, 105]),
            ("UID SEARCH UID *:103", &[105]),
            ("UID SEARCH UID 104:102", &[102]),
            // RFC 3501: `*` is the highest UID even below the range's start.
            ("UID SEARCH UID 200:*", &[105]),
            ("UID SEARCH UID 1:100", &[]),
            ("UID SEARCH UID 1:101,105", &[101, 105]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
    }

    #[test]
    fn not_or_and_parentheses() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH NOT SEEN", &[102]),
            ("SEARCH NOT NOT SEEN", &[101, 105]),
            ("SEARCH OR ANSWERED FLAGGED", &[101, 102]),
            ("SEARCH OR DRAFT SMALLER 1", &[105]),
            ("SEARCH NOT (OR ANSWERED FLAGGED)", &[105]),
            ("SEARCH NOT OR ANSWERED FLAGGED", &[105]),
            ("SEARCH OR (DELETED DRAFT) NOT OR SEEN RECENT", &[105]),
            ("SEARCH OR NOT SEEN OR DELETED 1", &[101, 102, 105]),
            ("SEARCH SEEN NOT OR DELETED FLAGGED", &[101]),
            ("SEARCH (SEEN (UNDELETED)) (ALL)", &[101]),
            ("UID SEARCH OR FROM alice SUBJECT \"plans\" SINCE 1-Feb-2026", &[101, 105]),
            ("SEARCH OR (FROM carol BODY noon) (NOT BODY numbers)", &[102, 105]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
        // Non-ASCII search strings travel as literals.
        let command = format!("SEARCH NOT (FROM carol OR BODY noon BODY {})", literal("köln"));
        assert_eq!(search(&command), [101, 102]);
        let command = format!("SEARCH OR FROM carol BODY {}", literal("köln"));
        assert_eq!(search(&command), [102, 105]);
    }

    #[test]
    fn addresses() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH FROM alice", &[101]),
            ("SEARCH FROM \"ALICE EXAMPLE <alice@\"", &[101]),
            ("SEARCH FROM bob", &[]),
            ("SEARCH TO bob@example.net", &[101]),
            ("SEARCH TO alice", &[102]),
            ("SEARCH TO undisclosed-recipients", &[105]),
            ("SEARCH TO zoe", &[]),
            ("SEARCH CC \"Carol <carol@example.com>\"", &[101]),
            ("SEARCH CC dave", &[]),
            ("SEARCH BCC dave", &[102]),
            ("SEARCH BCC alice", &[]),
            ("SEARCH FROM \"\"", &[101, 102, 105]),
            ("SEARCH BCC \"\"", &[102]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
        // =?ISO-8859-1?Q?J=F6rg_M=FCller?= decoded, matched case-insensitively.
        for name in ["Jörg Müller <joerg@", "JÖRG", "müller"] {
            let command = format!("SEARCH CHARSET UTF-8 FROM {}", literal(name));
            assert_eq!(search(&command), [102], "{name}");
        }
    }

    #[test]
    fn subject_and_header() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH SUBJECT quarterly", &[101]),
            ("SEARCH SUBJECT \"REPORT\"", &[101]),
            ("SEARCH SUBJECT forwarded", &[]),
            ("SEARCH SUBJECT \"\"", &[101, 102, 105]),
            // The encoded word is not matched as written.
            ("SEARCH SUBJECT w5xiZXJ3", &[]),
            ("SEARCH HEADER X-Priority 1", &[102]),
            ("SEARCH HEADER x-priority \"\"", &[102]),
            ("SEARCH HEADER X-Priority 2", &[]),
            ("SEARCH HEADER Message-ID \"\"", &[101]),
            ("SEARCH HEADER Message-ID q1@example", &[101]),
            ("SEARCH HEADER Date \"\"", &[101, 105]),
            ("SEARCH HEADER Date \"Feb 2026\"", &[101]),
            ("SEARCH HEADER Content-Type multipart/mixed", &[105]),
            ("SEARCH HEADER Subject plans", &[105]),
            ("SEARCH HEADER X-Missing \"\"", &[]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
        // Subject: =?UTF-8?B?w5xiZXJ3ZWlzdW5nIGbDvHIgTcOkcno=?= is "Überweisung für März".
        for (needle, expected) in [("überweisung für", &[102][..]), ("MÄRZ", &[102]), ("Maerz", &[])] {
            let command = format!("SEARCH CHARSET UTF-8 SUBJECT {}", literal(needle));
            assert_eq!(search(&command), expected, "{needle}");
            let command = format!("SEARCH HEADER SUBJECT {}", literal(needle));
            assert_eq!(search(&command), expected, "{needle}");
        }
    }

    #[test]
    fn body_and_text() {
        let table: &[(&str, &[u32])] = &[
            ("SEARCH BODY numbers", &[101]),
            ("SEARCH BODY \"PLEASE FIND\"", &[101]),
            // Quoted-printable, with a soft line break inside the word.
            ("SEARCH BODY \"rechnung ist bezahlt\"", &[102]),
            ("SEARCH BODY \"=C3=B6\"", &[]),
            // Base64 text part.
            ("SEARCH BODY \"secret meeting\"", &[105]),
            ("SEARCH BODY U2VjcmV0", &[]),
            // Binary attachments are not searched.
            ("SEARCH BODY needle-in-binary", &[]),
            // A forwarded message is body, header and all.
            ("SEARCH BODY \"inner text\"", &[105]),
            ("SEARCH BODY \"forwarded plan\"", &[105]),
            // Headers are not body.
            ("SEARCH BODY quarterly", &[]),
            ("SEARCH BODY \"\"", &[101, 102, 105]),
            ("SEARCH TEXT quarterly", &[101]),
            ("SEARCH TEXT \"subject: quarterly\"", &[101]),
            ("SEARCH TEXT numbers", &[101]),
            ("SEARCH TEXT noon", &[105]),
            ("SEARCH TEXT \"example.org\"", &[101, 102]),
            ("SEARCH TEXT nowhere", &[]),
        ];
        for (command, expected) in table {
            assert_eq!(search(command), *expected, "{command}");
        }
        for (needle, expected) in [("GRÜSSE", &[][..]), ("GRÜßE AUS KÖLN", &[102])] {
            let command = format!("SEARCH CHARSET UTF-8 BODY {}", literal(needle));
            assert_eq!(search(&command), expected, "{needle}");
            let command = format!("SEARCH TEXT {}", literal(needle));
            assert_eq!(search(&command), expected, "{needle}");
        }
    }

    #[test]
    fn the_message_is_loaded_only_when_a_key_needs_it() {
        for command in [
            "SEARCH ALL",
            "UID SEARCH UID 1:* SEEN UNFLAGGED",
            "SEARCH OR NOT (DRAFT KEYWORD x) 1:* SINCE 1-Jan-2026 LARGER 10",
            // The flag decides before the body is needed.
            "SEARCH OR 1:* BODY x",
            "SEARCH OR BODY x ALL",
            "SEARCH NOT ALL BODY x",
        ] {
            let (_, loads) = search_counting_loads(command);
            assert_eq!(loads, 0, "{command}");
        }
        // One load per message, however many keys need it.
        let (hits, loads) =
            search_counting_loads("SEARCH FROM a TO b CC c BCC d SUBJECT e HEADER f g BODY h TEXT i SENTON 1-Feb-2026");
        assert_eq!((hits, loads), (vec![], 3));
        let (hits, loads) = search_counting_loads("SEARCH OR FROM carol SENTSINCE 1-Jan-2026");
        assert_eq!((hits, loads), (vec![101, 102, 105], 3));
        // Only the message the cheap key lets through.
        let (hits, loads) = search_counting_loads("SEARCH BODY secret FLAGGED");
        assert_eq!((hits, loads), (vec![], 1));
    }

    #[test]
    fn needs_raw_sees_nested_keys() {
        for (command, expected) in [
            ("SEARCH ALL", false),
            ("SEARCH OR SEEN NOT (UID 1:* ON 1-Feb-2026)", false),
            ("SEARCH OR SEEN NOT (UID 1:* HEADER X-A b)", true),
            ("SEARCH NOT SENTON 1-Feb-2026", true),
            ("SEARCH TEXT x", true),
        ] {
            let (_, criteria) = parse(command);
            assert_eq!(criteria.as_ref().iter().any(needs_raw), expected, "{command}");
        }
    }

    #[test]
    fn a_message_that_cannot_be_loaded_matches_no_content_key() {
        let mail = &mailbox()[0];
        let loader = || None;
        let candidate = mail.candidate(&loader);
        let test = |command: &str| matches_all(parse(command).1.as_ref(), &candidate, &LIMITS);
        assert!(!test("SEARCH FROM alice"));
        assert!(!test("SEARCH HEADER Date \"\""));
        assert!(!test("SEARCH BODY numbers"));
        assert!(test("SEARCH NOT FROM alice"));
        assert!(test("SEARCH SEEN"));
        // The sent date falls back to the internal date.
        assert!(test("SEARCH SENTON 2-Feb-2026"));
    }

    #[test]
    fn a_single_key() {
        let mail = &mailbox()[1];
        let loader = || Some(Cow::Borrowed(mail.raw.as_bytes()));
        let candidate = mail.candidate(&loader);
        let (_, criteria) = parse("SEARCH OR SUBJECT nothing FROM joerg");
        let [key] = criteria.as_ref() else {
            panic!("one key expected");
        };
        assert!(matches(key, &candidate, &LIMITS));
        let (_, criteria) = parse("SEARCH FROM joerg UNFLAGGED");
        let key = SearchKey::And(criteria);
        assert!(!matches(&key, &candidate, &LIMITS));
    }

    #[test]
    fn charsets() {
        for (command, supported) in [
            ("SEARCH ALL", true),
            ("SEARCH CHARSET UTF-8 ALL", true),
            ("SEARCH CHARSET utf-8 ALL", true),
            ("SEARCH CHARSET US-ASCII ALL", true),
            ("SEARCH CHARSET \"us-ascii\" ALL", true),
            ("SEARCH CHARSET ISO-8859-1 ALL", false),
            ("SEARCH CHARSET UTF8 ALL", false),
        ] {
            let (charset, _) = parse(command);
            assert_eq!(check_charset(charset.as_ref()).is_ok(), supported, "{command}");
        }
        let (charset, _) = parse("SEARCH CHARSET KOI8-R ALL");
        assert_eq!(check_charset(charset.as_ref()), Err(UnsupportedCharset { charset: "KOI8-R".into() }));
    }
}
