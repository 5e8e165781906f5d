//! RFC 3156 PGP/MIME composition of outgoing mail, without I/O and without
//! cryptography: the key service encrypts and signs, this module builds the
//! bytes it is given to work on and wraps what it gives back.
//!
//! The flow, for one group of recipients:
//!
//! 1. [`prepare`] parses the submitted message (raw RFC 5322 bytes) once.
//!    Line endings are made CRLF first (a bare LF becomes CRLF).
//! 2. If [`Prepared::is_encrypted`], the message is already encrypted
//!    (multipart/encrypted, S/MIME enveloped data or an inline PGP message)
//!    and goes out unchanged.
//! 3. To encrypt: [`Prepared::inner_for_encryption`] gives the MIME entity to
//!    encrypt (and sign inside the OpenPGP message); the key service turns it
//!    into armored ciphertext; [`Prepared::encrypted`] gives the message to
//!    send: multipart/encrypted, the neutral Subject `...`, no Bcc.
//! 4. To sign only: [`Prepared::entity_for_signing`] gives the canonical,
//!    7-bit MIME entity to sign; the key service makes a detached armored
//!    signature over exactly those bytes; [`Prepared::signed`] gives the
//!    multipart/signed message, which holds the entity byte for byte.
//!
//! Both inner entities carry protected headers
//! (draft-autocrypt-lamps-protected-headers): Subject, From, To, Cc, Date,
//! Message-ID and the other headers of [`PROTECTED_HEADERS`] are copied into
//! the entity's header, and its Content-Type gets `protected-headers="v1"`.
//! The sender's public key can be attached (application/pgp-keys): the
//! entity then becomes a multipart/mixed of the original body and the key.
//!
//! mail-parser reads header values (addresses, Content-Type parameters,
//! encoded words) and decodes bodies; mail-builder writes the header values
//! that must be re-encoded (non-ASCII text, addresses, parameters). The MIME
//! structure itself is split and written here, byte by byte, because RFC
//! 3156 needs exact control: the signed entity appears byte for byte inside
//! multipart/signed, boundaries never occur in the content they delimit,
//! lines are CRLF terminated and at most 998 bytes long.

use std::{
    borrow::Cow,
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    ops::Range,
};

use crate::text::crlf_line_endings;
use mail_builder::headers::{
    Header as _, address::Address as BuilderAddress, content_type::ContentType as BuilderContentType,
    text::Text as BuilderText,
};
use mail_parser::{Address as ParsedAddress, HeaderValue};

/// Headers copied into the signed entity's header as protected headers, in
/// the order they appear in the submitted message. The entity to encrypt
/// gets every header field instead (except Bcc, Content-* and
/// MIME-Version): what the outer header leaves out is not lost.
pub const PROTECTED_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mail-followup-to",
    "mail-reply-to",
    "followup-to",
    "newsgroups",
    "keywords",
    "comments",
];

/// Headers of the submitted message that the outer header of an encrypted
/// message keeps: what delivery, replies and threading need. Everything
/// else is only inside the ciphertext (as a protected header, or dropped).
pub const ENCRYPTED_OUTER_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mail-followup-to",
    "mail-reply-to",
    "auto-submitted",
    "disposition-notification-to",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-date",
    "resent-message-id",
    "autocrypt",
    "openpgp",
];

/// The Subject of an encrypted message's outer header (the draft's
/// recommended neutral value); the real one is a protected header.
pub const OBSCURED_SUBJECT: &str = "...";

/// Headers removed from every composed message (outer and inner).
const REMOVED_HEADERS: &[&str] = &["bcc", "resent-bcc"];

/// Headers whose value is an address list (re-encoded as addresses).
const ADDRESS_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "mail-followup-to",
    "mail-reply-to",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-bcc",
];

/// Deeper MIME nesting than this is treated as one opaque leaf.
const MAX_DEPTH: usize = 32;
/// More MIME entities than this and the rest are treated as opaque leaves.
const MAX_ENTITIES: usize = 4096;
/// RFC 5322 section 2.1.1: a line is at most 998 bytes, CRLF excluded.
const MAX_LINE: usize = 998;
/// Where generated header lines are folded (RFC 5322 recommends 78).
const FOLD_AT: usize = 78;

/// Why a message could not be composed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// The submitted message has no bytes (or only whitespace).
    #[error("message is empty")]
    MessageEmpty,
    /// The key service's output is not an ASCII-armored OpenPGP block of
    /// the expected kind (`PGP MESSAGE`, `PGP SIGNATURE`).
    #[error("{0} is not an ASCII-armored OpenPGP block")]
    NotArmored(&'static str),
    /// The micalg parameter is not `pgp-<hash>` (RFC 3156 section 5).
    #[error("micalg {0:?} is not pgp-<hash name>")]
    InvalidMicalg(String),
    /// An extra header's name is not a field name (or is one this module
    /// writes itself: Content-*, MIME-Version, Bcc), or its value is not
    /// printable ASCII (folded or not) that folds into lines of at most 998 bytes.
    #[error("extra header {0:?} is not a valid header field")]
    InvalidExtraHeader(String),
    /// The entity given to [`Prepared::signed`] cannot travel unchanged:
    /// it has 8-bit bytes, a bare CR or LF, or a line longer than 998 bytes.
    #[error("signed entity is not canonical 7-bit MIME: {0}")]
    SignedEntityNotCanonical(&'static str),
}

/// The sender's public key, attached to the inner entity as
/// application/pgp-keys (so the recipients can reply encrypted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAttachment {
    /// Attachment file name, e.g. `OpenPGP_0x1234ABCD.asc`.
    pub filename: String,
    /// The ASCII-armored public key (a binary key is sent base64-encoded).
    pub armored_public_key: Vec<u8>,
}

/// A submitted message, parsed once (see [`prepare`]).
#[derive(Clone)]
pub struct Prepared {
    /// The message with CRLF line endings; every range below points into it.
    message: Vec<u8>,
    /// The top-level MIME entity: the message header and body.
    root: Entity,
    encrypted: bool,
    recipients: Vec<String>,
    sender: Option<String>,
}

impl fmt::Debug for Prepared {
    // Mail content stays out of logs: only sizes and the decisions.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Prepared")
            .field("message_len", &self.message.len())
            .field("header_fields", &self.root.fields.len())
            .field("encrypted", &self.encrypted)
            .field("recipients", &self.recipients.len())
            .finish_non_exhaustive()
    }
}

/// One header field: its lower-case name and its raw bytes (name, value,
/// folding and final CRLF, if any).
#[derive(Debug, Clone)]
struct Field {
    name: String,
    range: Range<usize>,
}

/// A MIME entity: header fields and body, as ranges into the message.
#[derive(Debug, Clone)]
struct Entity {
    /// Header and body.
    range: Range<usize>,
    fields: Vec<Field>,
    body: Range<usize>,
    media: Media,
    content: Content,
}

#[derive(Debug, Clone)]
enum Content {
    Leaf,
    Multipart { boundary: Vec<u8>, preamble: Range<usize>, parts: Vec<Entity>, epilogue: Range<usize> },
    Message(Box<Entity>),
}

/// What the entity's Content-Type and Content-Transfer-Encoding say.
#[derive(Debug, Clone)]
struct Media {
    /// `type/subtype`, lower case; the RFC 2045 default when absent.
    mime_type: String,
    /// Whether a usable Content-Type field is present.
    has_content_type: bool,
    /// The Content-Type parameters already hold `protected-headers`.
    has_protected_headers: bool,
    boundary: Option<Vec<u8>>,
    smime_type: Option<String>,
    encoding: TransferEncoding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferEncoding {
    /// 7bit, 8bit, binary, absent or unknown: the body is its own content.
    Identity,
    QuotedPrintable,
    Base64,
}

/// Parses the submitted message (raw RFC 5322 bytes) once.
///
/// Never panics on malformed input: a message without a header is all
/// body, a broken multipart is an opaque leaf, LF line endings become CRLF.
pub fn prepare(raw: &[u8]) -> Result<Prepared, ComposeError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ComposeError::MessageEmpty);
    }
    parsed(crlf_line_endings(raw))
}

