//! Incoming mail without I/O: what becomes of a message the provider's MX
//! accepted, once the provider's encryption layer is off.
//!
//! The sender's own protection is read and the message is marked, the way
//! LEAP's incoming service did:
//! - RFC 3156 `multipart/encrypted`: the OpenPGP message of its second part
//!   is decrypted; the result (a MIME entity) becomes the message's content
//!   under the outer header, its header fields (protected headers, the real
//!   Subject) replacing the outer ones; an inner `multipart/signed` is
//!   verified too when the OpenPGP message carried no signature;
//! - RFC 3156 `multipart/signed`: the detached signature is checked over the
//!   first part's bytes (canonical CRLF); the message is kept as it is;
//! - inline PGP in a `text/plain` body: a `PGP MESSAGE` block is decrypted
//!   in place, a `PGP SIGNED MESSAGE` block is verified;
//! - anything else is kept as it is.
//!
//! [`process`] starts; each [`Step`] names what the key service must do
//! (the caller runs it) and carries the continuation that takes the
//! answer, until [`Step::File`] gives the message to file. Header fields
//! the sender cannot set ([`ENCRYPTION_HEADER`], [`SIGNATURE_HEADER`]) are
//! removed wherever they come from and written once, at the top.

use bitmask_smtp::text::crlf_line_endings;
use std::ops::Range;

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_parser::{Message, MimeHeaders as _, PartType};

/// How the message travelled: `decrypted`, `provider` or `failed`.
pub const ENCRYPTION_HEADER: &str = "X-Leap-Encryption";
/// What its signature says: `valid; pubkey="<FINGERPRINT>"`, `invalid`,
/// `could not verify` or `none`.
pub const SIGNATURE_HEADER: &str = "X-Leap-Signature";
/// The Subject of the message filed in place of one that could not be
/// decrypted.
pub const UNDECRYPTABLE_SUBJECT: &str = "Undecryptable incoming message";
/// The subject of the message filed in place of an item that could not be
/// filed after several attempts.
pub const UNFILED_SUBJECT: &str = "Incoming message that could not be filed";
/// Who writes that message.
pub const GATEWAY_ADDRESS: &str = "MAILER-DAEMON@localhost";

const PGP_MESSAGE: (&[u8], &[u8]) = (b"-----BEGIN PGP MESSAGE-----", b"-----END PGP MESSAGE-----");
const PGP_SIGNED: (&[u8], &[u8]) = (b"-----BEGIN PGP SIGNED MESSAGE-----", b"-----END PGP SIGNATURE-----");
/// RFC 5322 section 2.1.1: a line is at most 998 bytes, CRLF excluded.
const MAX_LINE: usize = 998;

/// Whose encryption the message had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// The sender encrypted the content end to end (PGP/MIME or inline).
    Decrypted,
    /// Only the provider's MX encrypted it: the sender sent plaintext.
    Provider,
    /// It could not be decrypted.
    Failed,
}

impl Encryption {
    /// The value of [`ENCRYPTION_HEADER`].
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Decrypted => "decrypted",
            Self::Provider => "provider",
            Self::Failed => "failed",
        }
    }
}

/// What the key service found of a signature.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Checked {
    /// Not signed.
    #[default]
    None,
    /// A good signature by a known key, with that key's addresses.
    Valid { fingerprint: String, signer_addresses: Vec<String> },
    /// A bad signature (or a signature that cannot be read).
    Invalid,
    /// Signed by a key we do not have.
    UnknownSigner,
}

/// The verdict written in [`SIGNATURE_HEADER`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A good signature by a known key whose user id is the From address.
    Valid {
        fingerprint: String,
    },
    Invalid,
    /// An unknown signer, a signer that is not the From address, or a
    /// message whose content could not be read.
    CouldNotVerify,
    None,
}

impl Signature {
    /// The verdict on `checked` for a message from `from` (lower case).
    pub fn judge(checked: &Checked, from: Option<&str>) -> Self {
        match checked {
            Checked::None => Self::None,
            Checked::Invalid => Self::Invalid,
            Checked::UnknownSigner => Self::CouldNotVerify,
            Checked::Valid { fingerprint, signer_addresses } => {
                let matches =
                    from.is_some_and(|from| signer_addresses.iter().any(|address| address.eq_ignore_ascii_case(from)));
                if matches { Self::Valid { fingerprint: fingerprint.clone() } } else { Self::CouldNotVerify }
            }
        }
    }

    /// The value of [`SIGNATURE_HEADER`].
    pub fn header_value(&self) -> String {
        match self {
            Self::Valid { fingerprint } => format!("valid; pubkey=\"{fingerprint}\""),
            Self::Invalid => "invalid".into(),
            Self::CouldNotVerify => "could not verify".into(),
            Self::None => "none".into(),
        }
    }
}

/// The message to file and what it was found to be.
#[derive(Clone)]
pub struct Filed {
    /// The marked message.
    pub raw: Vec<u8>,
    pub encryption: Encryption,
    pub signature: Signature,
    /// The From address when the signature is valid (for key learning).
    pub verified_sender: Option<String>,
}

impl std::fmt::Debug for Filed {
    // Mail content stays out of logs.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Filed")
            .field("size", &self.raw.len())
            .field("encryption", &self.encryption)
            .field("signature", &self.signature)
            .finish_non_exhaustive()
    }
}