/// [`prepare`], taking the message: one with CRLF line endings already (as
/// SMTP delivers it) is kept, not copied.
pub fn prepare_owned(raw: Vec<u8>) -> Result<Prepared, ComposeError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ComposeError::MessageEmpty);
    }
    let bare_line_feed = raw.iter().enumerate().any(|(at, &byte)| byte == b'\n' && (at == 0 || raw[at - 1] != b'\r'));
    parsed(if bare_line_feed { crlf_line_endings(&raw) } else { raw })
}

fn parsed(message: Vec<u8>) -> Result<Prepared, ComposeError> {
    let mut budget = MAX_ENTITIES;
    let root = parse_entity(&message, 0..message.len(), 0, false, &mut budget);
    let header = parse_header_values(&message, &root);
    let encrypted = is_encrypted_entity(&message, &root);
    let mut recipients = Vec::new();
    let mut sender = None;
    if let Some(header) = &header {
        for parsed in header.parts.first().map(|part| part.headers.as_slice()).unwrap_or_default() {
            let name = parsed.name.as_str().to_ascii_lowercase();
            let Some(addresses) = parsed.value.as_address() else { continue };
            match name.as_str() {
                "to" | "cc" | "bcc" => {
                    for address in address_list(addresses) {
                        if !recipients.contains(&address) {
                            recipients.push(address);
                        }
                    }
                }
                "from" if sender.is_none() => sender = address_list(addresses).into_iter().next(),
                _ => {}
            }
        }
    }
    Ok(Prepared { message, root, encrypted, recipients, sender })
}

impl Prepared {
    /// The message as submitted, with CRLF line endings.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Whether the message is already encrypted and goes out unchanged:
    /// multipart/encrypted, S/MIME enveloped data (application/pkcs7-mime),
    /// or a single text part that is one inline PGP MESSAGE block and
    /// nothing else (text that merely quotes such a block is not).
    pub fn is_encrypted(&self) -> bool {
        self.encrypted
    }

    /// The To, Cc and Bcc addresses (groups included), lower case, without
    /// duplicates, in order: for when the SMTP envelope gives none.
    pub fn recipients(&self) -> Vec<String> {
        self.recipients.clone()
    }

    /// The first From address, lower case: whose key signs.
    pub fn sender(&self) -> Option<String> {
        self.sender.clone()
    }

    /// The MIME entity to encrypt (and sign inside the OpenPGP message):
    /// the original body with its Content-* headers, the protected headers
    /// (here every header field but Bcc: the outer header keeps only
    /// routing), `protected-headers="v1"` on its Content-Type, CRLF; with
    /// `attach_key`, a multipart/mixed of that body and the key. The body
    /// bytes are kept as they are (8-bit is fine inside an OpenPGP message).
    pub fn inner_for_encryption(&self, attach_key: Option<&KeyAttachment>) -> Vec<u8> {
        self.inner_entity(Mode::Encrypt, attach_key)
    }

    /// The MIME entity to sign for sign-only mail (RFC 3156 section 3):
    /// canonical CRLF, 7-bit (any 8-bit, overlong or trailing-whitespace
    /// part is re-encoded quoted-printable or base64, lines starting with
    /// `From ` are quoted-printable encoded), header lines without trailing
    /// whitespace, with the same protected headers and, when given, the
    /// sender's key attached. Parts that are already safe are kept byte for
    /// byte (so a forwarded signed message keeps its signature).
    pub fn entity_for_signing(&self, attach_key: Option<&KeyAttachment>) -> Vec<u8> {
        self.inner_entity(Mode::Sign, attach_key)
    }

    /// The message to send, encrypted: the outer header keeps what routing
    /// and threading need ([`ENCRYPTED_OUTER_HEADERS`]), Subject becomes
    /// [`OBSCURED_SUBJECT`], Bcc is removed; `extra_headers` (e.g.
    /// `OpenPGP`, `Autocrypt`) are added, replacing submitted ones of the
    /// same name. The body is RFC 3156 multipart/encrypted: the
    /// application/pgp-encrypted `Version: 1` part, then the
    /// application/octet-stream part holding `armored_ciphertext`.
    pub fn encrypted(
        &self,
        armored_ciphertext: &[u8],
        extra_headers: &[(String, String)],
    ) -> Result<Vec<u8>, ComposeError> {
        let mut message = self.encrypted_message(extra_headers, armored_ciphertext.len())?;
        message.push(armored_ciphertext);
        message.finish()
    }

    /// [`Prepared::encrypted`] written as the armored ciphertext arrives
    /// ([`EncryptedMessage::push`]), so a big one is never held twice;
    /// `size` is what it is expected to be (the buffer is reserved for it).
    pub fn encrypted_message(
        &self,
        extra_headers: &[(String, String)],
        size: usize,
    ) -> Result<EncryptedMessage, ComposeError> {
        let extra = extra_fields(extra_headers)?;
        // Checked against the armor when it is whole (EncryptedMessage::finish).
        let header = self.message.get(..self.root.body.start).unwrap_or_default();
        let boundary = choose_boundary(&[header, &self.message.len().to_be_bytes()]);

        let mut out = Vec::with_capacity(size + size / 32 + 2048);
        self.write_outer_header(&mut out, Mode::Encrypt, extra_headers, &extra);
        out.extend_from_slice(b"Content-Type: multipart/encrypted;\r\n protocol=\"application/pgp-encrypted\";\r\n");
        write_boundary_parameter(&mut out, &boundary);
        out.extend_from_slice(b"\r\nThis is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n");
        write_delimiter(&mut out, &boundary, false);
        out.extend_from_slice(
            b"Content-Type: application/pgp-encrypted\r\n\
              Content-Description: PGP/MIME version identification\r\n\
              \r\n\
              Version: 1\r\n\
              \r\n",
        );
        write_delimiter(&mut out, &boundary, false);
        out.extend_from_slice(
            b"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\
              Content-Description: OpenPGP encrypted message\r\n\
              Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\
              \r\n",
        );
        let armor_start = out.len();
        Ok(EncryptedMessage { out, boundary, armor_start, line: Vec::new(), started: false })
    }

    /// The message to send, signed: multipart/signed with `micalg` (e.g.
    /// `pgp-sha256`, lower-cased) and protocol="application/pgp-signature";
    /// first `signed_entity` byte for byte (what
    /// [`Prepared::entity_for_signing`] gave and was signed), then the
    /// detached `armored_signature`. The outer header is the submitted one
    /// without Content-* headers and Bcc, with `extra_headers` added.
    pub fn signed(
        &self,
        signed_entity: &[u8],
        armored_signature: &[u8],
        micalg: &str,
        extra_headers: &[(String, String)],
    ) -> Result<Vec<u8>, ComposeError> {
        check_signed_entity(signed_entity)?;
        let signature = armored_block(armored_signature, "SIGNATURE", "signature")?;
        let micalg = micalg.to_ascii_lowercase();
        let valid_micalg = micalg.strip_prefix("pgp-").is_some_and(|hash| {
            !hash.is_empty() && hash.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        });
        if !valid_micalg {
            return Err(ComposeError::InvalidMicalg(micalg));
        }
        let extra = extra_fields(extra_headers)?;
        let boundary = choose_boundary(&[signed_entity, &signature]);

        let mut out = Vec::with_capacity(signed_entity.len() + signature.len() + 2048);
        self.write_outer_header(&mut out, Mode::Sign, extra_headers, &extra);
        out.extend_from_slice(b"Content-Type: multipart/signed; micalg=");
        out.extend_from_slice(micalg.as_bytes());
        out.extend_from_slice(b";\r\n protocol=\"application/pgp-signature\";\r\n");
        write_boundary_parameter(&mut out, &boundary);
        out.extend_from_slice(b"\r\nThis is an OpenPGP/MIME signed message (RFC 4880 and 3156)\r\n");
        write_delimiter(&mut out, &boundary, false);
        // RFC 3156 section 5: the signed data is everything between the
        // delimiter line's CRLF and the CRLF that precedes the next one.
        out.extend_from_slice(signed_entity);
        out.extend_from_slice(b"\r\n");
        write_delimiter(&mut out, &boundary, false);
        out.extend_from_slice(
            b"Content-Type: application/pgp-signature; name=\"signature.asc\"\r\n\
              Content-Description: OpenPGP digital signature\r\n\
              Content-Disposition: attachment; filename=\"signature.asc\"\r\n\
              \r\n",
        );
        out.extend_from_slice(&signature);
        out.extend_from_slice(b"\r\n");
        write_delimiter(&mut out, &boundary, true);
        Ok(out)
    }

    fn raw(&self, range: &Range<usize>) -> &[u8] {
        self.message.get(range.clone()).unwrap_or_default()
    }

    fn inner_entity(&self, mode: Mode, attach_key: Option<&KeyAttachment>) -> Vec<u8> {
        let (mut fields, body) = self.render_root(mode);
        let protected = self.protected_fields(mode);
        let Some(key) = attach_key else {
            let mut out = Vec::with_capacity(body.len() + 1024);
            for field in &mut fields {
                if field.0 == "content-type" && !self.root.media.has_protected_headers {
                    field.1 = with_protected_parameter(&field.1);
                }
            }
            write_fields(&mut out, fields.iter().map(|(_, bytes)| bytes.as_slice()));
            write_fields(&mut out, protected.iter().map(Vec::as_slice));
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
            return out;
        };

        // The original's header and body are written straight into the
        // entity (a big body is copied once, here).
        let mut original_header = Vec::with_capacity(1024);
        write_fields(&mut original_header, fields.iter().map(|(_, bytes)| bytes.as_slice()));
        original_header.extend_from_slice(b"\r\n");
        let key_part = key_attachment_part(key);
        let boundary = choose_boundary(&[&original_header, &body, &key_part]);

        let mut out = Vec::with_capacity(original_header.len() + body.len() + key_part.len() + 1024);
        out.extend_from_slice(b"Content-Type: multipart/mixed;\r\n");
        write_boundary_parameter_open(&mut out, &boundary);
        out.extend_from_slice(b";\r\n protected-headers=\"v1\"\r\n");
        write_fields(&mut out, protected.iter().map(Vec::as_slice));
        out.extend_from_slice(b"\r\n");
        write_delimiter(&mut out, &boundary, false);
        out.extend_from_slice(&original_header);
        out.extend_from_slice(&body);
        out.extend_from_slice(b"\r\n");
        write_delimiter(&mut out, &boundary, false);
        out.extend_from_slice(&key_part);
        out.extend_from_slice(b"\r\n");
        write_delimiter(&mut out, &boundary, true);
        out
    }

    /// The root entity's Content-* fields (name, bytes) and body, in the
    /// form `mode` needs. A Content-Type field is always among the fields.
    fn render_root(&self, mode: Mode) -> (Vec<NamedField>, Cow<'_, [u8]>) {
        let root = &self.root;
        // The first field of each Content-* name (the one readers use);
        // an unreadable Content-Type is replaced by the default below.
        let mut content_fields: Vec<&Field> = Vec::new();
        for field in &root.fields {
            let first = !content_fields.iter().any(|seen| seen.name == field.name);
            let usable = field.name != "content-type" || root.media.has_content_type;
            if field.name.starts_with("content-") && first && usable {
                content_fields.push(field);
            }
        }
        let (mut fields, body) = match mode {
            Mode::Encrypt => {
                let mut fields: Vec<(String, Vec<u8>)> = content_fields
                    .iter()
                    .map(|field| (field.name.clone(), ensure_crlf(self.raw(&field.range))))
                    .collect();
                let body = self.raw(&root.body);
                let has_encoding = fields.iter().any(|(name, _)| name == "content-transfer-encoding");
                if !has_encoding && !body.is_ascii() && matches!(root.content, Content::Leaf) {
                    // Say what it is: inside the OpenPGP message 8-bit is fine.
                    fields.push(("content-transfer-encoding".into(), b"Content-Transfer-Encoding: 8bit\r\n".to_vec()));
                }
                (fields, Cow::Borrowed(body))
            }
            Mode::Sign => {
                let (fields, body) = self.render_for_signing(root, &content_fields, 0);
                (fields, Cow::Owned(body))
            }
        };
        if !fields.iter().any(|(name, _)| name == "content-type") {
            let charset = if self.raw(&root.body).is_ascii() { "us-ascii" } else { "utf-8" };
            let mime_type = if root.media.has_content_type { root.media.mime_type.as_str() } else { "text/plain" };
            let field = if mime_type == "text/plain" {
                format!("Content-Type: text/plain; charset={charset}\r\n")
            } else {
                format!("Content-Type: {mime_type}\r\n")
            };
            fields.insert(0, ("content-type".to_owned(), field.into_bytes()));
        }
        (fields, body)
    }

    /// An entity (its `fields`) made 7-bit safe for signing: cleaned header
    /// fields and the body kept, re-encoded or rebuilt from its parts.
    fn render_for_signing(
        &self,
        entity: &Entity,
        fields: &[&Field],
        depth: usize,
    ) -> (Vec<(String, Vec<u8>)>, Vec<u8>) {
        let body = self.raw(&entity.body);
        let mut rendered: Vec<(String, Vec<u8>)> = Vec::with_capacity(fields.len() + 1);
        let mut new_encoding = None;
        let out_body = match &entity.content {
            _ if is_seven_bit_safe(body) => body.to_vec(),
            Content::Leaf if entity.media.mime_type.starts_with("multipart/") => {
                // A multipart without a usable boundary: opaque data now.
                new_encoding = Some("base64");
                rendered.push(("content-type".into(), b"Content-Type: application/octet-stream\r\n".to_vec()));
                base64_lines(body)
            }
            Content::Leaf => {
                let decoded = decode_body(body, entity.media.encoding);
                let is_text = entity.media.mime_type.starts_with("text/") || !entity.media.has_content_type;
                if is_text && decoded.iter().filter(|&&byte| byte >= 0x80).count() * 3 <= decoded.len() {
                    new_encoding = Some("quoted-printable");
                    if !entity.media.has_content_type && std::str::from_utf8(&decoded).is_ok() {
                        rendered.push(("content-type".into(), b"Content-Type: text/plain; charset=utf-8\r\n".to_vec()));
                    }
                    quoted_printable(&decoded)
                } else {
                    new_encoding = Some("base64");
                    base64_lines(&decoded)
                }
            }
            Content::Message(inner) => {
                let mut out = Vec::with_capacity(body.len());
                self.write_signing_entity(&mut out, inner, depth + 1);
                out
            }
            Content::Multipart { boundary, preamble, parts, epilogue } => {
                let mut out = Vec::with_capacity(body.len() + 256);
                let preamble = self.raw(preamble);
                if !preamble.is_empty() && is_seven_bit_safe(preamble) {
                    out.extend_from_slice(preamble);
                    out.extend_from_slice(b"\r\n");
                }
                for part in parts {
                    out.extend_from_slice(b"--");
                    out.extend_from_slice(boundary);
                    out.extend_from_slice(b"\r\n");
                    self.write_signing_entity(&mut out, part, depth + 1);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"--");
                out.extend_from_slice(boundary);
                out.extend_from_slice(b"--\r\n");
                let epilogue = self.raw(epilogue);
                if !epilogue.is_empty() && is_seven_bit_safe(epilogue) {
                    out.extend_from_slice(epilogue);
                }
                out
            }
        };
        let reencoded_container = !matches!(entity.content, Content::Leaf) && !is_seven_bit_safe(body);
        for field in fields {
            let replaced_type = field.name == "content-type" && rendered.iter().any(|(name, _)| name == "content-type");
            let replaced_encoding =
                field.name == "content-transfer-encoding" && (new_encoding.is_some() || reencoded_container);
            if replaced_type || replaced_encoding {
                continue;
            }
            if let Some(bytes) = clean_field(self.raw(&field.range), &field.name) {
                rendered.push((field.name.clone(), bytes));
            }
        }
        if let Some(encoding) = new_encoding {
            rendered.push((
                "content-transfer-encoding".into(),
                format!("Content-Transfer-Encoding: {encoding}\r\n").into_bytes(),
            ));
        }
        (rendered, out_body)
    }