/// What to do next.
///
/// A message is held once: the ciphertext of a decryption step is a range
/// of the message it waits with (`AfterDecrypt::ciphertext`), and every
/// step takes what it is given by value, so a big message is never held
/// in more than about two copies at once.
pub enum Step {
    /// Decrypt `then.ciphertext()` (an OpenPGP message, armored or binary),
    /// checking a signature inside; answer through `then`.
    Decrypt(AfterDecrypt),
    /// Check a signature: a detached one over `data`, or, without
    /// `detached`, the inline-signed (cleartext) message `data`.
    Verify { data: Vec<u8>, detached: Option<Vec<u8>>, then: AfterVerify },
    /// Done: file this.
    File(Filed),
}

impl std::fmt::Debug for Step {
    // Mail content stays out of logs: only sizes.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Decrypt(then) => formatter.debug_struct("Decrypt").field("size", &then.ciphertext().len()).finish(),
            Self::Verify { data, detached, .. } => formatter
                .debug_struct("Verify")
                .field("size", &data.len())
                .field("detached", &detached.is_some())
                .finish(),
            Self::File(filed) => formatter.debug_tuple("File").field(filed).finish(),
        }
    }
}

/// Starts on a message as the sender sent it (the provider's layer off).
pub fn process(sent: Vec<u8>) -> Step {
    let message = without_leap_headers(sent);
    match protection(&message) {
        Protection::PgpMimeEncrypted { ciphertext } => {
            Step::Decrypt(AfterDecrypt { message, target: Target::PgpMime { ciphertext } })
        }
        Protection::InlineEncrypted { text, block } => {
            Step::Decrypt(AfterDecrypt { message, target: Target::Inline { text, block } })
        }
        Protection::PgpMimeSigned { data, signature } => Step::Verify {
            data,
            detached: Some(signature),
            then: AfterVerify { message, encryption: Encryption::Provider },
        },
        Protection::InlineSigned { block } => Step::Verify {
            data: block,
            detached: None,
            then: AfterVerify { message, encryption: Encryption::Provider },
        },
        Protection::Plain => Step::File(finish(message, Encryption::Provider, &Checked::None)),
    }
}

/// Waits for a decryption.
pub struct AfterDecrypt {
    message: Vec<u8>,
    target: Target,
}

impl std::fmt::Debug for AfterDecrypt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("AfterDecrypt").field("size", &self.message.len()).finish_non_exhaustive()
    }
}

enum Target {
    /// The encrypted part's contents.
    PgpMime { ciphertext: Contents },
    /// The decoded text body and the block's range in it.
    Inline { text: Vec<u8>, block: Range<usize> },
}

impl AfterDecrypt {
    /// What to decrypt.
    pub fn ciphertext(&self) -> &[u8] {
        match &self.target {
            Target::PgpMime { ciphertext } => ciphertext.of(&self.message),
            Target::Inline { text, block } => text.get(block.clone()).unwrap_or_default(),
        }
    }

    /// The plaintext and what was found of a signature inside it.
    pub fn decrypted(self, plaintext: Vec<u8>, checked: Checked) -> Step {
        match self.target {
            Target::PgpMime { .. } => {
                // Only the outer header is still needed: the rest (the
                // ciphertext) goes before the message is put together.
                let mut outer = self.message;
                let (_, body_start) = header_fields(&outer);
                outer.truncate(body_start);
                outer.shrink_to_fit();
                let message = merge_decrypted(&outer, plaintext);
                if checked == Checked::None
                    && let Protection::PgpMimeSigned { data, signature } = protection(&message)
                {
                    let then = AfterVerify { message, encryption: Encryption::Decrypted };
                    return Step::Verify { data, detached: Some(signature), then };
                }
                Step::File(finish(message, Encryption::Decrypted, &checked))
            }
            Target::Inline { text, block } => {
                let mut body = Vec::with_capacity(text.len() + plaintext.len());
                body.extend_from_slice(text.get(..block.start).unwrap_or_default());
                body.extend_from_slice(&plaintext);
                let mut rest = text.get(block.end..).unwrap_or_default();
                if plaintext.ends_with(b"\n") {
                    // The END line's line break: the plaintext has its own.
                    rest = rest.strip_prefix(b"\r\n").or_else(|| rest.strip_prefix(b"\n")).unwrap_or(rest);
                }
                body.extend_from_slice(rest);
                let message = replace_text_body(&self.message, &body);
                Step::File(finish(message, Encryption::Decrypted, &checked))
            }
        }
    }

    /// The content could not be decrypted (not for us, damaged): the
    /// message is filed as it came, marked failed.
    pub fn failed(self) -> Step {
        let raw = marked(self.message, Encryption::Failed, &Signature::CouldNotVerify);
        Step::File(Filed {
            raw,
            encryption: Encryption::Failed,
            signature: Signature::CouldNotVerify,
            verified_sender: None,
        })
    }
}

/// Waits for a signature check.
pub struct AfterVerify {
    message: Vec<u8>,
    encryption: Encryption,
}

impl std::fmt::Debug for AfterVerify {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("AfterVerify").field("size", &self.message.len()).finish_non_exhaustive()
    }
}