    /// A nested entity for signing: kept byte for byte when already safe.
    fn write_signing_entity(&self, out: &mut Vec<u8>, entity: &Entity, depth: usize) {
        let raw = self.raw(&entity.range);
        if is_seven_bit_safe(raw) || depth > MAX_DEPTH {
            out.extend_from_slice(raw);
            return;
        }
        let fields: Vec<&Field> = entity.fields.iter().collect();
        let (fields, body) = self.render_for_signing(entity, &fields, depth);
        write_fields(out, fields.iter().map(|(_, bytes)| bytes.as_slice()));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }

    /// The protected headers, cleaned, in message order.
    fn protected_fields(&self, mode: Mode) -> Vec<Vec<u8>> {
        let protected = |name: &str| match mode {
            Mode::Sign => PROTECTED_HEADERS.contains(&name),
            Mode::Encrypt => {
                !REMOVED_HEADERS.contains(&name) && !name.starts_with("content-") && name != "mime-version"
            }
        };
        self.root
            .fields
            .iter()
            .filter(|field| protected(&field.name))
            .filter_map(|field| clean_field(self.raw(&field.range), &field.name))
            .collect()
    }

    /// The outer header: kept fields (cleaned) in message order, the
    /// neutral Subject when encrypting, MIME-Version, the extra headers.
    fn write_outer_header(&self, out: &mut Vec<u8>, mode: Mode, extra_headers: &[(String, String)], extra: &[Vec<u8>]) {
        let replaced = |name: &str| extra_headers.iter().any(|(extra_name, _)| extra_name.eq_ignore_ascii_case(name));
        let mut wrote_subject = false;
        for field in &self.root.fields {
            let name = field.name.as_str();
            if REMOVED_HEADERS.contains(&name)
                || name == "mime-version"
                || name.starts_with("content-")
                || replaced(name)
            {
                continue;
            }
            if mode == Mode::Encrypt {
                if name == "subject" {
                    if !wrote_subject {
                        out.extend_from_slice(format!("Subject: {OBSCURED_SUBJECT}\r\n").as_bytes());
                        wrote_subject = true;
                    }
                    continue;
                }
                if !ENCRYPTED_OUTER_HEADERS.contains(&name) {
                    continue;
                }
            }
            if let Some(bytes) = clean_field(self.raw(&field.range), name) {
                out.extend_from_slice(&bytes);
            }
        }
        if mode == Mode::Encrypt && !wrote_subject {
            out.extend_from_slice(format!("Subject: {OBSCURED_SUBJECT}\r\n").as_bytes());
        }
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        write_fields(out, extra.iter().map(Vec::as_slice));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Encrypt,
    Sign,
}

// ---------------------------------------------------------------------------
// Parsing

/// The end of the line starting at `start` (the index of its CR, or `end`)
/// and where the next line starts. After [`crlf_line_endings`] every LF is
/// preceded by a CR.
fn line_at(buffer: &[u8], start: usize, end: usize) -> (usize, usize) {
    let slice = buffer.get(start..end).unwrap_or_default();
    match slice.iter().position(|&byte| byte == b'\n') {
        Some(offset) => {
            let newline = start + offset;
            let line_end =
                if newline > start && buffer.get(newline - 1) == Some(&b'\r') { newline - 1 } else { newline };
            (line_end, newline + 1)
        }
        None => (end, end),
    }
}

/// The lower-case field name if `line` starts a header field: printable
/// ASCII other than `:`, optionally followed by whitespace, then `:`.
fn field_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&byte| byte == b':')?;
    let name = line.get(..colon)?;
    let name = name.trim_ascii_end();
    let valid = !name.is_empty() && name.iter().all(|&byte| (33..=126).contains(&byte));
    valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// Splits the header of the entity in `range`: its fields and where its
/// body starts.
///
/// A line that is neither a field nor a continuation: in a MIME part it
/// ends the header without a blank line (it is the first line of the body,
/// as RFC 2046 generators that omit the blank line mean). In the message
/// header (`is_root`) it is skipped up to the blank line, as mail-parser
/// does: a Bcc after a broken line (or after an mbox `From ` line) is
/// still a header field, and removed, not body text sent to everyone.
fn parse_fields(buffer: &[u8], range: &Range<usize>, is_root: bool) -> (Vec<Field>, usize) {
    let mut fields: Vec<Field> = Vec::new();
    let mut position = range.start;
    let mut in_field = false;
    while position < range.end {
        let (line_end, next) = line_at(buffer, position, range.end);
        let line = buffer.get(position..line_end).unwrap_or_default();
        if line.is_empty() {
            return (fields, next);
        }
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        match (continuation, fields.last_mut()) {
            (true, Some(field)) if in_field => field.range.end = next,
            _ => {
                if let Some(name) = field_name(line).filter(|_| !continuation) {
                    fields.push(Field { name, range: position..next });
                    in_field = true;
                } else if is_root {
                    in_field = false;
                } else {
                    return (fields, position);
                }
            }
        }
        position = next;
    }
    (fields, range.end)
}

fn parse_entity(buffer: &[u8], range: Range<usize>, depth: usize, in_digest: bool, budget: &mut usize) -> Entity {
    *budget = budget.saturating_sub(1);
    let (fields, body_start) = parse_fields(buffer, &range, depth == 0);
    let body = body_start..range.end;
    let media = media_of(buffer, &fields, in_digest);
    let mut entity = Entity { range, fields, body, media, content: Content::Leaf };
    if depth >= MAX_DEPTH || *budget == 0 {
        return entity;
    }
    if entity.media.mime_type.starts_with("multipart/") {
        let Some(boundary) = entity.media.boundary.clone() else { return entity };
        let Some((preamble, part_ranges, epilogue)) = split_multipart(buffer, &entity.body, &boundary) else {
            return entity;
        };
        let digest = entity.media.mime_type == "multipart/digest";
        let parts = part_ranges.into_iter().map(|part| parse_entity(buffer, part, depth + 1, digest, budget)).collect();
        entity.content = Content::Multipart { boundary, preamble, parts, epilogue };
    } else if matches!(entity.media.mime_type.as_str(), "message/rfc822" | "message/global")
        && entity.media.encoding == TransferEncoding::Identity
    {
        let inner = parse_entity(buffer, entity.body.clone(), depth + 1, false, budget);
        entity.content = Content::Message(Box::new(inner));
    }
    entity
}

/// A multipart body's preamble, parts and epilogue.
type MultipartSplit = (Range<usize>, Vec<Range<usize>>, Range<usize>);