impl AfterVerify {
    pub fn verified(self, checked: Checked) -> Step {
        Step::File(finish(self.message, self.encryption, &checked))
    }
}

fn finish(message: Vec<u8>, encryption: Encryption, checked: &Checked) -> Filed {
    let from = from_address(&message);
    let signature = Signature::judge(checked, from.as_deref());
    let verified_sender = if matches!(signature, Signature::Valid { .. }) { from } else { None };
    Filed { raw: marked(message, encryption, &signature), encryption, signature, verified_sender }
}

/// The message with the two marks at the top (any others removed).
pub fn marked(message: Vec<u8>, encryption: Encryption, signature: &Signature) -> Vec<u8> {
    let clean = without_leap_headers(message);
    let mut out = Vec::with_capacity(clean.len() + 128);
    out.extend_from_slice(format!("{ENCRYPTION_HEADER}: {}\r\n", encryption.header_value()).as_bytes());
    out.extend_from_slice(format!("{SIGNATURE_HEADER}: {}\r\n", signature.header_value()).as_bytes());
    out.extend_from_slice(&clean);
    out
}

/// The message filed in place of an item that could not be decrypted: who
/// and why in a text part, the item's bytes attached, marked failed. The
/// same item gives the same bytes (two devices file the same message).
pub fn undecryptable(account: &str, item: &str, received_ms: i64, reason: &str, encrypted: &[u8]) -> Filed {
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    let text = format!(
        "A message for {account} arrived at your provider, but it could not be\r\n\
         decrypted here, so it cannot be shown:\r\n\r\n  {reason}\r\n\r\n\
         It was probably encrypted to a key this account does not have, or it\r\n\
         was damaged on the way. The encrypted message, as the provider kept it,\r\n\
         is attached ({} bytes).\r\n",
        encrypted.len()
    );
    explanation(account, item, received_ms, UNDECRYPTABLE_SUBJECT, &text, encrypted)
}

/// The message filed in place of an item that failed to be filed again and
/// again (whatever the reason: it is never retried forever): why, and the
/// item's bytes attached, marked failed.
pub fn unfiled(account: &str, item: &str, received_ms: i64, attempts: u32, reason: &str, encrypted: &[u8]) -> Filed {
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(500).collect();
    let text = format!(
        "A message for {account} arrived at your provider, but it could not be\r\n\
         read and filed here after {attempts} attempts:\r\n\r\n  {reason}\r\n\r\n\
         The message, as the provider kept it (encrypted to this account's key),\r\n\
         is attached ({} bytes).\r\n",
        encrypted.len()
    );
    explanation(account, item, received_ms, UNFILED_SUBJECT, &text, encrypted)
}

fn explanation(account: &str, item: &str, received_ms: i64, subject: &str, text: &str, encrypted: &[u8]) -> Filed {
    let item: String = item.chars().filter(char::is_ascii_alphanumeric).take(64).collect();
    let boundary = format!("undecryptable-{item}");
    let body = MimePart::new(
        ContentType::new("multipart/mixed").attribute("boundary", boundary),
        vec![
            MimePart::new("text/plain", text.to_owned()),
            MimePart::new("application/octet-stream", encrypted.to_vec()).attachment(format!("incoming-{item}.pgp")),
        ],
    );
    let built = MessageBuilder::new()
        .header(ENCRYPTION_HEADER, Raw::new(Encryption::Failed.header_value()))
        .header(SIGNATURE_HEADER, Raw::new(Signature::CouldNotVerify.header_value()))
        .from(("Bitmask Mail", GATEWAY_ADDRESS))
        .to(account)
        .subject(subject.to_owned())
        .date(Date::new(received_ms.div_euclid(1000)))
        .message_id(MessageId::new(format!("incoming-{item}@localhost")))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .body(body)
        .write_to_vec()
        // Writing to a Vec does not fail.
        .unwrap_or_default();
    Filed { raw: built, encryption: Encryption::Failed, signature: Signature::CouldNotVerify, verified_sender: None }
}

// ---------------------------------------------------------------------------
// Reading the message

/// What protection the sender put on the message.
#[derive(Debug)]
enum Protection {
    PgpMimeEncrypted { ciphertext: Contents },
    PgpMimeSigned { data: Vec<u8>, signature: Vec<u8> },
    InlineEncrypted { text: Vec<u8>, block: Range<usize> },
    InlineSigned { block: Vec<u8> },
    Plain,
}

/// A part's contents: a range of the message when they are its bytes as
/// they are there (no transfer encoding to undo), else a copy.
#[derive(Debug)]
enum Contents {
    Within(Range<usize>),
    Copy(Vec<u8>),
}

impl Contents {
    fn within(raw: &[u8], contents: &[u8]) -> Self {
        let start = (contents.as_ptr() as usize).wrapping_sub(raw.as_ptr() as usize);
        match start.checked_add(contents.len()) {
            Some(end) if end <= raw.len() && raw.get(start..end) == Some(contents) => Self::Within(start..end),
            _ => Self::Copy(contents.to_vec()),
        }
    }

    fn of<'a>(&'a self, raw: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Within(range) => raw.get(range.clone()).unwrap_or_default(),
            Self::Copy(bytes) => bytes,
        }
    }
}