/// Splits a multipart body at its boundary (RFC 2046 section 5.1.1): the
/// CRLF before a delimiter line belongs to the delimiter. `None` when the
/// boundary never occurs; an unterminated last part runs to the end.
fn split_multipart(buffer: &[u8], body: &Range<usize>, boundary: &[u8]) -> Option<MultipartSplit> {
    let mut preamble = None;
    let mut parts = Vec::new();
    let mut content_start = body.start;
    let mut position = body.start;
    while position < body.end {
        let (line_end, next) = line_at(buffer, position, body.end);
        let line = buffer.get(position..line_end).unwrap_or_default();
        if let Some(rest) = line.strip_prefix(b"--").and_then(|rest| rest.strip_prefix(boundary)) {
            let is_close =
                rest.strip_prefix(b"--").is_some_and(|padding| padding.iter().all(|&b| b == b' ' || b == b'\t'));
            let is_delimiter = rest.iter().all(|&b| b == b' ' || b == b'\t');
            if is_close || is_delimiter {
                let content_end = if position >= content_start + 2 { position - 2 } else { content_start };
                match preamble {
                    None => preamble = Some(content_start..content_end),
                    Some(_) => parts.push(content_start..content_end),
                }
                if is_close {
                    return preamble.map(|preamble| (preamble, parts, next..body.end));
                }
                content_start = next;
            }
        }
        position = next;
    }
    let preamble = preamble?;
    parts.push(content_start..body.end);
    Some((preamble, parts, body.end..body.end))
}

/// Parses header fields with mail-parser (one field, or a whole header).
fn parse_header_block(bytes: &[u8]) -> Option<mail_parser::Message<'_>> {
    bitmask_mime::parse_headers(bytes)
}

fn parse_header_values<'a>(buffer: &'a [u8], root: &Entity) -> Option<mail_parser::Message<'a>> {
    let header = buffer.get(root.range.start..root.body.start)?;
    parse_header_block(header)
}

fn media_of(buffer: &[u8], fields: &[Field], in_digest: bool) -> Media {
    let default_type = if in_digest { "message/rfc822" } else { "text/plain" };
    let mut media = Media {
        mime_type: default_type.to_owned(),
        has_content_type: false,
        has_protected_headers: false,
        boundary: None,
        smime_type: None,
        encoding: TransferEncoding::Identity,
    };
    if let Some(field) = fields.iter().find(|field| field.name == "content-type") {
        let raw = ensure_crlf(buffer.get(field.range.clone()).unwrap_or_default());
        if let Some(parsed) = parse_header_block(&raw)
            && let Some(header) = parsed.parts.first().and_then(|part| part.headers.first())
            && let Some(content_type) = header.value.as_content_type()
            && let Some(subtype) = content_type.subtype()
        {
            let main = content_type.ctype().trim();
            let subtype = subtype.trim();
            let token = |value: &str| !value.is_empty() && value.bytes().all(|byte| (33..=126).contains(&byte));
            if token(main) && token(subtype) {
                media.mime_type = format!("{main}/{subtype}").to_ascii_lowercase();
                media.has_content_type = true;
                media.has_protected_headers = content_type.has_attribute("protected-headers");
                media.boundary = content_type
                    .attribute("boundary")
                    .filter(|boundary| !boundary.is_empty() && boundary.len() <= 200 && boundary.is_ascii())
                    .map(|boundary| boundary.as_bytes().to_vec());
                media.smime_type = content_type.attribute("smime-type").map(str::to_ascii_lowercase);
            }
        }
    }
    if let Some(field) = fields.iter().find(|field| field.name == "content-transfer-encoding") {
        let raw = buffer.get(field.range.clone()).unwrap_or_default();
        let value =
            raw.iter().position(|&byte| byte == b':').and_then(|colon| raw.get(colon + 1..)).unwrap_or_default();
        let value = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
        media.encoding = match value.as_str() {
            "quoted-printable" => TransferEncoding::QuotedPrintable,
            "base64" => TransferEncoding::Base64,
            _ => TransferEncoding::Identity,
        };
    }
    media
}

fn is_encrypted_entity(buffer: &[u8], root: &Entity) -> bool {
    match root.media.mime_type.as_str() {
        "multipart/encrypted" => true,
        "application/pkcs7-mime" | "application/x-pkcs7-mime" => {
            matches!(root.media.smime_type.as_deref(), Some("enveloped-data" | "authenveloped-data"))
        }
        "text/plain" => {
            let decoded = decode_body(buffer.get(root.body.clone()).unwrap_or_default(), root.media.encoding);
            let text = decoded.trim_ascii();
            text.starts_with(b"-----BEGIN PGP MESSAGE-----") && text.ends_with(b"-----END PGP MESSAGE-----")
        }
        _ => false,
    }
}

/// The addresses of an address header, lower case; entries without `@`
/// (group names, garbage) are skipped.
fn address_list(addresses: &ParsedAddress<'_>) -> Vec<String> {
    addresses
        .iter()
        .filter_map(|address| address.address.as_deref())
        .map(|address| address.trim().to_ascii_lowercase())
        .filter(|address| address.contains('@') && !address.contains(char::is_whitespace))
        .collect()
}

// ---------------------------------------------------------------------------
// Bodies

fn decode_body(body: &[u8], encoding: TransferEncoding) -> Vec<u8> {
    let decoded = match encoding {
        TransferEncoding::Identity => None,
        TransferEncoding::QuotedPrintable => mail_parser::decoders::quoted_printable::quoted_printable_decode(body),
        TransferEncoding::Base64 => mail_parser::decoders::base64::base64_decode(body),
    };
    decoded.unwrap_or_else(|| body.to_vec())
}

/// Whether `bytes` can travel and be verified unchanged (RFC 3156 section
/// 3): 7-bit without NUL, CR and LF only as CRLF, lines of at most 998
/// bytes, no trailing whitespace, no line starting with `From `.
fn is_seven_bit_safe(bytes: &[u8]) -> bool {
    let mut position = 0;
    while position < bytes.len() {
        let (line_end, next) = line_at(bytes, position, bytes.len());
        let line = bytes.get(position..line_end).unwrap_or_default();
        let unsafe_byte = line.iter().any(|&byte| byte == 0 || byte >= 0x80 || byte == b'\r' || byte == b'\n');
        let bare_newline = next > line_end && next - line_end != 2;
        if unsafe_byte
            || bare_newline
            || line.len() > MAX_LINE
            || line.ends_with(b" ")
            || line.ends_with(b"\t")
            || line.starts_with(b"From ")
        {
            return false;
        }
        position = next;
    }
    true
}