/// mail-parser behind the gate of `bitmask_mime`: a message beyond its
/// limits is read as unprotected and filed as it came.
fn parse(raw: &[u8]) -> Option<Message<'_>> {
    bitmask_mime::parse(raw)
}

fn protection(raw: &[u8]) -> Protection {
    // Only these are read further: a message of another type (a big
    // multipart/mixed) is not parsed whole (and its attachments decoded)
    // for nothing.
    let (_, body_start) = header_fields(raw);
    let Some(header) = bitmask_mime::parse_headers(raw.get(..body_start).unwrap_or_default()) else {
        return Protection::Plain;
    };
    let protected = match header.root_part().content_type() {
        Some(content_type) => {
            let (main, sub) = (content_type.ctype(), content_type.subtype().unwrap_or_default());
            main.eq_ignore_ascii_case("multipart")
                && (sub.eq_ignore_ascii_case("encrypted") || sub.eq_ignore_ascii_case("signed"))
                || main.eq_ignore_ascii_case("text") && sub.eq_ignore_ascii_case("plain")
        }
        None => true,
    };
    if !protected {
        return Protection::Plain;
    }
    let Some(message) = parse(raw) else { return Protection::Plain };
    let root = message.root_part();
    let (main, sub, protocol) = match root.content_type() {
        Some(content_type) => (
            content_type.ctype().to_ascii_lowercase(),
            content_type.subtype().unwrap_or_default().to_ascii_lowercase(),
            content_type.attribute("protocol").unwrap_or_default().to_ascii_lowercase(),
        ),
        None => ("text".into(), "plain".into(), String::new()),
    };
    let children = match &root.body {
        PartType::Multipart(children) => children.as_slice(),
        _ => &[],
    };
    let child = |index: usize| children.get(index).and_then(|id| message.parts.get(*id as usize));
    match (main.as_str(), sub.as_str()) {
        ("multipart", "encrypted") if protocol == "application/pgp-encrypted" => match child(1) {
            Some(part) if !part.contents().is_empty() => {
                Protection::PgpMimeEncrypted { ciphertext: Contents::within(raw, part.contents()) }
            }
            _ => Protection::Plain,
        },
        ("multipart", "signed") if protocol == "application/pgp-signature" => match (child(0), child(1)) {
            (Some(first), Some(second)) if !second.contents().is_empty() => {
                let range = first.offset_header as usize..first.offset_end as usize;
                let data = crlf_line_endings(raw.get(range).unwrap_or_default());
                Protection::PgpMimeSigned { data, signature: second.contents().to_vec() }
            }
            _ => Protection::Plain,
        },
        ("text", "plain") => {
            let text = root.contents();
            if let Some(block) = armored_block(text, PGP_MESSAGE) {
                Protection::InlineEncrypted { text: text.to_vec(), block }
            } else if let Some(block) = armored_block(text, PGP_SIGNED) {
                Protection::InlineSigned { block: text.get(block).unwrap_or_default().to_vec() }
            } else {
                Protection::Plain
            }
        }
        _ => Protection::Plain,
    }
}

/// The first armored block of this kind in `text`: from its BEGIN line
/// (at a line start) to the end of its END line.
fn armored_block(text: &[u8], (begin, end): (&[u8], &[u8])) -> Option<Range<usize>> {
    let start = line_starts(text).find(|&start| text.get(start..).is_some_and(|rest| rest.starts_with(begin)))?;
    let end_line =
        line_starts(text).find(|&line| line > start && text.get(line..).is_some_and(|rest| rest.starts_with(end)))?;
    let stop =
        text.get(end_line..).and_then(|rest| rest.iter().position(|&byte| byte == b'\n')).map_or(text.len(), |n| {
            // The END line without its line break.
            let newline = end_line + n;
            if newline > 0 && text.get(newline - 1) == Some(&b'\r') { newline - 1 } else { newline }
        });
    Some(start..stop)
}

fn line_starts(text: &[u8]) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(text.iter().enumerate().filter(|(_, byte)| **byte == b'\n').map(|(index, _)| index + 1))
}

/// The first From address, lower case.
pub fn from_address(raw: &[u8]) -> Option<String> {
    let (_, body_start) = header_fields(raw);
    let header = raw.get(..body_start).unwrap_or_default();
    let message = bitmask_mime::parse_headers(header)?;
    message.from()?.first()?.address().map(str::to_lowercase)
}

// ---------------------------------------------------------------------------
// Header fields, byte for byte

/// One header field: its lower-case name (empty for a line that is not a
/// field) and its bytes, continuation lines and line break included.
#[derive(Debug, Clone)]
struct Field {
    name: String,
    range: Range<usize>,
}

/// The header fields of the entity `raw` and where its body starts (after
/// the empty line; the end when there is none).
fn header_fields(raw: &[u8]) -> (Vec<Field>, usize) {
    let mut fields: Vec<Field> = Vec::new();
    let mut position = 0;
    while position < raw.len() {
        let rest = raw.get(position..).unwrap_or_default();
        let end = rest.iter().position(|&byte| byte == b'\n').map_or(raw.len(), |n| position + n + 1);
        let line = raw.get(position..end).unwrap_or_default();
        if line == b"\r\n" || line == b"\n" {
            return (fields, end);
        }
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.range.end = end,
            _ => fields.push(Field { name: field_name(line), range: position..end }),
        }
        position = end;
    }
    (fields, raw.len())
}