/// Quoted-printable (RFC 2045 section 6.7) of content whose line breaks
/// are CRLF: encoded lines of at most 76 characters, no trailing
/// whitespace, and no line starting with `From ` or `-` (so the result
/// never contains a boundary delimiter line).
fn quoted_printable(content: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(content.len() + content.len() / 8);
    let mut lines = content.split(|&byte| byte == b'\n').peekable();
    while let Some(line) = lines.next() {
        let is_last = lines.peek().is_none();
        // A CR right before the LF is the line break; any other CR is data.
        let line = if is_last { line } else { line.strip_suffix(b"\r").unwrap_or(line) };
        let mut column = 0;
        for (index, &byte) in line.iter().enumerate() {
            let at_line_end = index + 1 == line.len();
            let starts_from = byte == b'F' && line.get(index..).is_some_and(|rest| rest.starts_with(b"From "));
            let mut escape = byte == b'='
                || byte >= 0x7f
                || (byte < 0x20 && byte != b'\t')
                || ((byte == b' ' || byte == b'\t') && at_line_end);
            let width = if escape { 3 } else { 1 };
            if column + width > 75 {
                out.extend_from_slice(b"=\r\n");
                column = 0;
            }
            if column == 0 && (byte == b'-' || starts_from) {
                escape = true;
            }
            if escape {
                out.extend_from_slice(&[b'=', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]]);
                column += 3;
            } else {
                out.push(byte);
                column += 1;
            }
        }
        if !is_last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Base64 in CRLF-terminated lines of 76 characters.
fn base64_lines(content: &[u8]) -> Vec<u8> {
    let mut out = data_encoding::BASE64_MIME.encode(content).into_bytes();
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn key_attachment_part(key: &KeyAttachment) -> Vec<u8> {
    let filename: String =
        key.filename.chars().filter(|c| !c.is_control() && !matches!(c, '/' | '\\' | '"')).collect::<String>();
    let filename = if filename.trim().is_empty() { "publickey.asc".to_owned() } else { filename.trim().to_owned() };
    let armored = crlf_line_endings(key.armored_public_key.trim_ascii());
    let mut part = Vec::with_capacity(armored.len() + 512);
    part.extend_from_slice(b"Content-Type: ");
    let content_type = BuilderContentType::new("application/pgp-keys").attribute("name", filename.as_str());
    if content_type.write_header(&mut part, "Content-Type: ".len()).is_err() {
        part.extend_from_slice(b"application/pgp-keys\r\n");
    }
    part.extend_from_slice(b"Content-Disposition: ");
    let disposition = BuilderContentType::new("attachment").attribute("filename", filename.as_str());
    if disposition.write_header(&mut part, "Content-Disposition: ".len()).is_err() {
        part.extend_from_slice(b"attachment\r\n");
    }
    part.extend_from_slice(b"Content-Description: OpenPGP public key\r\n");
    if is_seven_bit_safe(&armored) {
        part.extend_from_slice(b"Content-Transfer-Encoding: 7bit\r\n\r\n");
        part.extend_from_slice(&armored);
        part.extend_from_slice(b"\r\n");
    } else {
        part.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        part.extend_from_slice(&base64_lines(&key.armored_public_key));
    }
    part
}

/// The key service's armored output, checked and with CRLF line endings,
/// ending in CRLF.
fn armored_block(bytes: &[u8], kind: &str, what: &'static str) -> Result<Vec<u8>, ComposeError> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    push_armored(&mut out, bytes, kind, what)?;
    Ok(out)
}

/// Appends the key service's armored output to `out` in one pass (a 25 MB
/// message's ciphertext is not copied twice more): checked, each line
/// without trailing whitespace, CRLF line endings, ending in CRLF. On an
/// error `out` is as it was.
/// A header field: its lower-case name and its bytes.
type NamedField = (String, Vec<u8>);

/// An encrypted message being written ([`Prepared::encrypted_message`]):
/// the armor goes in as it comes, a line at a time, as [`push_armored`]
/// has it (surrounding blank lines dropped, trailing whitespace dropped,
/// CRLF line ends).
pub struct EncryptedMessage {
    out: Vec<u8>,
    boundary: String,
    /// Where the armor starts in `out`.
    armor_start: usize,
    /// The line not ended yet.
    line: Vec<u8>,
    /// A line that is not blank has been written.
    started: bool,
}

impl fmt::Debug for EncryptedMessage {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("EncryptedMessage").field("size", &self.out.len()).finish_non_exhaustive()
    }
}

impl EncryptedMessage {
    /// More of the armored ciphertext.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = bytes.split_at(at);
            self.line.extend_from_slice(line);
            self.end_line();
            bytes = rest.get(1..).unwrap_or_default();
        }
        self.line.extend_from_slice(bytes);
    }

    fn end_line(&mut self) {
        let line = self.line.trim_ascii_end();
        if !self.started {
            if line.is_empty() {
                self.line.clear();
                return;
            }
            self.started = true;
            self.out.extend_from_slice(line.trim_ascii_start());
        } else {
            self.out.extend_from_slice(line);
        }
        self.out.extend_from_slice(b"\r\n");
        self.line.clear();
    }

    /// The whole message: the armor is checked (one PGP MESSAGE block,
    /// 7-bit) and the closing delimiter written.
    pub fn finish(mut self) -> Result<Vec<u8>, ComposeError> {
        if !self.line.is_empty() {
            self.end_line();
        }
        while self.out.len() > self.armor_start + 2 && self.out.ends_with(b"\r\n\r\n") {
            self.out.truncate(self.out.len() - 2);
        }
        let armor = self.out.get(self.armor_start..).unwrap_or_default();
        let block = armor.strip_suffix(b"\r\n").unwrap_or(armor);
        if !block.starts_with(b"-----BEGIN PGP MESSAGE-----")
            || !block.ends_with(b"-----END PGP MESSAGE-----")
            || !is_seven_bit_safe(armor)
        {
            return Err(ComposeError::NotArmored("ciphertext"));
        }
        if memchr::memmem::find(armor, self.boundary.as_bytes()).is_some() {
            // Never seen (the boundary is random-looking and the armor is
            // base64): another boundary of the same length, written over
            // the old one where the header and delimiters name it.
            let boundary = choose_boundary(&[armor]);
            let (head, _) = self.out.split_at_mut(self.armor_start);
            let mut at = 0;
            while let Some(found) = memchr::memmem::find(head.get(at..).unwrap_or_default(), self.boundary.as_bytes()) {
                let start = at + found;
                if let Some(place) = head.get_mut(start..start + boundary.len()) {
                    place.copy_from_slice(boundary.as_bytes());
                }
                at = start + boundary.len();
            }
            self.boundary = boundary;
        }
        self.out.extend_from_slice(b"\r\n");
        write_delimiter(&mut self.out, &self.boundary, true);
        Ok(self.out)
    }
}

fn push_armored(out: &mut Vec<u8>, bytes: &[u8], kind: &str, what: &'static str) -> Result<(), ComposeError> {
    let block = bytes.trim_ascii();
    let begin = format!("-----BEGIN PGP {kind}-----");
    let end = format!("-----END PGP {kind}-----");
    if !block.starts_with(begin.as_bytes()) || !block.ends_with(end.as_bytes()) {
        return Err(ComposeError::NotArmored(what));
    }
    let start = out.len();
    // Trailing whitespace means nothing in armor (RFC 4880 section 6.2)
    // and may not survive transport: dropped (a CR before LF with it).
    for line in block.split(|&byte| byte == b'\n') {
        out.extend_from_slice(line.trim_ascii_end());
        out.extend_from_slice(b"\r\n");
    }
    if !is_seven_bit_safe(&out[start..]) {
        out.truncate(start);
        return Err(ComposeError::NotArmored(what));
    }
    Ok(())
}

fn check_signed_entity(entity: &[u8]) -> Result<(), ComposeError> {
    if entity.iter().any(|&byte| byte >= 0x80 || byte == 0) {
        return Err(ComposeError::SignedEntityNotCanonical("8-bit or NUL byte"));
    }
    let mut position = 0;
    while position < entity.len() {
        let (line_end, next) = line_at(entity, position, entity.len());
        let line = entity.get(position..line_end).unwrap_or_default();
        if line.contains(&b'\r') || (next > line_end && next - line_end != 2) {
            return Err(ComposeError::SignedEntityNotCanonical("bare CR or LF"));
        }
        if line.len() > MAX_LINE {
            return Err(ComposeError::SignedEntityNotCanonical("line longer than 998 bytes"));
        }
        position = next;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Header fields

fn ensure_crlf(field: &[u8]) -> Vec<u8> {
    let mut field = field.to_vec();
    if !field.ends_with(b"\r\n") {
        field.extend_from_slice(b"\r\n");
    }
    field
}

fn write_fields<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a [u8]>) {
    for field in fields {
        out.extend_from_slice(field);
        if !field.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `field` (a Content-Type) with `protected-headers="v1"` added.
fn with_protected_parameter(field: &[u8]) -> Vec<u8> {
    let value = field.trim_ascii_end();
    let value = value.strip_suffix(b";").unwrap_or(value).trim_ascii_end();
    let mut out = value.to_vec();
    out.extend_from_slice(b";\r\n protected-headers=\"v1\"\r\n");
    out
}

/// A header field copied into a composed message: CRLF terminated, no
/// trailing whitespace, no whitespace-only continuation lines, control
/// characters made spaces, lines of at most 998 bytes (refolded at
/// whitespace, else the field is dropped); a field with 8-bit bytes is
/// re-encoded (RFC 2047 / 2231 via mail-builder) from mail-parser's reading.
fn clean_field(raw: &[u8], name: &str) -> Option<Vec<u8>> {
    let raw = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    if !raw.is_ascii() {
        return reencode_field(raw, name);
    }
    let mut out = Vec::with_capacity(raw.len() + 2);
    let mut too_long = false;
    for (index, line) in raw.split(|&byte| byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line: Vec<u8> =
            line.iter().map(|&byte| if (byte < 0x20 && byte != b'\t') || byte == 0x7f { b' ' } else { byte }).collect();
        let line = line.trim_ascii_end();
        if index > 0 && line.trim_ascii().is_empty() {
            continue;
        }
        if index > 0 && !line.starts_with(b" ") && !line.starts_with(b"\t") {
            // A bare CR or LF inside the field: keep it one field.
            out.push(b' ');
        } else if index > 0 {
            out.extend_from_slice(b"\r\n");
        }
        too_long |= line.len() > MAX_LINE;
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"\r\n");
    if !too_long {
        return Some(out);
    }
    // Unfold and fold again at whitespace.
    let unfolded: Vec<u8> = out.iter().copied().filter(|&byte| byte != b'\r' && byte != b'\n').collect();
    let colon = unfolded.iter().position(|&byte| byte == b':')?;
    let (field_name, value) = unfolded.split_at(colon);
    let value = value.get(1..).unwrap_or_default();
    fold(&String::from_utf8_lossy(field_name), &String::from_utf8_lossy(value.trim_ascii_start()))
}

/// Re-encodes a field holding 8-bit bytes (raw UTF-8) to 7-bit.
fn reencode_field(raw: &[u8], name: &str) -> Option<Vec<u8>> {
    let colon = raw.iter().position(|&byte| byte == b':')?;
    let display_name = String::from_utf8_lossy(raw.get(..colon)?.trim_ascii_end()).into_owned();
    let mut single = raw.to_vec();
    single.extend_from_slice(b"\r\n");
    let parsed = parse_header_block(&single)?;
    let value = &parsed.parts.first()?.headers.first()?.value;
    let mut out = format!("{display_name}: ").into_bytes();
    let start = out.len();
    let written = match value {
        HeaderValue::Address(address) if ADDRESS_HEADERS.contains(&name) => {
            let address = builder_address(address)?;
            address.write_header(&mut out, start)
        }
        HeaderValue::ContentType(content_type) if name == "content-type" || name == "content-disposition" => {
            let mut full_type = content_type.ctype().to_owned();
            if let Some(subtype) = content_type.subtype() {
                full_type.push('/');
                full_type.push_str(subtype);
            }
            let mut builder = BuilderContentType::new(full_type);
            for attribute in content_type.attributes().unwrap_or_default() {
                builder = builder.attribute(attribute.name.to_string(), attribute.value.to_string());
            }
            builder.write_header(&mut out, start)
        }
        HeaderValue::Text(text) if name == "subject" || name == "comments" || name == "content-description" => {
            BuilderText::new(text.to_string()).write_header(&mut out, start)
        }
        _ => {
            let value = raw.get(colon + 1..)?;
            let unfolded: Vec<u8> = value.iter().copied().filter(|&byte| byte != b'\r' && byte != b'\n').collect();
            let text = String::from_utf8_lossy(unfolded.trim_ascii()).into_owned();
            BuilderText::new(text).write_header(&mut out, start)
        }
    };
    let valid =
        written.is_ok() && out.is_ascii() && out.split(|&byte| byte == b'\n').all(|line| line.len() <= MAX_LINE + 1);
    valid.then(|| ensure_crlf(&out))
}

/// mail-parser's reading of an address list as mail-builder's: groups kept,
/// ungrouped addresses flat, entries without an address dropped.
fn builder_address<'a>(address: &'a ParsedAddress<'a>) -> Option<BuilderAddress<'a>> {
    let single = |addr: &'a mail_parser::Addr<'a>| {
        addr.address.as_deref().map(|email| BuilderAddress::new_address(addr.name.as_deref(), email))
    };
    let items: Vec<BuilderAddress<'a>> = match address {
        ParsedAddress::List(list) => list.iter().filter_map(single).collect(),
        ParsedAddress::Group(groups) => {
            let mut items = Vec::new();
            for group in groups {
                let members: Vec<BuilderAddress<'a>> = group.addresses.iter().filter_map(single).collect();
                match &group.name {
                    Some(group_name) => items.push(BuilderAddress::new_group(Some(group_name.as_ref()), members)),
                    None => items.extend(members),
                }
            }
            items
        }
    };
    (!items.is_empty()).then(|| BuilderAddress::new_list(items))
}

/// The caller's extra header fields, validated and folded.
fn extra_fields(extra_headers: &[(String, String)]) -> Result<Vec<Vec<u8>>, ComposeError> {
    extra_headers
        .iter()
        .map(|(name, value)| {
            let invalid = || ComposeError::InvalidExtraHeader(name.clone());
            let lower = name.to_ascii_lowercase();
            let structural =
                lower.starts_with("content-") || lower == "mime-version" || REMOVED_HEADERS.contains(&lower.as_str());
            let valid_name =
                !name.is_empty() && !structural && name.bytes().all(|byte| (33..=126).contains(&byte) && byte != b':');
            // A value that comes folded is unfolded first (RFC 5322 section 2.2.3).
            let value = value.replace("\r\n ", " ").replace("\r\n\t", "\t");
            let valid_value = value.bytes().all(|byte| (0x20..0x7f).contains(&byte) || byte == b'\t');
            if !valid_name || !valid_value {
                return Err(invalid());
            }
            let value = if name.eq_ignore_ascii_case("autocrypt") || name.eq_ignore_ascii_case("autocrypt-gossip") {
                autocrypt_foldable(&value)
            } else {
                value.trim().to_owned()
            };
            fold(name, &value).ok_or_else(invalid)
        })
        .collect()
}

/// An Autocrypt value whose `keydata` has whitespace every 76 characters
/// (Autocrypt Level 1 section 2.1: whitespace in keydata is ignored), so
/// the field folds into lines of at most 78.
fn autocrypt_foldable(value: &str) -> String {
    value
        .split(';')
        .map(|attribute| {
            let trimmed = attribute.trim();
            match trimmed.split_once('=') {
                Some((key, data)) if key.trim().eq_ignore_ascii_case("keydata") => {
                    // The first chunk shares its line with " keydata=".
                    let data: String = data.chars().filter(char::is_ascii_graphic).collect();
                    let (first, rest) = data.split_at(data.len().min(64));
                    let mut folded = format!("keydata={first}");
                    for chunk in rest.as_bytes().chunks(76) {
                        folded.push(' ');
                        folded.push_str(&String::from_utf8_lossy(chunk));
                    }
                    folded
                }
                _ => trimmed.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `name: value` folded before whitespace to lines of about 78
/// characters; `None` when a line would still exceed 998 bytes.
fn fold(name: &str, value: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b":");
    let mut column = out.len();
    let mut longest = column;
    // Segments: each starts with its whitespace (the first with a space).
    let mut segments: Vec<String> = Vec::new();
    if value.is_empty() {
        out.extend_from_slice(b"\r\n");
        return Some(out);
    }
    let mut current = String::from(" ");
    for c in value.chars() {
        if (c == ' ' || c == '\t') && !current.trim().is_empty() {
            segments.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    segments.push(current);
    for (index, segment) in segments.iter().enumerate() {
        if index > 0 && column + segment.len() > FOLD_AT {
            out.extend_from_slice(b"\r\n");
            column = 0;
        }
        out.extend_from_slice(segment.as_bytes());
        column += segment.len();
        longest = longest.max(column);
    }
    out.extend_from_slice(b"\r\n");
    (longest <= MAX_LINE).then_some(out)
}

// ---------------------------------------------------------------------------
// Boundaries

/// A boundary that occurs in none of `contents` (so no delimiter line can
/// appear in them), derived from them: the same input composes the same
/// bytes, and nothing about the plaintext shows in an encrypted message's
/// outer boundary (it is derived from the ciphertext there).
fn choose_boundary(contents: &[&[u8]]) -> String {
    let mut hasher = DefaultHasher::new();
    contents.hash(&mut hasher);
    let seed = hasher.finish();
    let mut attempt: u64 = 0;
    loop {
        let mut first = DefaultHasher::new();
        (seed, attempt, 1u8).hash(&mut first);
        let mut second = DefaultHasher::new();
        (seed, attempt, 2u8).hash(&mut second);
        let boundary = format!("------------{:016x}{:08x}", first.finish(), second.finish() & 0xffff_ffff);
        let occurs =
            contents.iter().any(|content| content.windows(boundary.len()).any(|window| window == boundary.as_bytes()));
        if !occurs {
            return boundary;
        }
        attempt += 1;
    }
}

fn write_boundary_parameter_open(out: &mut Vec<u8>, boundary: &str) {
    out.extend_from_slice(b" boundary=\"");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"\"");
}

fn write_boundary_parameter(out: &mut Vec<u8>, boundary: &str) {
    write_boundary_parameter_open(out, boundary);
    out.extend_from_slice(b"\r\n");
}

fn write_delimiter(out: &mut Vec<u8>, boundary: &str, close: bool) {
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(if close { b"--\r\n" } else { b"\r\n" });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_message_written_in_pieces_is_the_one_written_whole() {
        let prepared = prepare(b"From: a@example.org\r\nTo: b@example.org\r\nSubject: s\r\n\r\nbody\r\n").unwrap();
        let armor = b"\n  -----BEGIN PGP MESSAGE-----  \n\nhQEMA1b2 \r\nc3Rk\t\n=AbCd\n-----END PGP MESSAGE-----\n\n";
        let whole = prepared.encrypted(armor, &[]).unwrap();
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(
            text.contains("\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\nhQEMA1b2\r\nc3Rk\r\n=AbCd\r\n-----END PGP MESSAGE-----\r\n\r\n--"),
            "{text}"
        );
        // Every cut in two and in three (as gRPC messages may cut it).
        for first in 0..=armor.len() {
            for second in first..=armor.len() {
                let mut message = prepared.encrypted_message(&[], 0).unwrap();
                message.push(&armor[..first]);
                message.push(&armor[first..second]);
                message.push(&armor[second..]);
                assert_eq!(message.finish().unwrap(), whole, "cut at {first} and {second}");
            }
        }
        for bad in [
            &b""[..],
            b"\n\n",
            b"-----BEGIN PGP MESSAGE-----\nx\n",
            b"-----BEGIN PGP MESSAGE-----\n\xe9\n-----END PGP MESSAGE-----",
        ] {
            let mut message = prepared.encrypted_message(&[], 0).unwrap();
            message.push(bad);
            assert_eq!(message.finish(), Err(ComposeError::NotArmored("ciphertext")));
        }
    }

    #[test]
    fn an_armor_holding_the_boundary_gets_another() {
        let prepared = prepare(b"From: a@example.org\r\nTo: b@example.org\r\n\r\nbody\r\n").unwrap();
        let chosen = prepared.encrypted_message(&[], 0).unwrap().boundary;
        let armor = format!("-----BEGIN PGP MESSAGE-----\n\n--{chosen}--\n-----END PGP MESSAGE-----\n");
        let message = prepared.encrypted(armor.as_bytes(), &[]).unwrap();
        let text = String::from_utf8(message).unwrap();
        // Named once in the header, delimiting twice and closing once: all
        // the new one; the old one only inside the armor.
        assert_eq!(text.matches(&chosen).count(), 1, "{text}");
        let boundary = text.split("boundary=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_ne!(boundary, chosen);
        assert_eq!(boundary.len(), chosen.len());
        assert_eq!(text.matches(boundary).count(), 4, "{text}");
        assert!(text.ends_with(&format!("\r\n--{chosen}--\r\n-----END PGP MESSAGE-----\r\n\r\n--{boundary}--\r\n")));
    }

    #[test]
    fn quoted_printable_known_answers() {
        for (input, expected) in [
            (&b"hello"[..], &b"hello"[..]),
            (b"a=b\r\n", b"a=3Db\r\n"),
            (b"trailing  \r\nx", b"trailing =20\r\nx"),
            (b"From me\r\nFrom you", b"=46rom me\r\n=46rom you"),
            (b"--boundary\r\n-", b"=2D-boundary\r\n=2D"),
            ("caf\u{e9}".as_bytes(), b"caf=C3=A9"),
            (b"bare\rcr", b"bare=0Dcr"),
        ] {
            assert_eq!(String::from_utf8_lossy(&quoted_printable(input)), String::from_utf8_lossy(expected));
        }
    }

    #[test]
    fn quoted_printable_lines_are_short_and_round_trip() {
        let mut input = Vec::new();
        for index in 0..500u32 {
            input.extend_from_slice(format!("{index} é = x ").as_bytes());
            if index % 37 == 0 {
                input.extend_from_slice(b"\r\n");
            }
        }
        let encoded = quoted_printable(&input);
        assert!(encoded.split(|&b| b == b'\n').all(|line| line.len() <= 77), "lines of at most 76 + CR");
        assert!(is_seven_bit_safe(&encoded));
        let decoded = mail_parser::decoders::quoted_printable::quoted_printable_decode(&encoded);
        assert_eq!(decoded.as_deref(), Some(input.as_slice()));
    }

    #[test]
    fn split_multipart_known_answer() {
        let body = b"pre\r\n--b\r\nA\r\n--b \r\n\r\nB\r\n--b--\r\nepi";
        let (preamble, parts, epilogue) = split_multipart(body, &(0..body.len()), b"b").unwrap();
        assert_eq!(&body[preamble], b"pre");
        let parts: Vec<&[u8]> = parts.into_iter().map(|range| &body[range]).collect();
        assert_eq!(parts, vec![&b"A"[..], &b"\r\nB"[..]]);
        assert_eq!(&body[epilogue], b"epi");
        assert!(split_multipart(body, &(0..body.len()), b"c").is_none());
    }

    #[test]
    fn fold_keeps_lines_short() {
        let value = "word ".repeat(100);
        let folded = fold("X-Test", value.trim()).unwrap();
        assert!(folded.split(|&b| b == b'\n').all(|line| line.len() <= FOLD_AT + 1));
        let unfolded: Vec<u8> = folded.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
        assert_eq!(String::from_utf8(unfolded).unwrap(), format!("X-Test: {}", value.trim()));
        assert!(fold("X", &"a".repeat(2000)).is_none());
    }
}