fn field_name(line: &[u8]) -> String {
    let Some(colon) = line.iter().position(|&byte| byte == b':') else { return String::new() };
    let name = line.get(..colon).unwrap_or_default().trim_ascii_end();
    if name.is_empty() || !name.iter().all(|&byte| (33..=126).contains(&byte)) {
        return String::new();
    }
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

fn is_leap_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(ENCRYPTION_HEADER) || name.eq_ignore_ascii_case(SIGNATURE_HEADER)
}

fn is_content_field(name: &str) -> bool {
    name.starts_with("content-") || name == "mime-version"
}

/// `raw` without the header fields only this gateway may write.
/// The same bytes, not a copy, when it has no such field (as it should).
fn without_leap_headers(raw: Vec<u8>) -> Vec<u8> {
    let (fields, _) = header_fields(&raw);
    if !fields.iter().any(|field| is_leap_header(&field.name)) {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut position = 0;
    for field in fields.iter().filter(|field| is_leap_header(&field.name)) {
        out.extend_from_slice(raw.get(position..field.range.start).unwrap_or_default());
        position = field.range.end;
    }
    out.extend_from_slice(raw.get(position..).unwrap_or_default());
    out
}

/// A field's bytes ending in CRLF.
fn field_bytes(raw: &[u8], field: &Field) -> Vec<u8> {
    let mut bytes = crlf_line_endings(raw.get(field.range.clone()).unwrap_or_default());
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

// ---------------------------------------------------------------------------
// Putting the message back together

/// The message with the decrypted entity as its content: the outer header
/// fields but Content-* and MIME-Version, those the entity's header also
/// has replaced by the entity's (protected headers: the real Subject), the
/// entity's other fields after them, then the entity's Content-* fields
/// and body.
fn merge_decrypted(outer: &[u8], inner: Vec<u8>) -> Vec<u8> {
    // (Canonical already, as RFC 3156 has it encrypted: then not copied.)
    let inner = if inner.windows(2).any(|pair| pair[1] == b'\n' && pair[0] != b'\r') || inner.first() == Some(&b'\n') {
        crlf_line_endings(&inner)
    } else {
        inner
    };
    let (outer_fields, _) = header_fields(outer);
    let (inner_fields, inner_body) = header_fields(&inner);
    // A Subject elsewhere in the entity (a multipart/signed first part, a
    // text/rfc822-headers part) when its own header has none.
    let extra_subject =
        (!inner_fields.iter().any(|field| field.name == "subject")).then(|| protected_subject(&inner)).flatten();
    let protected: Vec<&Field> =
        inner_fields.iter().filter(|field| !field.name.is_empty() && !is_content_field(&field.name)).collect();
    let mut out = Vec::with_capacity(outer.len() + inner.len());
    let mut written: Vec<&str> = Vec::new();
    for field in &outer_fields {
        let name = field.name.as_str();
        if is_content_field(name) || field.name.is_empty() {
            continue;
        }
        if name == "subject"
            && let Some(subject) = &extra_subject
        {
            if !written.contains(&"subject") {
                out.extend_from_slice(subject);
                written.push("subject");
            }
            continue;
        }
        if protected.iter().any(|inner_field| inner_field.name == name) {
            if !written.contains(&name) {
                for inner_field in protected.iter().filter(|inner_field| inner_field.name == name) {
                    out.extend_from_slice(&field_bytes(&inner, inner_field));
                }
                written.push(name);
            }
            continue;
        }
        out.extend_from_slice(&field_bytes(outer, field));
    }
    if let Some(subject) = extra_subject.as_ref().filter(|_| !written.contains(&"subject")) {
        out.extend_from_slice(subject);
    }
    for field in protected.iter().filter(|field| !written.contains(&field.name.as_str())) {
        out.extend_from_slice(&field_bytes(&inner, field));
    }
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    let mut has_content_type = false;
    for field in inner_fields.iter().filter(|field| field.name.starts_with("content-")) {
        has_content_type |= field.name == "content-type";
        out.extend_from_slice(&field_bytes(&inner, field));
    }
    if !has_content_type {
        out.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(inner.get(inner_body..).unwrap_or_default());
    out
}

/// The Subject field (CRLF-terminated bytes) of a multipart/signed first
/// part's header or of a `text/rfc822-headers` part marked
/// `protected-headers`, in a decrypted entity.
fn protected_subject(inner: &[u8]) -> Option<Vec<u8>> {
    let message = parse(inner)?;
    let root = message.root_part();
    let children = match &root.body {
        PartType::Multipart(children) => children.as_slice(),
        _ => return None,
    };
    let signed = root.is_content_type("multipart", "signed");
    for (index, id) in children.iter().enumerate() {
        let Some(part) = message.parts.get(*id as usize) else { continue };
        let headers = if signed && index == 0 {
            inner.get(part.offset_header as usize..part.offset_body as usize)
        } else if part.is_content_type("text", "rfc822-headers")
            && part.content_type().is_some_and(|content_type| content_type.has_attribute("protected-headers"))
        {
            inner.get(part.offset_body as usize..part.offset_end as usize)
        } else {
            None
        };
        let Some(headers) = headers else { continue };
        let (fields, _) = header_fields(headers);
        if let Some(subject) = fields.iter().find(|field| field.name == "subject") {
            return Some(field_bytes(headers, subject));
        }
    }
    None
}

/// A text/plain message with a new (decoded) body: the header but its
/// Content-* fields, then a Content-Type and transfer encoding that fit.
fn replace_text_body(message: &[u8], body: &[u8]) -> Vec<u8> {
    let (fields, _) = header_fields(message);
    let charset = if std::str::from_utf8(body).is_ok() {
        if body.is_ascii() { "us-ascii".to_owned() } else { "utf-8".to_owned() }
    } else {
        // Not UTF-8: whatever the sender said, if anything.
        parse(message)
            .and_then(|parsed| {
                parsed.root_part().content_type().and_then(|ct| ct.attribute("charset")).map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown-8bit".into())
    };
    let body = crlf_line_endings(body);
    let safe_lines = body.split(|&byte| byte == b'\n').all(|line| line.len() <= MAX_LINE + 1);
    let bare_cr = body.windows(2).any(|pair| pair[0] == b'\r' && pair[1] != b'\n') || body.ends_with(b"\r");
    let (encoding, encoded) = if !safe_lines || bare_cr || body.contains(&0) {
        ("base64", base64_lines(&body))
    } else if body.is_ascii() {
        ("7bit", body)
    } else {
        ("8bit", body)
    };
    let mut out = Vec::with_capacity(message.len() + encoded.len());
    for field in fields.iter().filter(|field| !field.name.is_empty() && !is_content_field(&field.name)) {
        out.extend_from_slice(&field_bytes(message, field));
    }
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    out.extend_from_slice(format!("Content-Type: text/plain; charset={charset}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Transfer-Encoding: {encoding}\r\n\r\n").as_bytes());
    out.extend_from_slice(&encoded);
    out
}

fn base64_lines(data: &[u8]) -> Vec<u8> {
    let encoded = data_encoding::BASE64.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic in a test is a failed test
    #![allow(clippy::disallowed_methods)] // tests read what the code wrote with mail-parser itself

    use mail_parser::MessageParser;

    use super::*;

    const FROM_BOB: &str = "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\n";

    fn file(step: Step) -> Filed {
        match step {
            Step::File(filed) => filed,
            other => panic!("expected File, got {other:?}"),
        }
    }

    fn text(raw: &[u8]) -> String {
        String::from_utf8(raw.to_vec()).unwrap()
    }

    fn valid_bob() -> Checked {
        Checked::Valid { fingerprint: "B0B".into(), signer_addresses: vec!["bob@example.org".into()] }
    }

    #[test]
    fn plain_mail_is_kept_byte_for_byte_and_spoofed_marks_go() {
        let sent = format!(
            "X-Leap-Signature: valid; pubkey=\"EVIL\"\r\n{FROM_BOB}x-leap-encryption : decrypted\r\n\
             Subject: hi\r\nX-Leap-Signature: valid;\r\n\tpubkey=\"EVIL\"\r\n\r\n\
             X-Leap-Signature: in the body stays\r\n"
        );
        let filed = file(process(sent.as_bytes().to_vec()));
        assert_eq!((filed.encryption, &filed.signature), (Encryption::Provider, &Signature::None));
        assert_eq!(
            text(&filed.raw),
            format!(
                "X-Leap-Encryption: provider\r\nX-Leap-Signature: none\r\n{FROM_BOB}Subject: hi\r\n\r\n\
                 X-Leap-Signature: in the body stays\r\n"
            )
        );
        assert_eq!(filed.verified_sender, None);
    }

    #[test]
    fn signatures_are_judged_against_the_from_address() {
        let from = Some("bob@example.org");
        assert_eq!(Signature::judge(&valid_bob(), from).header_value(), "valid; pubkey=\"B0B\"");
        assert_eq!(Signature::judge(&valid_bob(), Some("mallory@example.org")), Signature::CouldNotVerify);
        assert_eq!(Signature::judge(&valid_bob(), None), Signature::CouldNotVerify);
        assert_eq!(Signature::judge(&Checked::UnknownSigner, from).header_value(), "could not verify");
        assert_eq!(Signature::judge(&Checked::Invalid, from).header_value(), "invalid");
        assert_eq!(Signature::judge(&Checked::None, from).header_value(), "none");
        let upper = Checked::Valid { fingerprint: "B0B".into(), signer_addresses: vec!["Bob@Example.org".into()] };
        assert!(matches!(Signature::judge(&upper, from), Signature::Valid { .. }));
    }

    fn pgp_mime(ciphertext: &str) -> String {
        format!(
            "Return-Path: <bob@example.org>\r\n{FROM_BOB}Subject: ...\r\nMessage-ID: <1@example.org>\r\n\
             X-Leap-Signature: valid\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n boundary=\"b1\"\r\n\r\n\
             This is an OpenPGP/MIME encrypted message\r\n--b1\r\nContent-Type: application/pgp-encrypted\r\n\r\n\
             Version: 1\r\n\r\n--b1\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n\
             {ciphertext}\r\n--b1--\r\n"
        )
    }

    #[test]
    fn pgp_mime_content_replaces_the_outer_body_with_the_protected_subject() {
        let armored = "-----BEGIN PGP MESSAGE-----\r\n\r\nAAAA\r\n-----END PGP MESSAGE-----";
        let Step::Decrypt(then) = process(pgp_mime(armored).as_bytes().to_vec()) else { panic!("not decrypting") };
        assert_eq!(text(then.ciphertext()).trim_end(), armored);
        // As the SMTP gateway encrypts it: Content-* then protected headers.
        let inner = "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\n\
                     Content-Transfer-Encoding: 8bit\n\
                     From: Bob <bob@example.org>\nTo: alice@example.org\nSubject: secret plans\n\
                     Message-ID: <1@example.org>\nX-Leap-Encryption: provider\nKeywords: plans\n\n\
                     Meet me at noon. \u{e9}\n";
        let filed = file(then.decrypted(inner.as_bytes().to_vec(), valid_bob()));
        assert_eq!(
            text(&filed.raw),
            "X-Leap-Encryption: decrypted\r\nX-Leap-Signature: valid; pubkey=\"B0B\"\r\n\
             Return-Path: <bob@example.org>\r\nFrom: Bob <bob@example.org>\r\nTo: alice@example.org\r\n\
             Subject: secret plans\r\nMessage-ID: <1@example.org>\r\nKeywords: plans\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\nMeet me at noon. \u{e9}\r\n"
        );
        assert_eq!(filed.verified_sender.as_deref(), Some("bob@example.org"));
        let parsed = MessageParser::default().parse(&filed.raw).unwrap();
        assert_eq!(parsed.subject(), Some("secret plans"));
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "Meet me at noon. \u{e9}");
    }

    #[test]
    fn a_protected_subject_in_a_legacy_headers_part_replaces_the_outer_one() {
        let Step::Decrypt(then) = process(pgp_mime("x").as_bytes().to_vec()) else { panic!("not decrypting") };
        let inner = "Content-Type: multipart/mixed; boundary=\"in\"; protected-headers=\"v1\"\r\n\r\n\
                     --in\r\nContent-Type: text/rfc822-headers; protected-headers=\"v1\"\r\n\
                     Content-Disposition: inline\r\n\r\nSubject: the real one\r\n\r\n\
                     --in\r\nContent-Type: text/plain\r\n\r\nbody\r\n--in--\r\n";
        let filed = file(then.decrypted(inner.as_bytes().to_vec(), Checked::None));
        let parsed = MessageParser::default().parse(&filed.raw).unwrap();
        assert_eq!(parsed.subject(), Some("the real one"));
        assert_eq!(text(&filed.raw).matches("Subject:").count(), 2, "the outer one and the part's");
        assert_eq!(filed.signature, Signature::None);
        assert_eq!(filed.encryption, Encryption::Decrypted);
    }

    fn signed_entity() -> &'static str {
        "Content-Type: text/plain; charset=us-ascii\r\nSubject: inside\r\n\r\nSigned text\r\n"
    }

    fn multipart_signed(entity: &str) -> String {
        format!(
            "{FROM_BOB}Subject: signed\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/signed; micalg=pgp-sha256;\r\n protocol=\"application/pgp-signature\";\r\n\
             \tboundary=\"s1\"\r\n\r\npreamble\r\n--s1\r\n{entity}\r\n--s1\r\n\
             Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n\
             -----BEGIN PGP SIGNATURE-----\r\n\r\nSIG\r\n-----END PGP SIGNATURE-----\r\n\r\n--s1--\r\n"
        )
    }

    #[test]
    fn multipart_signed_is_verified_over_the_first_part_bytes_and_kept() {
        let sent = multipart_signed(signed_entity());
        let Step::Verify { data, detached, then } = process(sent.as_bytes().to_vec()) else { panic!("not verifying") };
        assert_eq!(text(&data), signed_entity());
        assert!(text(&detached.unwrap()).starts_with("-----BEGIN PGP SIGNATURE-----"));
        let filed = file(then.verified(valid_bob()));
        assert_eq!(
            text(&filed.raw),
            format!("X-Leap-Encryption: provider\r\nX-Leap-Signature: valid; pubkey=\"B0B\"\r\n{sent}")
        );

        // Bare LF line endings: the signed data is canonical CRLF.
        let lf = sent.replace("\r\n", "\n");
        let Step::Verify { data, .. } = process(lf.as_bytes().to_vec()) else { panic!("not verifying") };
        assert_eq!(text(&data), signed_entity());
    }

    #[test]
    fn a_signed_entity_inside_pgp_mime_is_verified_when_the_ciphertext_was_not_signed() {
        let inner = multipart_signed(signed_entity());
        let inner = &inner[inner.find("MIME-Version").unwrap()..];
        let Step::Decrypt(then) = process(pgp_mime("x").as_bytes().to_vec()) else { panic!("not decrypting") };
        let Step::Verify { data, detached, then } = then.decrypted(inner.as_bytes().to_vec(), Checked::None) else {
            panic!("not verifying")
        };
        assert_eq!((text(&data).as_str(), detached.is_some()), (signed_entity(), true));
        let filed = file(then.verified(Checked::Invalid));
        assert_eq!((filed.encryption, filed.signature), (Encryption::Decrypted, Signature::Invalid));
        let parsed = MessageParser::default().parse(&filed.raw).unwrap();
        assert_eq!(parsed.subject(), Some("inside"), "the signed part's Subject is the protected one");

        // Signed inside the OpenPGP message already: no second check.
        let Step::Decrypt(then) = process(pgp_mime("x").as_bytes().to_vec()) else { panic!("not decrypting") };
        let filed = file(then.decrypted(inner.as_bytes().to_vec(), valid_bob()));
        assert!(matches!(filed.signature, Signature::Valid { .. }));
    }

    #[test]
    fn inline_pgp_is_decrypted_in_place_and_inline_signatures_are_checked() {
        let sent = format!(
            "{FROM_BOB}Subject: inline\r\nContent-Type: text/plain; charset=us-ascii\r\n\
             Content-Transfer-Encoding: 7bit\r\n\r\nHello,\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nAAAA\r\n\
             -----END PGP MESSAGE-----\r\nBye\r\n"
        );
        let Step::Decrypt(then) = process(sent.as_bytes().to_vec()) else { panic!("not decrypting") };
        assert_eq!(text(then.ciphertext()), "-----BEGIN PGP MESSAGE-----\r\n\r\nAAAA\r\n-----END PGP MESSAGE-----");
        let filed = file(then.decrypted("Caf\u{e9}\nline two".as_bytes().to_vec(), Checked::UnknownSigner));
        assert_eq!(
            text(&filed.raw),
            format!(
                "X-Leap-Encryption: decrypted\r\nX-Leap-Signature: could not verify\r\n{FROM_BOB}\
                 Subject: inline\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Transfer-Encoding: 8bit\r\n\r\nHello,\r\nCaf\u{e9}\r\nline two\r\nBye\r\n"
            )
        );

        // A plaintext ending in a line break takes the END line's place.
        let Step::Decrypt(then) = process(sent.as_bytes().to_vec()) else { panic!("not decrypting") };
        let filed = file(then.decrypted(b"whole lines\n".to_vec(), Checked::None));
        assert!(text(&filed.raw).ends_with("\r\n\r\nHello,\r\nwhole lines\r\nBye\r\n"), "{}", text(&filed.raw));
        assert!(
            text(&filed.raw)
                .contains("Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n")
        );

        let signed = format!(
            "{FROM_BOB}Subject: clear\r\n\r\n-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\n\
             text\r\n-----BEGIN PGP SIGNATURE-----\r\n\r\nSIG\r\n-----END PGP SIGNATURE-----\r\n"
        );
        let Step::Verify { data, detached: None, then } = process(signed.as_bytes().to_vec()) else {
            panic!("not verifying")
        };
        assert!(text(&data).starts_with("-----BEGIN PGP SIGNED MESSAGE-----"));
        assert!(text(&data).ends_with("-----END PGP SIGNATURE-----"));
        let filed = file(then.verified(valid_bob()));
        assert!(text(&filed.raw).ends_with(&signed));
        assert_eq!(filed.encryption, Encryption::Provider);
    }

    #[test]
    fn content_that_cannot_be_decrypted_is_filed_as_it_came_marked_failed() {
        let sent = pgp_mime("garbage");
        let Step::Decrypt(then) = process(sent.as_bytes().to_vec()) else { panic!("not decrypting") };
        let filed = file(then.failed());
        assert_eq!((filed.encryption, &filed.signature), (Encryption::Failed, &Signature::CouldNotVerify));
        let expected = sent.replace("X-Leap-Signature: valid\r\n", "");
        assert_eq!(
            text(&filed.raw),
            format!("X-Leap-Encryption: failed\r\nX-Leap-Signature: could not verify\r\n{expected}")
        );
    }

    #[test]
    fn an_undecryptable_item_becomes_a_readable_message_with_the_bytes_attached() {
        let encrypted = [0x85u8, 0x01, 0x0c, 0x03, 0xff, 0x00, 0x42];
        let filed = undecryptable("alice@example.org", "0a1b", 1_770_000_000_123, "not for us", &encrypted);
        assert_eq!(filed, undecryptable("alice@example.org", "0a1b", 1_770_000_000_123, "not for us", &encrypted));
        assert!(text(&filed.raw).starts_with("X-Leap-Encryption: failed\r\nX-Leap-Signature: could not verify\r\n"));
        let parsed = MessageParser::default().parse(&filed.raw).unwrap();
        assert_eq!(parsed.subject(), Some(UNDECRYPTABLE_SUBJECT));
        assert_eq!(parsed.from().unwrap().first().unwrap().address(), Some(GATEWAY_ADDRESS));
        assert_eq!(parsed.date().unwrap().to_timestamp(), 1_770_000_000);
        assert!(parsed.body_text(0).unwrap().contains("not for us"));
        let attachment = parsed.attachment(0).unwrap();
        assert_eq!(attachment.contents(), encrypted);
        assert_eq!(attachment.attachment_name(), Some("incoming-0a1b.pgp"));
    }

    impl PartialEq for Filed {
        fn eq(&self, other: &Self) -> bool {
            self.raw == other.raw && self.encryption == other.encryption && self.signature == other.signature
        }
    }
}
