//! What a FETCH returns for one message, rendered from its raw RFC 5322
//! bytes: ENVELOPE, BODY and BODYSTRUCTURE (RFC 3501 section 7.4.2) and the
//! contents of `BODY[section]<partial>` (section 6.4.5), without I/O.
//!
//! [`MessageView::parse`] scans the MIME structure once; the other methods
//! render from it. Section contents are byte-exact slices of the raw message
//! (no transfer decoding, no line-ending conversion) and sizes count raw
//! octets. Where RFC 3501 leaves room, this follows Dovecot 2.3 (compared
//! against Dovecot 2.3.19):
//! - MIME structure: boundary lines are found at line starts, by prefix, the
//!   longest matching boundary of all open multiparts winning; the line break
//!   before a boundary line belongs to the boundary; a boundary line ends a
//!   part's header too. A `multipart/*` without boundary, or whose boundary
//!   never appears, has no parts (BODYSTRUCTURE shows one empty text/plain
//!   part). `message/rfc822` parts are parsed as messages whatever their
//!   transfer encoding; parts of a `multipart/digest` without Content-Type
//!   are `message/rfc822`. Nesting stops at 100 levels and 10 000 parts.
//! - Part numbers: a part that is not multipart has itself as its part 1
//!   (`BODY[3.1]` is `BODY[3]`), a `message/rfc822` part continues into the
//!   encapsulated message, and `1.MIME` of a non-multipart message is the
//!   message header. `HEADER`, `HEADER.FIELDS` and `TEXT` after a part number
//!   need a `message/rfc822` part. Sections that do not exist are `None`;
//!   Dovecot sends them as empty strings ([`section_data`]).
//! - `HEADER.FIELDS` ends with the header's blank line, or CRLF when the
//!   header has none; `HEADER.FIELDS.NOT` keeps the blank line only if
//!   present. Field names match case-insensitively; lines without a colon
//!   never match.
//! - BODYSTRUCTURE: types, subtypes, parameters and encodings as written (no
//!   case change); the first of repeated Content-* fields counts, and only in
//!   a MIME part (one with Content-Type or MIME-Version, or in a multipart);
//!   parameters in RFC 2231 pieces are joined but not decoded (`title*` keeps
//!   `us-ascii'en'...`); text parts without a charset get
//!   `("charset" "us-ascii")`; Content-Type values that do not parse give
//!   `"" ""`, a bare `multipart` gives `application/octet-stream`; a missing
//!   or invalid Content-Transfer-Encoding is `7bit`; lines count LF octets.
//! - ENVELOPE: the last of repeated fields counts, but repeated address
//!   fields add up; values are the raw, unfolded header values (RFC 2047
//!   words kept as written, leading white space dropped, trailing kept, NUL
//!   as U+FFFD), in the subject and display names runs of white space are
//!   one space; addresses are parsed as Dovecot does, with `MISSING_MAILBOX`,
//!   `MISSING_DOMAIN` and `SYNTAX_ERROR` filling what is missing; an absent
//!   or empty Sender or Reply-To is From.
//!
//! mail-parser is not used here: it decodes (encoded words, RFC 2231,
//! transfer encodings) and normalises, and its part offsets follow its own
//! recovery rules, while IMAP needs raw values and Dovecot's part bounds.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use crate::imap_types::{
    body::{
        BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
        SinglePartExtensionData, SpecificFields,
    },
    core::{IString, Literal, NString, Vec1},
    envelope::{Address, Envelope},
    fetch::Section,
};

/// Deepest nesting of multiparts and encapsulated messages that is parsed
/// (Dovecot's default); deeper parts are leaves.
const MAX_NESTING: usize = 100;
/// Most MIME parts parsed per message (Dovecot's default).
const MAX_PARTS: usize = 10_000;
/// Boundaries longer than this match by their prefix (Dovecot).
const MAX_BOUNDARY: usize = 80;

/// A parsed view of one raw message, built once per FETCH of a message.
pub struct MessageView<'a> {
    raw: &'a [u8],
    root: MimePart,
}

impl fmt::Debug for MessageView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageView").field("len", &self.raw.len()).field("root", &self.root).finish()
    }
}

impl<'a> MessageView<'a> {
    /// Scans the MIME structure of `raw`. Never fails: any bytes are a
    /// message, at worst one with only a header or only a body.
    pub fn parse(raw: &'a [u8]) -> Self {
        let mut parser = TreeParser { raw, boundaries: Vec::new(), parts: 0 };
        let (root, _) = parser.part(0, 0, false);
        Self { raw, root }
    }

    /// ENVELOPE of the message.
    pub fn envelope(&self) -> Envelope<'static> {
        envelope(&Header::parse(self.raw, self.root.header.clone()))
    }

    /// BODYSTRUCTURE (`extensible`) or BODY (not) of the message.
    pub fn body_structure(&self, extensible: bool) -> BodyStructure<'static> {
        self.structure(&self.root, extensible, false)
    }

    /// The contents of `BODY[section]` (before any `<partial>`); `None` is
    /// the whole message (`BODY[]`). `None` back: the section does not exist
    /// (Dovecot sends an empty string for it).
    pub fn section(&self, section: Option<&Section<'_>>) -> Option<Cow<'a, [u8]>> {
        // The message's own bytes where the section is a stretch of them
        // (a 40 MiB BODY[] is not copied here).
        let Some(section) = section else {
            return Some(Cow::Borrowed(self.raw));
        };
        match section {
            Section::Part(path) => {
                let part = self.find(path.0.as_ref())?;
                Some(Cow::Borrowed(self.bytes(&part.body)))
            }
            Section::Mime(path) => {
                let part = self.find(path.0.as_ref())?;
                Some(Cow::Borrowed(self.bytes(&part.header)))
            }
            Section::Header(path) => {
                let message = self.message(path.as_ref().map(|p| p.0.as_ref()))?;
                Some(Cow::Borrowed(self.bytes(&message.header)))
            }
            Section::Text(path) => {
                let message = self.message(path.as_ref().map(|p| p.0.as_ref()))?;
                Some(Cow::Borrowed(self.bytes(&message.body)))
            }
            Section::HeaderFields(path, names) => {
                let message = self.message(path.as_ref().map(|p| p.0.as_ref()))?;
                Some(Cow::Owned(self.header_fields(message, names.as_ref(), true)))
            }
            Section::HeaderFieldsNot(path, names) => {
                let message = self.message(path.as_ref().map(|p| p.0.as_ref()))?;
                Some(Cow::Owned(self.header_fields(message, names.as_ref(), false)))
            }
        }
    }

    /// RFC822.HEADER: the header block including its blank line (if any).
    pub fn header_bytes(&self) -> &[u8] {
        self.bytes(&self.root.header)
    }

    /// RFC822.TEXT: everything after the header's blank line.
    pub fn text_bytes(&self) -> &[u8] {
        self.bytes(&self.root.body)
    }

    fn bytes(&self, range: &Range<usize>) -> &'a [u8] {
        self.raw.get(range.clone()).unwrap_or_default()
    }

    /// The part a section's part number names (Dovecot's `imap_msgpart_find`).
    fn find(&self, path: &[std::num::NonZeroU32]) -> Option<&MimePart> {
        let mut part = &self.root;
        for (position, number) in path.iter().enumerate() {
            let number = usize::try_from(number.get()).ok()?;
            let more = position + 1 < path.len();
            part = match &part.kind {
                PartKind::Multipart(children) => children.get(number - 1)?,
                // A part that is not multipart is its own part 1, with
                // nothing below unless it encapsulates a message.
                PartKind::Message(_) if number == 1 => part,
                PartKind::Single if number == 1 && !more => part,
                _ => return None,
            };
            if more && let PartKind::Message(inner) = &part.kind {
                part = inner;
            }
        }
        Some(part)
    }

    /// The message whose HEADER/TEXT a section names: the whole message
    /// without part number, else the one a `message/rfc822` part holds.
    fn message(&self, path: Option<&[std::num::NonZeroU32]>) -> Option<&MimePart> {
        let Some(path) = path else {
            return Some(&self.root);
        };
        match &self.find(path)?.kind {
            PartKind::Message(inner) => Some(inner),
            _ => None,
        }
    }

    fn header_fields(&self, part: &MimePart, names: &[impl AsRef<[u8]>], include: bool) -> Vec<u8> {
        let header = Header::parse(self.raw, part.header.clone());
        let mut out = Vec::new();
        for field in &header.fields {
            let matches = field
                .name
                .as_ref()
                .is_some_and(|name| names.iter().any(|wanted| self.bytes(name).eq_ignore_ascii_case(wanted.as_ref())));
            if matches == include {
                let line = self.bytes(&field.line);
                out.extend_from_slice(line);
                if include && !line.ends_with(b"\n") {
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        match &header.end_of_header {
            Some(blank) => out.extend_from_slice(self.bytes(blank)),
            None if include => out.extend_from_slice(b"\r\n"),
            None => {}
        }
        out
    }

    fn structure(&self, part: &MimePart, extensible: bool, in_multipart: bool) -> BodyStructure<'static> {
        let header = Header::parse(self.raw, part.header.clone());
        let fields = MimeFields::from_header(&header, in_multipart);
        match &part.kind {
            PartKind::Multipart(children) => {
                let bodies: Vec<_> = children.iter().map(|child| self.structure(child, extensible, true)).collect();
                let bodies = Vec1::try_from(bodies).unwrap_or_else(|_| empty_part(extensible).into());
                let (subtype, params) = match &fields.content_type {
                    Some(content_type) => (content_type.subtype.clone(), content_type.params.clone()),
                    None => (b"mixed".to_vec(), Vec::new()),
                };
                BodyStructure::Multi {
                    bodies,
                    subtype: istring(&subtype),
                    extension_data: extensible.then(|| MultiPartExtensionData {
                        parameter_list: param_list(&params),
                        tail: Some(fields.disposition_tail()),
                    }),
                }
            }
            PartKind::Message(inner) => {
                let params =
                    fields.content_type.as_ref().map(|content_type| content_type.params.clone()).unwrap_or_default();
                let inner_header = Header::parse(self.raw, inner.header.clone());
                let body = self.bytes(&part.body);
                BodyStructure::Single {
                    body: Body {
                        basic: fields.basic(&params, body.len()),
                        specific: SpecificFields::Message {
                            envelope: Box::new(envelope(&inner_header)),
                            body_structure: Box::new(self.structure(inner, extensible, false)),
                            number_of_lines: count_lines(body),
                        },
                    },
                    extension_data: extensible.then(|| fields.single_extension()),
                }
            }
            PartKind::Single => {
                let body = self.bytes(&part.body);
                let (media_type, subtype, mut params) = match &fields.content_type {
                    None => (b"text".to_vec(), b"plain".to_vec(), Vec::new()),
                    Some(content_type) => {
                        let media_type = &content_type.media_type;
                        let subtype = &content_type.subtype;
                        // Only parsed multiparts and messages may say so.
                        if media_type.eq_ignore_ascii_case(b"multipart")
                            || (media_type.eq_ignore_ascii_case(b"message") && subtype.eq_ignore_ascii_case(b"rfc822"))
                        {
                            (b"application".to_vec(), b"octet-stream".to_vec(), content_type.params.clone())
                        } else {
                            (media_type.clone(), subtype.clone(), content_type.params.clone())
                        }
                    }
                };
                let text = media_type.eq_ignore_ascii_case(b"text");
                if text && !params.iter().any(|(key, _)| key.eq_ignore_ascii_case(b"charset")) {
                    params.push((b"charset".to_vec(), b"us-ascii".to_vec()));
                }
                let specific = if text {
                    SpecificFields::Text { subtype: istring(&subtype), number_of_lines: count_lines(body) }
                } else {
                    SpecificFields::Basic { r#type: istring(&media_type), subtype: istring(&subtype) }
                };
                BodyStructure::Single {
                    body: Body { basic: fields.basic(&params, body.len()), specific },
                    extension_data: extensible.then(|| fields.single_extension()),
                }
            }
        }
    }
}

/// Applies `<origin.length>` to section contents: what lies in the range,
/// empty past the end.
pub fn partial(bytes: &[u8], origin: u32, length: u32) -> &[u8] {
    let start = usize::try_from(origin).unwrap_or(usize::MAX).min(bytes.len());
    let length = usize::try_from(length).unwrap_or(usize::MAX);
    let end = start.saturating_add(length).min(bytes.len());
    bytes.get(start..end).unwrap_or_default()
}

/// Section contents (`BODY[...]`, `RFC822`, `RFC822.HEADER`, `RFC822.TEXT`)
/// as Dovecot sends them: always a literal, NUL octets as 0x80 (a literal
/// cannot carry NUL). Give a missing section as empty bytes.
pub fn section_data(bytes: &[u8]) -> NString<'static> {
    let mut data = bytes.to_vec();
    for at in memchr::memchr_iter(0, bytes) {
        if let Some(byte) = data.get_mut(at) {
            *byte = 0x80;
        }
    }
    // No NUL is left: what a literal may not hold (checked again, byte by
    // byte, by `Literal::try_from`: 5% of a big FETCH).
    NString::from(Literal::unvalidated(data))
}

// ----- MIME structure ----------------------------------------------------

/// One MIME part: byte ranges into the raw message.
#[derive(Debug, Clone)]
struct MimePart {
    /// The header block, including its blank line if there is one.
    header: Range<usize>,
    /// Everything after the header up to the line break before the next
    /// boundary line (or the end). When a boundary line cuts the header
    /// short, it is empty and starts after that line break.
    body: Range<usize>,
    kind: PartKind,
}

#[derive(Debug, Clone)]
enum PartKind {
    Single,
    Multipart(Vec<MimePart>),
    /// `message/rfc822`: the encapsulated message spans the body.
    Message(Box<MimePart>),
}

/// A boundary line found: which open multipart it belongs to.
#[derive(Debug, Clone, Copy)]
struct BoundaryLine {
    /// Index into `TreeParser::boundaries`.
    level: usize,
    /// Where the line after the boundary line starts.
    next: usize,
    /// A close delimiter (`--boundary--`).
    close: bool,
}

/// Dovecot's message parser, reduced to what IMAP needs.
struct TreeParser<'a> {
    raw: &'a [u8],
    /// Boundaries of the open multiparts, outermost first.
    boundaries: Vec<Vec<u8>>,
    parts: usize,
}

impl TreeParser<'_> {
    /// Parses the part starting at `start`; gives it and the boundary line
    /// that ended it (`None`: the end of the message).
    fn part(&mut self, start: usize, depth: usize, in_digest: bool) -> (MimePart, Option<BoundaryLine>) {
        self.parts += 1;
        let len = self.raw.len();
        let mut position = start;
        // A boundary line of an enclosing multipart may cut the header short,
        // also right after its blank line: then the line break before the
        // boundary line is not part of the header as fetched, but the part,
        // as its parent counts it, goes up to the boundary line (Dovecot).
        let mut cut = None;
        let (mut header, body_start) = loop {
            if position >= len {
                break (start..len, len);
            }
            let end = line_end(self.raw, position);
            let line = line_content(self.raw, position, end);
            if let Some(boundary) = self.boundary_line(line, end) {
                cut = Some(boundary);
                break (start..strip_line_break_before(self.raw, start, position), position);
            }
            if line.is_empty() {
                break (start..end, end);
            }
            position = end;
        };

        let parsed = Header::parse(self.raw, header.clone());
        let content_type = parsed.first(b"Content-Type").map(|field| ContentType::parse(&parsed.value(field)));
        let may_nest = depth < MAX_NESTING && self.parts < MAX_PARTS;
        let shape = match &content_type {
            None if in_digest => Shape::Message,
            None => Shape::Single,
            Some(content_type) => content_type.shape(),
        };
        if cut.is_none() && header.end == body_start && body_start < len {
            // Right after the blank line: the part's own boundary is open
            // already and wins over an enclosing one it prefixes.
            let own = match &shape {
                Shape::Multipart { boundary: Some(boundary), .. } if may_nest => Some(boundary.clone()),
                _ => None,
            };
            let level = self.boundaries.len();
            let has_own = own.is_some();
            self.boundaries.extend(own);
            let next_end = line_end(self.raw, body_start);
            let found = self.boundary_line(line_content(self.raw, body_start, next_end), next_end);
            self.boundaries.truncate(level);
            if let Some(found) = found.filter(|found| !(has_own && found.level == level)) {
                cut = Some(found);
                header = start..strip_line_break_before(self.raw, start, body_start);
            }
        }
        if let Some(boundary) = cut {
            let empty = body_start..body_start;
            let kind = match shape {
                Shape::Multipart { .. } if may_nest => PartKind::Multipart(Vec::new()),
                Shape::Message if may_nest => {
                    self.parts += 1;
                    PartKind::Message(Box::new(MimePart {
                        header: empty.clone(),
                        body: empty.clone(),
                        kind: PartKind::Single,
                    }))
                }
                _ => PartKind::Single,
            };
            return (MimePart { header, body: empty, kind }, Some(boundary));
        }
        match shape {
            Shape::Multipart { boundary, digest } if may_nest => {
                let (body_end, found, children) = self.multipart(body_start, boundary, depth + 1, digest);
                let part = MimePart { header, body: body_start..body_end, kind: PartKind::Multipart(children) };
                (part, found)
            }
            Shape::Message if may_nest => {
                let (inner, found) = self.part(body_start, depth + 1, false);
                let part =
                    MimePart { header, body: body_start..inner.body.end, kind: PartKind::Message(Box::new(inner)) };
                (part, found)
            }
            _ => {
                let (body_end, found) = self.scan(body_start);
                let part = MimePart { header, body: body_start..body_end, kind: PartKind::Single };
                (part, found)
            }
        }
    }

    /// Parses a multipart body: preamble, parts, epilogue. Gives where the
    /// body ends, the boundary line that ended it and the parts.
    fn multipart(
        &mut self,
        body_start: usize,
        boundary: Option<Vec<u8>>,
        depth: usize,
        digest: bool,
    ) -> (usize, Option<BoundaryLine>, Vec<MimePart>) {
        let mut children = Vec::new();
        let Some(boundary) = boundary else {
            let (end, found) = self.scan(body_start);
            return (end, found, children);
        };
        let level = self.boundaries.len();
        self.boundaries.push(boundary);
        let (mut end, mut found) = self.scan(body_start);
        while let Some(line) = found {
            if line.level != level {
                // An enclosing multipart's boundary ends this one too.
                break;
            }
            if line.close || self.parts >= MAX_PARTS {
                // The rest, up to an enclosing boundary, is epilogue.
                self.boundaries.truncate(level);
                (end, found) = self.scan(line.next);
                break;
            }
            let (child, child_found) = self.part(line.next, depth, digest);
            end = child.body.end;
            found = child_found;
            children.push(child);
        }
        self.boundaries.truncate(level);
        (end, found, children)
    }

    /// Finds the next boundary line from `start`: gives where the content
    /// before it ends (without the line break that belongs to the boundary)
    /// and the line, or the end of the message and `None`.
    fn scan(&self, start: usize) -> (usize, Option<BoundaryLine>) {
        if self.boundaries.is_empty() {
            return (self.raw.len(), None);
        }
        // Only a line that starts with "--" can be one: the line at
        // `start`, and those after a "\n--" (found with memchr's SIMD
        // search, not line by line: a 40 MiB attachment is one pass).
        let rest = self.raw.get(start..).unwrap_or_default();
        let first = rest.starts_with(b"--").then_some(start);
        let later = memchr::memmem::find_iter(rest, b"\n--").map(|at| start + at + 1);
        for position in first.into_iter().chain(later) {
            let end = line_end(self.raw, position);
            let line = line_content(self.raw, position, end);
            if let Some(boundary) = self.boundary_line(line, end) {
                return (strip_line_break_before(self.raw, start, position), Some(boundary));
            }
        }
        (self.raw.len(), None)
    }

    /// Whether `line` is a boundary line of an open multipart: the longest
    /// boundary that prefixes the line after `--`, innermost on a tie.
    fn boundary_line(&self, line: &[u8], next: usize) -> Option<BoundaryLine> {
        let rest = line.strip_prefix(b"--")?;
        let mut best: Option<(usize, usize)> = None;
        for (level, boundary) in self.boundaries.iter().enumerate().rev() {
            if rest.starts_with(boundary) && best.is_none_or(|(_, len)| len < boundary.len()) {
                best = Some((level, boundary.len()));
            }
        }
        let (level, len) = best?;
        let close = rest.get(len..).is_some_and(|after| after.starts_with(b"--"));
        Some(BoundaryLine { level, next, close })
    }
}

/// How a part is parsed, from its Content-Type.
enum Shape {
    Single,
    Multipart { boundary: Option<Vec<u8>>, digest: bool },
    Message,
}

/// Where the line starting at `start` ends (after its LF, or the end).
fn line_end(raw: &[u8], start: usize) -> usize {
    raw.get(start..).and_then(|rest| memchr::memchr(b'\n', rest)).map_or(raw.len(), |at| start + at + 1)
}

/// The line without its line break (LF or CRLF).
fn line_content(raw: &[u8], start: usize, end: usize) -> &[u8] {
    let line = raw.get(start..end).unwrap_or_default();
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `position` moved back over the line break before it, not below `floor`.
fn strip_line_break_before(raw: &[u8], floor: usize, position: usize) -> usize {
    let mut end = position;
    if end > floor && raw.get(end - 1) == Some(&b'\n') {
        end -= 1;
        if end > floor && raw.get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
    }
    end
}

fn count_lines(body: &[u8]) -> u32 {
    let lines = body.iter().filter(|&&byte| byte == b'\n').count();
    u32::try_from(lines).unwrap_or(u32::MAX)
}

// ----- header fields -----------------------------------------------------

/// A header block split into fields.
#[derive(Debug)]
struct Header<'a> {
    raw: &'a [u8],
    fields: Vec<HeaderField>,
    /// The blank line that ends the header, if it has one.
    end_of_header: Option<Range<usize>>,
}

#[derive(Debug)]
struct HeaderField {
    /// The field name without trailing white space; `None` for lines without
    /// a colon (and continuation lines before any field).
    name: Option<Range<usize>>,
    /// The whole field: its lines with continuation lines and line breaks.
    line: Range<usize>,
    /// After the colon, to the end of the field.
    value: Range<usize>,
}

impl<'a> Header<'a> {
    fn parse(raw: &'a [u8], range: Range<usize>) -> Self {
        let mut fields: Vec<HeaderField> = Vec::new();
        let mut end_of_header = None;
        let mut position = range.start;
        while position < range.end {
            let end = line_end(raw, position).min(range.end);
            let line = line_content(raw, position, end);
            if line.is_empty() {
                end_of_header = Some(position..end);
                break;
            }
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            match fields.last_mut() {
                Some(field) if continuation => {
                    field.line.end = end;
                    field.value.end = end;
                }
                _ => {
                    let field = match line.iter().position(|&byte| byte == b':') {
                        Some(colon) if !continuation => {
                            let name = line.get(..colon).unwrap_or_default();
                            let name_len = name.len()
                                - name.iter().rev().take_while(|&&byte| byte == b' ' || byte == b'\t').count();
                            HeaderField {
                                name: Some(position..position + name_len),
                                line: position..end,
                                value: position + colon + 1..end,
                            }
                        }
                        _ => HeaderField { name: None, line: position..end, value: end..end },
                    };
                    fields.push(field);
                }
            }
            position = end;
        }
        Self { raw, fields, end_of_header }
    }

    fn named<'h, 'n>(&'h self, name: &'n [u8]) -> impl DoubleEndedIterator<Item = &'h HeaderField> + use<'h, 'n, 'a> {
        self.fields.iter().filter(move |field| {
            field
                .name
                .as_ref()
                .is_some_and(|range| self.raw.get(range.clone()).unwrap_or_default().eq_ignore_ascii_case(name))
        })
    }

    fn first(&self, name: &[u8]) -> Option<&HeaderField> {
        self.named(name).next()
    }

    fn last(&self, name: &[u8]) -> Option<&HeaderField> {
        self.named(name).next_back()
    }

    /// The unfolded value (Dovecot's `full_value`): leading blanks of the
    /// first line dropped, line breaks removed, NUL as U+FFFD.
    fn value(&self, field: &HeaderField) -> Vec<u8> {
        let value = self.raw.get(field.value.clone()).unwrap_or_default();
        let skip = value.iter().take_while(|&&byte| byte == b' ' || byte == b'\t').count();
        let value = value.get(skip..).unwrap_or_default();
        let mut out = Vec::with_capacity(value.len());
        for &byte in value {
            match byte {
                b'\n' => {
                    if out.last() == Some(&b'\r') {
                        out.pop();
                    }
                }
                0 => out.extend_from_slice("\u{FFFD}".as_bytes()),
                _ => out.push(byte),
            }
        }
        out
    }
}

// ----- RFC 822 tokens (Dovecot's rfc822-parser) --------------------------

/// What a scanning step leaves: broken input, the end, or more input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    Broken,
    End,
    More,
}

/// RFC 5322 `atext`, with 8-bit octets allowed.
fn is_atext(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte) || byte >= 0x80
}

/// RFC 2045 token characters (atext without `/`, `=`, `?`, plus `.`).
fn is_token(byte: u8) -> bool {
    (is_atext(byte) && !b"/=?".contains(&byte)) || byte == b'.'
}

#[derive(Debug)]
struct Rfc822<'a> {
    data: &'a [u8],
    position: usize,
    /// The text of the last comment skipped (addresses name people so).
    last_comment: Vec<u8>,
}

impl<'a> Rfc822<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, position: 0, last_comment: Vec::new() }
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.position).copied()
    }

    fn at_end(&self) -> bool {
        self.position >= self.data.len()
    }

    fn more_or_end(&self) -> Scan {
        if self.at_end() { Scan::End } else { Scan::More }
    }

    /// Skips white space, line breaks and comments.
    fn skip_lwsp(&mut self) -> Scan {
        while let Some(byte) = self.peek() {
            match byte {
                b' ' | b'\t' | b'\r' | b'\n' => self.position += 1,
                b'(' => {
                    if self.skip_comment() == Scan::Broken {
                        return Scan::Broken;
                    }
                }
                _ => break,
            }
        }
        self.more_or_end()
    }

    /// Skips a comment (at `(`), keeping its text as `last_comment`.
    fn skip_comment(&mut self) -> Scan {
        self.last_comment.clear();
        self.position += 1;
        let mut start = self.position;
        let mut level = 1usize;
        while let Some(byte) = self.peek() {
            match byte {
                b'(' => level += 1,
                b')' => {
                    level -= 1;
                    if level == 0 {
                        self.last_comment.extend_from_slice(self.slice(start, self.position));
                        self.position += 1;
                        return Scan::More;
                    }
                }
                b'\n' => {
                    let chunk = self.slice(start, self.position);
                    self.last_comment.extend_from_slice(chunk.strip_suffix(b"\r").unwrap_or(chunk));
                    start = self.position + 1;
                }
                b'\\' => match self.data.get(self.position + 1) {
                    None => return Scan::Broken,
                    // Not a quoted pair; the backslash stays.
                    Some(b'\r' | b'\n' | 0) => {}
                    Some(_) => {
                        self.last_comment.extend_from_slice(self.slice(start, self.position));
                        self.position += 1;
                        start = self.position;
                    }
                },
                _ => {}
            }
            self.position += 1;
        }
        Scan::Broken
    }

    /// Appends the run of characters `accept` takes; then skips white space
    /// if anything follows.
    fn run(&mut self, out: &mut Vec<u8>, accept: fn(u8) -> bool) -> Scan {
        let start = self.position;
        while self.peek().is_some_and(accept) {
            self.position += 1;
        }
        out.extend_from_slice(self.data.get(start..self.position).unwrap_or_default());
        if self.at_end() { Scan::End } else { self.skip_lwsp() }
    }

    /// An RFC 2045 token (possibly empty).
    fn mime_token(&mut self, out: &mut Vec<u8>) -> Scan {
        self.run(out, is_token)
    }

    /// An atom: at least one atext character.
    fn atom(&mut self, out: &mut Vec<u8>) -> Scan {
        if !self.peek().is_some_and(is_atext) {
            return Scan::Broken;
        }
        self.run(out, is_atext)
    }

    fn atom_or_dot(&mut self, out: &mut Vec<u8>) -> Scan {
        if self.at_end() {
            return Scan::End;
        }
        self.run(out, |byte| is_atext(byte) || byte == b'.')
    }

    /// A quoted string (at `"`), unescaped. Like Dovecot, text reaches
    /// `out` in pieces, so a broken string may leave some there.
    fn quoted_string(&mut self, out: &mut Vec<u8>) -> Scan {
        self.position += 1;
        let mut start = self.position;
        while let Some(byte) = self.peek() {
            match byte {
                b'"' => {
                    out.extend_from_slice(self.slice(start, self.position));
                    self.position += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    let chunk = self.slice(start, self.position);
                    out.extend_from_slice(chunk.strip_suffix(b"\r").unwrap_or(chunk));
                    start = self.position + 1;
                }
                b'\\' => {
                    self.position += 1;
                    if self.at_end() {
                        return Scan::Broken;
                    }
                    out.extend_from_slice(self.slice(start, self.position - 1));
                    start = self.position;
                }
                _ => {}
            }
            self.position += 1;
        }
        Scan::Broken
    }

    /// `dot-atom`, allowing white space around the dots.
    fn dot_atom(&mut self, out: &mut Vec<u8>) -> Scan {
        if !self.peek().is_some_and(is_atext) {
            return Scan::Broken;
        }
        let mut start = self.position;
        self.position += 1;
        while let Some(byte) = self.peek() {
            if is_atext(byte) {
                self.position += 1;
                continue;
            }
            if start == self.position {
                return Scan::Broken;
            }
            out.extend_from_slice(self.data.get(start..self.position).unwrap_or_default());
            let scan = self.skip_lwsp();
            if scan != Scan::More {
                return scan;
            }
            if self.peek() != Some(b'.') {
                return Scan::More;
            }
            self.position += 1;
            out.push(b'.');
            let scan = self.skip_lwsp();
            if scan != Scan::More {
                return scan;
            }
            start = self.position;
        }
        out.extend_from_slice(self.data.get(start..self.position).unwrap_or_default());
        Scan::End
    }

    /// `"@" domain` (at `@`): a dot-atom or a domain literal.
    fn domain(&mut self, out: &mut Vec<u8>) -> Scan {
        self.position += 1;
        if self.skip_lwsp() != Scan::More {
            return Scan::Broken;
        }
        if self.peek() == Some(b'[') { self.domain_literal(out) } else { self.dot_atom(out) }
    }

    /// `[...]`, brackets and backslashes kept.
    fn domain_literal(&mut self, out: &mut Vec<u8>) -> Scan {
        let mut start = self.position;
        self.position += 1;
        while let Some(byte) = self.peek() {
            match byte {
                b'[' => return Scan::Broken,
                b']' => {
                    out.extend_from_slice(self.slice(start, self.position + 1));
                    self.position += 1;
                    return self.skip_lwsp();
                }
                b'\n' => {
                    let chunk = self.slice(start, self.position);
                    out.extend_from_slice(chunk.strip_suffix(b"\r").unwrap_or(chunk));
                    start = self.position + 1;
                }
                b'\\' => {
                    self.position += 1;
                    if self.at_end() {
                        return Scan::Broken;
                    }
                }
                _ => {}
            }
            self.position += 1;
        }
        Scan::Broken
    }

    fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        self.data.get(start..end).unwrap_or_default()
    }

    /// A phrase: words (atoms, dots, quoted strings) joined by one space.
    fn phrase(&mut self, out: &mut Vec<u8>) -> Scan {
        match self.peek() {
            None => return Scan::End,
            Some(b'.') => return Scan::Broken,
            Some(_) => {}
        }
        loop {
            let scan = if self.peek() == Some(b'"') { self.quoted_string(out) } else { self.atom_or_dot(out) };
            if scan != Scan::More {
                return scan;
            }
            match self.peek() {
                Some(byte) if is_atext(byte) || byte == b'"' || byte == b'.' => out.push(b' '),
                _ => break,
            }
        }
        self.skip_lwsp()
    }
}

// ----- MIME header values ------------------------------------------------

type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// A parsed Content-Type value.
#[derive(Debug, Clone)]
struct ContentType {
    /// `type/subtype` as written; empty when it does not parse, just the
    /// type when it is a lone token.
    value: Vec<u8>,
    media_type: Vec<u8>,
    subtype: Vec<u8>,
    params: Params,
}

impl ContentType {
    fn parse(value: &[u8]) -> Self {
        let mut parser = Rfc822::new(value);
        let mut text = Vec::new();
        let scan = content_type_value(&mut parser, &mut text);
        let (media_type, subtype) = match text.iter().position(|&byte| byte == b'/') {
            Some(slash) => {
                (text.get(..slash).unwrap_or_default().to_vec(), text.get(slash + 1..).unwrap_or_default().to_vec())
            }
            None => (text.clone(), Vec::new()),
        };
        let params = if scan == Scan::Broken { Vec::new() } else { rfc2231_params(&mut parser) };
        Self { value: text, media_type, subtype, params }
    }

    fn shape(&self) -> Shape {
        let value = &self.value;
        if value.eq_ignore_ascii_case(b"message/rfc822") {
            return Shape::Message;
        }
        let is_multipart = value.get(..10).is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"multipart/"));
        if !is_multipart {
            return Shape::Single;
        }
        // Boundaries match by their first 80 octets (Dovecot).
        let boundary = self
            .params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(b"boundary"))
            .map(|(_, value)| value.get(..MAX_BOUNDARY).unwrap_or(value).to_vec());
        Shape::Multipart { boundary, digest: self.subtype.eq_ignore_ascii_case(b"digest") }
    }
}

/// `type "/" subtype`, followed by the end or `;` (Dovecot's
/// `rfc822_parse_content_type`). A lone token at the end is kept as the type.
fn content_type_value(parser: &mut Rfc822<'_>, out: &mut Vec<u8>) -> Scan {
    if parser.skip_lwsp() != Scan::More {
        return Scan::Broken;
    }
    if parser.mime_token(out) != Scan::More || out.is_empty() {
        return Scan::Broken;
    }
    if parser.peek() != Some(b'/') {
        out.clear();
        return Scan::Broken;
    }
    parser.position += 1;
    if parser.skip_lwsp() != Scan::More {
        out.clear();
        return Scan::Broken;
    }
    out.push(b'/');
    let subtype_start = out.len();
    let scan = parser.mime_token(out);
    if scan == Scan::Broken || out.len() == subtype_start || (scan == Scan::More && parser.peek() != Some(b';')) {
        out.clear();
        return Scan::Broken;
    }
    scan
}

/// What [`content_param`] found.
enum Param {
    Found(Vec<u8>, Vec<u8>),
    Broken,
    End,
}

/// One `; key=value` parameter.
fn content_param(parser: &mut Rfc822<'_>) -> Param {
    if parser.at_end() {
        return Param::End;
    }
    if parser.peek() != Some(b';') {
        return Param::Broken;
    }
    parser.position += 1;
    if parser.skip_lwsp() != Scan::More {
        return Param::Broken;
    }
    let mut key = Vec::new();
    if parser.mime_token(&mut key) != Scan::More || parser.peek() != Some(b'=') {
        return Param::Broken;
    }
    parser.position += 1;
    let mut value = Vec::new();
    let scan = match parser.skip_lwsp() {
        Scan::More => match parser.peek() {
            Some(b'"') => parser.quoted_string(&mut value),
            Some(b'=') => {
                // Broken `name==?utf-8?b?...?=`: take up to the next blank.
                while let Some(byte) = parser.peek() {
                    if matches!(byte, b';' | b' ' | b'\t' | b'\r' | b'\n') {
                        break;
                    }
                    value.push(byte);
                    parser.position += 1;
                }
                Scan::More
            }
            _ => parser.mime_token(&mut value),
        },
        other => other,
    };
    if scan == Scan::Broken { Param::Broken } else { Param::Found(key, value) }
}

/// Parameters, with RFC 2231 continuations (`key*0`, `key*1*`) joined as
/// Dovecot does, without decoding: plain parameters first, in order, then
/// the joined ones by name (`key*` when any piece was extended).
fn rfc2231_params(parser: &mut Rfc822<'_>) -> Params {
    struct Piece {
        key: Vec<u8>,
        index: u32,
        extended: bool,
        value: Vec<u8>,
    }
    let mut result = Vec::new();
    let mut pieces = Vec::new();
    // A bare `key*` takes the index of the piece before it (as Dovecot).
    let mut index = 0u32;
    loop {
        let (key, value) = match content_param(parser) {
            Param::End => break,
            Param::Found(key, value) => (key, value),
            Param::Broken => {
                if parser.at_end() {
                    break;
                }
                parser.position += 1;
                continue;
            }
        };
        if let Some(star) = key.iter().position(|&byte| byte == b'*') {
            let mut at = star;
            if star + 1 < key.len() {
                at = star + 1;
                index = 0;
                while let Some(digit) = key.get(at).filter(|byte| byte.is_ascii_digit()) {
                    index = index.saturating_mul(10).saturating_add(u32::from(digit - b'0'));
                    at += 1;
                }
            }
            let extended = key.get(at) == Some(&b'*');
            if extended {
                at += 1;
            }
            if at == key.len() {
                pieces.push(Piece { key: key.get(..star).unwrap_or_default().to_vec(), index, extended, value });
                continue;
            }
        }
        result.push((key, value));
    }

    pieces.sort_by(|a, b| a.key.to_ascii_lowercase().cmp(&b.key.to_ascii_lowercase()).then(a.index.cmp(&b.index)));
    let mut rest = pieces.as_slice();
    while let Some(first) = rest.first() {
        let count = rest.iter().take_while(|piece| piece.key.eq_ignore_ascii_case(&first.key)).count();
        let (group, tail) = rest.split_at(count);
        rest = tail;
        let in_order =
            group.iter().enumerate().all(|(at, piece)| usize::try_from(piece.index).is_ok_and(|index| index == at));
        if !in_order {
            for piece in group {
                let mut key = piece.key.clone();
                key.extend_from_slice(format!("*{}", piece.index).as_bytes());
                if piece.extended {
                    key.push(b'*');
                }
                result.push((key, piece.value.clone()));
            }
            continue;
        }
        let any_extended = group.iter().any(|piece| piece.extended);
        let mut value = Vec::new();
        if any_extended && !first.extended {
            value.extend_from_slice(b"''");
        }
        for piece in group {
            if any_extended && !piece.extended {
                for &byte in &piece.value {
                    if byte == b'%' {
                        value.extend_from_slice(b"%25");
                    } else {
                        value.push(byte);
                    }
                }
            } else {
                value.extend_from_slice(&piece.value);
            }
        }
        let mut key = first.key.clone();
        if any_extended {
            key.push(b'*');
        }
        result.push((key, value));
    }
    result
}

/// The Content-* fields BODYSTRUCTURE shows, first occurrence each.
#[derive(Debug, Default)]
struct MimeFields {
    content_type: Option<ContentType>,
    id: Option<Vec<u8>>,
    description: Option<Vec<u8>>,
    encoding: Option<Vec<u8>>,
    md5: Option<Vec<u8>>,
    disposition: Option<(Vec<u8>, Params)>,
    language: Vec<Vec<u8>>,
    location: Option<Vec<u8>>,
}

impl MimeFields {
    /// The fields of a MIME part: one with a Content-Type or MIME-Version
    /// field, or in a multipart. Other parts are plain text (Dovecot).
    fn from_header(header: &Header<'_>, in_multipart: bool) -> Self {
        let is_mime =
            in_multipart || header.first(b"Content-Type").is_some() || header.first(b"MIME-Version").is_some();
        if !is_mime {
            return Self::default();
        }
        let value = |name: &[u8]| header.first(name).map(|field| header.value(field));
        Self {
            content_type: value(b"Content-Type").map(|value| ContentType::parse(&value)),
            id: value(b"Content-ID"),
            description: value(b"Content-Description"),
            encoding: value(b"Content-Transfer-Encoding").and_then(|value| transfer_encoding(&value)),
            md5: value(b"Content-MD5"),
            disposition: value(b"Content-Disposition").and_then(|value| disposition(&value)),
            language: value(b"Content-Language").map(|value| languages(&value)).unwrap_or_default(),
            location: value(b"Content-Location"),
        }
    }

    fn basic(&self, params: &Params, size: usize) -> BasicFields<'static> {
        BasicFields {
            parameter_list: param_list(params),
            id: nstring(self.id.as_deref()),
            description: nstring(self.description.as_deref()),
            content_transfer_encoding: istring(self.encoding.as_deref().unwrap_or(b"7bit")),
            size: u32::try_from(size).unwrap_or(u32::MAX),
        }
    }

    fn single_extension(&self) -> SinglePartExtensionData<'static> {
        SinglePartExtensionData { md5: nstring(self.md5.as_deref()), tail: Some(self.disposition_tail()) }
    }

    fn disposition_tail(&self) -> Disposition<'static> {
        Disposition {
            disposition: self.disposition.as_ref().map(|(kind, params)| (istring(kind), param_list(params))),
            tail: Some(Language {
                language: self.language.iter().map(|tag| istring(tag)).collect(),
                tail: Some(Location { location: nstring(self.location.as_deref()), extensions: Vec::new() }),
            }),
        }
    }
}

/// A Content-Transfer-Encoding that is one token, as written.
fn transfer_encoding(value: &[u8]) -> Option<Vec<u8>> {
    let mut parser = Rfc822::new(value);
    parser.skip_lwsp();
    let mut token = Vec::new();
    let valid = parser.mime_token(&mut token) != Scan::Broken && parser.skip_lwsp() == Scan::End && !token.is_empty();
    valid.then_some(token)
}

fn disposition(value: &[u8]) -> Option<(Vec<u8>, Params)> {
    let mut parser = Rfc822::new(value);
    parser.skip_lwsp();
    let mut kind = Vec::new();
    if parser.mime_token(&mut kind) == Scan::Broken {
        return None;
    }
    Some((kind, rfc2231_params(&mut parser)))
}

/// Content-Language: comma-separated atoms.
fn languages(value: &[u8]) -> Vec<Vec<u8>> {
    let mut parser = Rfc822::new(value);
    parser.skip_lwsp();
    let mut tags = Vec::new();
    loop {
        let mut tag = Vec::new();
        if parser.atom(&mut tag) == Scan::Broken {
            break;
        }
        tags.push(tag);
        if parser.peek() != Some(b',') {
            break;
        }
        parser.position += 1;
        parser.skip_lwsp();
    }
    tags
}

// ----- addresses (Dovecot's message-address) -----------------------------

#[derive(Debug, Default, Clone)]
struct ParsedAddress {
    name: Option<Vec<u8>>,
    route: Option<Vec<u8>>,
    mailbox: Option<Vec<u8>>,
    domain: Option<Vec<u8>>,
}

/// Parses an address list as Dovecot does for ENVELOPE (missing parts
/// filled in, non-strict dots). `None`: nothing but white space.
fn parse_addresses(value: &[u8]) -> Option<Vec<ParsedAddress>> {
    let mut parser = AddressParser {
        input: Rfc822::new(value),
        address: ParsedAddress::default(),
        text: Vec::new(),
        out: Vec::new(),
    };
    if parser.input.skip_lwsp() != Scan::More {
        return None;
    }
    parser.address_list();
    Some(parser.out)
}

#[derive(Debug)]
struct AddressParser<'a> {
    input: Rfc822<'a>,
    address: ParsedAddress,
    text: Vec<u8>,
    out: Vec<ParsedAddress>,
}

impl AddressParser<'_> {
    fn push(&mut self) {
        self.out.push(std::mem::take(&mut self.address));
    }

    /// Pushes the address with a missing mailbox or domain filled in.
    fn push_filled(&mut self) {
        if self.address.mailbox.is_none() {
            self.address.mailbox = Some(b"MISSING_MAILBOX".to_vec());
        }
        if self.address.domain.as_ref().is_none_or(Vec::is_empty) {
            self.address.domain = Some(b"MISSING_DOMAIN".to_vec());
        }
        self.push();
    }

    fn peek_is(&self, byte: u8) -> bool {
        self.input.peek() == Some(byte)
    }

    fn local_part(&mut self) -> Scan {
        self.text.clear();
        let scan =
            if self.peek_is(b'"') { self.input.quoted_string(&mut self.text) } else { self.non_strict_dot_atom() };
        if scan == Scan::Broken {
            return Scan::Broken;
        }
        self.address.mailbox = Some(self.text.clone());
        scan
    }

    /// A local part that may have empty atoms between dots (`a.@b`).
    fn non_strict_dot_atom(&mut self) -> Scan {
        let mut scan = Scan::Broken;
        loop {
            while self.peek_is(b'.') {
                self.text.push(b'.');
                self.input.position += 1;
                if self.input.at_end() {
                    return Scan::End;
                }
                scan = Scan::More;
            }
            if self.peek_is(b'@') {
                break;
            }
            scan = self.input.atom(&mut self.text);
            if !(scan == Scan::More && self.peek_is(b'.')) {
                break;
            }
        }
        scan
    }

    fn domain(&mut self) -> Scan {
        self.text.clear();
        let scan = self.input.domain(&mut self.text);
        if scan == Scan::Broken {
            return Scan::Broken;
        }
        self.address.domain = Some(self.text.clone());
        scan
    }

    /// `@a,@b` of an obsolete route.
    fn domain_list(&mut self) -> Scan {
        self.text.clear();
        loop {
            if self.input.at_end() {
                return Scan::End;
            }
            if !self.peek_is(b'@') {
                break;
            }
            if !self.text.is_empty() {
                self.text.push(b',');
            }
            self.text.push(b'@');
            let scan = self.input.domain(&mut self.text);
            if scan != Scan::More {
                return scan;
            }
            while self.input.skip_lwsp() == Scan::More && self.peek_is(b',') {
                self.input.position += 1;
            }
        }
        self.address.route = Some(self.text.clone());
        Scan::More
    }

    fn angle_address(&mut self) -> Scan {
        self.input.position += 1;
        if self.input.skip_lwsp() != Scan::More {
            return Scan::Broken;
        }
        if self.peek_is(b'@') {
            if self.domain_list() == Scan::More && self.peek_is(b':') {
                self.input.position += 1;
            } else {
                self.address.route = Some(b"INVALID_ROUTE".to_vec());
                if self.input.at_end() {
                    return Scan::Broken;
                }
            }
            if self.input.skip_lwsp() != Scan::More {
                return Scan::Broken;
            }
        }
        if !self.peek_is(b'>') {
            if self.local_part() != Scan::More {
                return Scan::Broken;
            }
            if self.peek_is(b'@') && self.domain() != Scan::More {
                return Scan::Broken;
            }
        }
        if !self.peek_is(b'>') {
            return Scan::Broken;
        }
        self.input.position += 1;
        self.input.skip_lwsp()
    }

    fn name_address(&mut self) -> Scan {
        self.text.clear();
        if self.input.phrase(&mut self.text) != Scan::More || !self.peek_is(b'<') {
            return Scan::Broken;
        }
        self.address.name = (!self.text.is_empty()).then(|| self.text.clone());
        if self.angle_address() == Scan::Broken {
            self.address.domain = Some(b"SYNTAX_ERROR".to_vec());
        }
        self.input.more_or_end()
    }

    fn address_spec(&mut self) -> Scan {
        self.input.last_comment.clear();
        let quoted = self.peek_is(b'"');
        let mut scan = self.local_part();
        let local_part_parsed = scan != Scan::Broken;
        let mut domain_scan = None;
        if scan != Scan::End && self.peek_is(b'@') {
            let found = self.domain();
            domain_scan = Some(found);
            if found != Scan::More {
                scan = found;
            }
        }
        if !self.input.last_comment.is_empty() {
            self.address.name = Some(self.input.last_comment.clone());
        } else if domain_scan.is_none() {
            // A lone atom is a mailbox; a quoted string or more words are
            // a display name.
            self.text.push(b' ');
            let before = self.text.len();
            self.input.phrase(&mut self.text);
            if self.text.len() != before {
                self.address.mailbox = None;
                self.address.name = Some(self.text.clone());
            } else if !quoted {
                self.address.domain = Some(Vec::new());
            } else if local_part_parsed {
                self.address.name = self.address.mailbox.take();
            }
            scan = Scan::Broken;
        }
        scan
    }

    fn mailbox(&mut self) -> Scan {
        let start = self.input.position;
        let mut scan = self.name_address();
        if scan == Scan::Broken {
            self.input.position = start;
            scan = self.address_spec();
        }
        self.push_filled();
        // A broken mailbox is kept; parsing goes on after it.
        if scan == Scan::Broken { self.input.more_or_end() } else { scan }
    }

    fn group(&mut self) -> Scan {
        self.text.clear();
        if self.input.phrase(&mut self.text) != Scan::More || !self.peek_is(b':') {
            return Scan::Broken;
        }
        self.input.position += 1;
        let mut scan = match self.input.skip_lwsp() {
            Scan::More => Scan::More,
            _ => Scan::Broken,
        };
        self.address.mailbox = Some(self.text.clone());
        self.push();
        if scan == Scan::More && !self.peek_is(b';') {
            loop {
                if self.mailbox() != Scan::More || self.input.at_end() {
                    scan = Scan::Broken;
                    break;
                }
                if self.peek_is(b';') {
                    break;
                }
                if !self.peek_is(b',') {
                    scan = Scan::Broken;
                    break;
                }
                self.input.position += 1;
                if self.input.skip_lwsp() != Scan::More {
                    scan = Scan::Broken;
                    break;
                }
            }
        }
        if scan != Scan::Broken {
            if self.peek_is(b';') {
                self.input.position += 1;
                scan = self.input.skip_lwsp();
            } else {
                scan = Scan::Broken;
            }
        }
        self.push();
        if scan == Scan::End { Scan::End } else { Scan::More }
    }

    fn address(&mut self) -> Scan {
        let start = self.input.position;
        let scan = self.group();
        if scan != Scan::Broken {
            return scan;
        }
        self.input.position = start;
        self.mailbox()
    }

    fn address_list(&mut self) {
        loop {
            if self.address() == Scan::End || !self.peek_is(b',') {
                break;
            }
            self.input.position += 1;
            match self.input.skip_lwsp() {
                Scan::More => {}
                Scan::End => break,
                Scan::Broken => {
                    // Garbage at the end is one more (empty) address.
                    self.push_filled();
                    break;
                }
            }
        }
    }
}

// ----- rendering ---------------------------------------------------------

/// ENVELOPE from a message header: the last of repeated text fields, all
/// addresses of repeated address fields.
fn envelope(header: &Header<'_>) -> Envelope<'static> {
    let text = |name: &[u8]| header.last(name).map(|field| header.value(field));
    let addresses = |name: &[u8]| {
        header
            .named(name)
            .filter_map(|field| parse_addresses(&header.value(field)))
            .flatten()
            .map(|parsed| address(&parsed))
            .collect::<Vec<_>>()
    };
    let from = addresses(b"From");
    let or_from = |list: Vec<Address<'static>>| if list.is_empty() { from.clone() } else { list };
    Envelope {
        date: nstring(text(b"Date").as_deref()),
        subject: NString(text(b"Subject").map(|subject| istring(&for_humans(&subject)))),
        sender: or_from(addresses(b"Sender")),
        reply_to: or_from(addresses(b"Reply-To")),
        from: from.clone(),
        to: addresses(b"To"),
        cc: addresses(b"Cc"),
        bcc: addresses(b"Bcc"),
        in_reply_to: nstring(text(b"In-Reply-To").as_deref()),
        message_id: nstring(text(b"Message-ID").as_deref()),
    }
}

fn address(parsed: &ParsedAddress) -> Address<'static> {
    Address {
        name: NString(parsed.name.as_deref().map(|name| istring(&for_humans(name)))),
        adl: nstring(parsed.route.as_deref()),
        mailbox: nstring(parsed.mailbox.as_deref()),
        host: nstring(parsed.domain.as_deref()),
    }
}

/// Dovecot's body for a multipart without parts: an empty text/plain.
fn empty_part(extensible: bool) -> BodyStructure<'static> {
    let fields = MimeFields::default();
    let params = vec![(b"charset".to_vec(), b"us-ascii".to_vec())];
    BodyStructure::Single {
        body: Body {
            basic: fields.basic(&params, 0),
            specific: SpecificFields::Text { subtype: istring(b"plain"), number_of_lines: 0 },
        },
        extension_data: extensible.then(|| fields.single_extension()),
    }
}

fn param_list(params: &Params) -> Vec<(IString<'static>, IString<'static>)> {
    params.iter().map(|(key, value)| (istring(key), istring(value))).collect()
}

/// An IMAP string: quoted when it can be, else a literal; CR and LF dropped
/// (as Dovecot's `imap_append_nstring_nolf`), NUL as U+FFFD.
fn istring(bytes: &[u8]) -> IString<'static> {
    let mut clean = Vec::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\r' | b'\n' => {}
            0 => clean.extend_from_slice("\u{FFFD}".as_bytes()),
            _ => clean.push(byte),
        }
    }
    IString::try_from(clean).unwrap_or_else(|_| IString::from(Literal::unvalidated(Vec::new())))
}

/// Dovecot's `imap_append_string_for_humans` (subjects and names): runs of
/// white space and line breaks as one space, none at either end.
fn for_humans(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut blank = false;
    for &byte in bytes {
        if matches!(byte, b' ' | b'\t' | b'\r' | b'\n') {
            blank = true;
        } else {
            if blank && !out.is_empty() {
                out.push(b' ');
            }
            blank = false;
            out.push(byte);
        }
    }
    out
}

fn nstring(bytes: Option<&[u8]>) -> NString<'static> {
    NString(bytes.map(istring))
}

#[cfg(test)]
mod tests {
    //! Known answers are Dovecot 2.3.19's, for the same messages with CRLF
    //! line ends, written as imap-codec encodes them: `"TEXT"`, `"MESSAGE"
    //! "RFC822"` in upper case and quoted strings where Dovecot may send
    //! literals.

    use std::num::NonZeroU32;
    use std::path::{Path, PathBuf};

    use imap_codec::{
        CommandCodec, ResponseCodec,
        decode::Decoder,
        encode::Encoder,
        imap_types::{
            command::CommandBody,
            fetch::{MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName},
            response::{Data, Response},
        },
    };

    use super::*;

    /// `text` with LF line ends turned into CRLF.
    fn crlf(text: &str) -> Vec<u8> {
        text.replace('\n', "\r\n").into_bytes()
    }

    /// The section of `BODY[spec]`, parsed by imap-codec.
    fn section(spec: &str) -> Section<'static> {
        let command = format!("a FETCH 1 BODY[{spec}]\r\n");
        let (_, command) = CommandCodec::default().decode_static(command.as_bytes()).unwrap();
        let CommandBody::Fetch {
            macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(names), ..
        } = command.body
        else {
            panic!("not a FETCH: {spec}");
        };
        match names.into_iter().next() {
            Some(MessageDataItemName::BodyExt { section: Some(section), .. }) => section,
            other => panic!("no section in {spec}: {other:?}"),
        }
    }

    fn fetch(view: &MessageView<'_>, spec: &str) -> Option<String> {
        view.section(Some(&section(spec))).map(|bytes| String::from_utf8(bytes.into_owned()).unwrap())
    }

    fn response(items: Vec<MessageDataItem<'static>>) -> Response<'static> {
        Response::Data(Data::Fetch { seq: NonZeroU32::MIN, items: Vec1::try_from(items).unwrap() })
    }

    /// How the item goes on the wire, between `* 1 FETCH (` and `)`.
    fn encoded(item: MessageDataItem<'static>) -> String {
        let bytes = ResponseCodec::default().encode(&response(vec![item])).dump();
        let text = String::from_utf8(bytes).unwrap();
        text.strip_prefix("* 1 FETCH (").and_then(|rest| rest.strip_suffix(")\r\n")).unwrap().to_owned()
    }

    fn body_structure(view: &MessageView<'_>) -> String {
        encoded(MessageDataItem::BodyStructure(view.body_structure(true)))
    }

    fn body(view: &MessageView<'_>) -> String {
        encoded(MessageDataItem::Body(view.body_structure(false)))
    }

    fn envelope(view: &MessageView<'_>) -> String {
        encoded(MessageDataItem::Envelope(view.envelope()))
    }

    /// Levels of parentheses imap-codec's decoder follows in a body
    /// structure (`body(8)`: seven levels).
    fn depth(structure: &BodyStructure<'_>) -> usize {
        match structure {
            BodyStructure::Single { body, .. } => match &body.specific {
                SpecificFields::Message { body_structure, .. } => 1 + depth(body_structure),
                _ => 1,
            },
            BodyStructure::Multi { bodies, .. } => 1 + bodies.as_ref().iter().map(depth).max().unwrap_or(0),
        }
    }

    /// Encodes the items as one FETCH response and decodes it again.
    /// Returns false when imap-codec's decoder cannot follow the nesting.
    fn round_trip(items: Vec<MessageDataItem<'static>>) -> bool {
        let deep = items.iter().any(|item| match item {
            MessageDataItem::Body(structure) | MessageDataItem::BodyStructure(structure) => depth(structure) > 7,
            _ => false,
        });
        let response = response(items);
        let bytes = ResponseCodec::default().encode(&response).dump();
        if deep {
            return false;
        }
        let (rest, decoded) = ResponseCodec::default()
            .decode_static(&bytes)
            .unwrap_or_else(|error| panic!("{error:?}: {}", String::from_utf8_lossy(&bytes)));
        assert!(rest.is_empty());
        assert_eq!(decoded, response, "{}", String::from_utf8_lossy(&bytes));
        true
    }

    const MIXED: &str = r#"Return-Path: <alice@example.org>
Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
From: "Alice Q. Example" <alice@example.org>
Subject: =?utf-8?q?Hello_world?= and
 a folded subject
To: Bob <bob@example.com>, carol@example.net (Carol C)
Cc: undisclosed-recipients:;
Message-ID: <msg1@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

Hello =C3=A9
second line
--inner
Content-Type: text/html; charset="utf-8"
Content-ID: <html1@example.org>
Content-Description: the HTML part

<p>Hello</p>
--inner--
inner epilogue
--outer   
Content-Type: message/rfc822
Content-Disposition: attachment; filename="fwd.eml"

From: Dave <dave@example.com>
To: alice@example.org
Subject: forwarded
Date: Sun, 6 Feb 1994 10:00:00 +0000
Content-Type: multipart/mixed; boundary=fwd

--fwd
Content-Type: text/plain

fwd text
--fwd
Content-Type: application/octet-stream; name=x.bin
Content-Transfer-Encoding: base64
Content-Disposition: attachment; filename=x.bin; size=3
Content-Language: en, de
Content-Location: http://example.org/x.bin
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

AAEC
--fwd--
--outer
Content-Type: IMAGE/PNG; NAME="a b.png"
Content-Transfer-Encoding: BASE64
Content-Disposition: INLINE

iVBORw0KGgo=
--outer--
This is the epilogue.
"#;

    #[test]
    fn mixed_message_structure() {
        let raw = crlf(MIXED);
        let view = MessageView::parse(&raw);
        assert_eq!(
            body_structure(&view),
            concat!(
                r#"BODYSTRUCTURE ((("TEXT" "plain" ("charset" "UTF-8") NIL NIL "quoted-printable" 25 1 NIL NIL NIL NIL)"#,
                r#"("TEXT" "html" ("charset" "utf-8") "<html1@example.org>" "the HTML part" "7bit" 12 0 NIL NIL NIL NIL)"#,
                r#" "alternative" ("boundary" "inner") NIL NIL NIL)"#,
                r#"("MESSAGE" "RFC822" NIL NIL NIL "7bit" 481 ("Sun, 6 Feb 1994 10:00:00 +0000" "forwarded""#,
                r#" (("Dave" NIL "dave" "example.com")) (("Dave" NIL "dave" "example.com"))"#,
                r#" (("Dave" NIL "dave" "example.com")) ((NIL NIL "alice" "example.org")) NIL NIL NIL NIL)"#,
                r#" (("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 8 0 NIL NIL NIL NIL)"#,
                r#"("application" "octet-stream" ("name" "x.bin") NIL NIL "base64" 4 "Q2hlY2sgSW50ZWdyaXR5IQ==""#,
                r#" ("attachment" ("filename" "x.bin" "size" "3")) ("en" "de") "http://example.org/x.bin")"#,
                r#" "mixed" ("boundary" "fwd") NIL NIL NIL) 20 NIL ("attachment" ("filename" "fwd.eml")) NIL NIL)"#,
                r#"("IMAGE" "PNG" ("NAME" "a b.png") NIL NIL "BASE64" 12 NIL ("INLINE" NIL) NIL NIL)"#,
                r#" "mixed" ("boundary" "outer") NIL NIL NIL)"#,
            )
        );
        assert_eq!(
            body(&view),
            concat!(
                r#"BODY ((("TEXT" "plain" ("charset" "UTF-8") NIL NIL "quoted-printable" 25 1)"#,
                r#"("TEXT" "html" ("charset" "utf-8") "<html1@example.org>" "the HTML part" "7bit" 12 0) "alternative")"#,
                r#"("MESSAGE" "RFC822" NIL NIL NIL "7bit" 481 ("Sun, 6 Feb 1994 10:00:00 +0000" "forwarded""#,
                r#" (("Dave" NIL "dave" "example.com")) (("Dave" NIL "dave" "example.com"))"#,
                r#" (("Dave" NIL "dave" "example.com")) ((NIL NIL "alice" "example.org")) NIL NIL NIL NIL)"#,
                r#" (("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 8 0)"#,
                r#"("application" "octet-stream" ("name" "x.bin") NIL NIL "base64" 4) "mixed") 20)"#,
                r#"("IMAGE" "PNG" ("NAME" "a b.png") NIL NIL "BASE64" 12) "mixed")"#,
            )
        );
        assert_eq!(
            envelope(&view),
            concat!(
                r#"ENVELOPE ("Mon, 7 Feb 1994 21:52:25 -0800 (PST)" "=?utf-8?q?Hello_world?= and a folded subject""#,
                r#" (("Alice Q. Example" NIL "alice" "example.org")) (("Alice Q. Example" NIL "alice" "example.org"))"#,
                r#" (("Alice Q. Example" NIL "alice" "example.org"))"#,
                r#" (("Bob" NIL "bob" "example.com")("Carol C" NIL "carol" "example.net"))"#,
                r#" ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL NIL "<msg1@example.org>")"#,
            )
        );
        assert!(round_trip(vec![
            MessageDataItem::BodyStructure(view.body_structure(true)),
            MessageDataItem::Body(view.body_structure(false)),
            MessageDataItem::Envelope(view.envelope()),
        ]));
    }

    #[test]
    fn mixed_message_sections() {
        let raw = crlf(MIXED);
        let view = MessageView::parse(&raw);
        let fetch = |spec| fetch(&view, spec);
        let alternative = "--inner\r\nContent-Type: text/plain; charset=UTF-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\nHello =C3=A9\r\nsecond line\r\n--inner\r\n\
            Content-Type: text/html; charset=\"utf-8\"\r\nContent-ID: <html1@example.org>\r\n\
            Content-Description: the HTML part\r\n\r\n<p>Hello</p>\r\n--inner--\r\ninner epilogue";
        assert_eq!(fetch("1").as_deref(), Some(alternative));
        assert_eq!(fetch("1.MIME").as_deref(), Some("Content-Type: multipart/alternative; boundary=inner\r\n\r\n"));
        assert_eq!(fetch("1.1").as_deref(), Some("Hello =C3=A9\r\nsecond line"));
        assert_eq!(
            fetch("1.2.MIME").as_deref(),
            Some(
                "Content-Type: text/html; charset=\"utf-8\"\r\nContent-ID: <html1@example.org>\r\n\
                 Content-Description: the HTML part\r\n\r\n"
            )
        );
        // A part that is not multipart is its own part 1, nothing below.
        assert_eq!(fetch("1.1.1").as_deref(), Some("Hello =C3=A9\r\nsecond line"));
        assert_eq!(fetch("1.1.1.1"), None);
        assert_eq!(fetch("3.1").as_deref(), Some("iVBORw0KGgo="));
        assert_eq!(fetch("3.1.1"), None);
        // The message/rfc822 part: its body is the whole encapsulated message.
        let forwarded = fetch("2").unwrap();
        assert!(forwarded.starts_with("From: Dave <dave@example.com>\r\n"));
        assert!(forwarded.ends_with("AAEC\r\n--fwd--\r\n"));
        assert_eq!(forwarded.len(), 481);
        assert_eq!(
            fetch("2.MIME").as_deref(),
            Some("Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"fwd.eml\"\r\n\r\n")
        );
        assert_eq!(
            fetch("2.HEADER").as_deref(),
            Some(
                "From: Dave <dave@example.com>\r\nTo: alice@example.org\r\nSubject: forwarded\r\n\
                 Date: Sun, 6 Feb 1994 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=fwd\r\n\r\n"
            )
        );
        assert!(fetch("2.TEXT").unwrap().starts_with("--fwd\r\nContent-Type: text/plain\r\n\r\nfwd text\r\n--fwd\r\n"));
        assert_eq!(fetch("2.1").as_deref(), Some("fwd text"));
        assert_eq!(fetch("2.1.MIME").as_deref(), Some("Content-Type: text/plain\r\n\r\n"));
        assert_eq!(fetch("2.2").as_deref(), Some("AAEC"));
        assert_eq!(fetch("2.HEADER.FIELDS (subject)").as_deref(), Some("Subject: forwarded\r\n\r\n"));
        assert_eq!(fetch("3").as_deref(), Some("iVBORw0KGgo="));
        assert_eq!(
            fetch("3.MIME").as_deref(),
            Some(
                "Content-Type: IMAGE/PNG; NAME=\"a b.png\"\r\nContent-Transfer-Encoding: BASE64\r\nContent-Disposition: INLINE\r\n\r\n"
            )
        );
        assert!(fetch("TEXT").unwrap().starts_with("This is the preamble.\r\n--outer\r\n"));
        assert!(fetch("TEXT").unwrap().ends_with("--outer--\r\nThis is the epilogue.\r\n"));
        // What does not exist (Dovecot sends empty strings for these).
        assert_eq!(fetch("4"), None);
        assert_eq!(fetch("2.3"), None);
        assert_eq!(fetch("1.HEADER"), None);
        assert_eq!(fetch("1.1.TEXT"), None);
        assert_eq!(fetch("3.HEADER.FIELDS (subject)"), None);

        assert_eq!(view.section(None).as_deref(), Some(raw.as_slice()));
        assert_eq!([view.header_bytes(), view.text_bytes()].concat(), raw);
        assert!(view.header_bytes().ends_with(b"boundary=\"outer\"\r\n\r\n"));
        assert!(view.text_bytes().starts_with(b"This is the preamble."));
    }

    #[test]
    fn header_fields_keep_the_original_lines() {
        let raw = crlf(
            " leading continuation\nSubject : spaced name\nNoColonLine\nX-A: one\n  two\nX-B:three\n\
             subject: lower\nContent-Type: text\n\nx\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            fetch(&view, "HEADER.FIELDS (SUBJECT x-a NoColonLine)").as_deref(),
            Some("Subject : spaced name\r\nX-A: one\r\n  two\r\nsubject: lower\r\n\r\n")
        );
        assert_eq!(
            fetch(&view, "HEADER.FIELDS.NOT (subject X-A)").as_deref(),
            Some(" leading continuation\r\nNoColonLine\r\nX-B:three\r\nContent-Type: text\r\n\r\n")
        );
        assert_eq!(fetch(&view, "HEADER.FIELDS (x-none)").as_deref(), Some("\r\n"));

        // No blank line: HEADER.FIELDS still ends with one, .NOT does not.
        let raw = b"Subject: x\r\nX-Y: z";
        let view = MessageView::parse(raw);
        assert_eq!(fetch(&view, "HEADER.FIELDS (subject)").as_deref(), Some("Subject: x\r\n\r\n"));
        assert_eq!(fetch(&view, "HEADER.FIELDS (x-y)").as_deref(), Some("X-Y: z\r\n\r\n"));
        assert_eq!(fetch(&view, "HEADER.FIELDS.NOT (subject)").as_deref(), Some("X-Y: z"));
        assert_eq!(fetch(&view, "HEADER.FIELDS.NOT (x-y)").as_deref(), Some("Subject: x\r\n"));
        assert_eq!(view.header_bytes(), raw);
        assert_eq!(view.text_bytes(), b"");

        // The empty message and the message without header.
        let view = MessageView::parse(b"");
        assert_eq!(fetch(&view, "HEADER.FIELDS (subject)").as_deref(), Some("\r\n"));
        assert_eq!(fetch(&view, "HEADER.FIELDS.NOT (subject)").as_deref(), Some(""));
        assert_eq!(fetch(&view, "HEADER").as_deref(), Some(""));
        let view = MessageView::parse(b"\r\nSubject: body\r\n");
        assert_eq!(fetch(&view, "HEADER").as_deref(), Some("\r\n"));
        assert_eq!(fetch(&view, "TEXT").as_deref(), Some("Subject: body\r\n"));
        assert_eq!(fetch(&view, "HEADER.FIELDS (subject)").as_deref(), Some("\r\n"));
    }

    #[test]
    fn partial_cuts_the_range() {
        let bytes = b"0123456789";
        assert_eq!(partial(bytes, 0, 3), b"012");
        assert_eq!(partial(bytes, 8, 5), b"89");
        assert_eq!(partial(bytes, 10, 1), b"");
        assert_eq!(partial(bytes, 5000, 5), b"");
        assert_eq!(partial(bytes, u32::MAX, u32::MAX), b"");
        assert_eq!(partial(bytes, 3, u32::MAX), b"3456789");

        let raw = crlf(MIXED);
        let view = MessageView::parse(&raw);
        assert_eq!(partial(&view.section(None).unwrap(), 10, 5), b"h: <a");
    }

    #[test]
    fn non_multipart_message_has_part_one() {
        let raw = crlf("Subject: hi\nFrom: a@b.c\n\nbody\n");
        let view = MessageView::parse(&raw);
        assert_eq!(fetch(&view, "1").as_deref(), Some("body\r\n"));
        assert_eq!(fetch(&view, "1.MIME").as_deref(), Some("Subject: hi\r\nFrom: a@b.c\r\n\r\n"));
        assert_eq!(fetch(&view, "TEXT").as_deref(), Some("body\r\n"));
        assert_eq!(fetch(&view, "2"), None);
        assert_eq!(fetch(&view, "1.1"), None);
        assert_eq!(fetch(&view, "1.HEADER"), None);
        assert_eq!(
            body_structure(&view),
            r#"BODYSTRUCTURE ("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1 NIL NIL NIL NIL)"#
        );
        assert_eq!(
            envelope(&view),
            r#"ENVELOPE (NIL "hi" ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) ((NIL NIL "a" "b.c")) NIL NIL NIL NIL NIL)"#
        );
    }

    #[test]
    fn encapsulated_messages() {
        // A message that is message/rfc822 itself.
        let raw = crlf(
            "Subject: top-level message/rfc822\nContent-Type: message/rfc822\n\nSubject: inner\n\
             Content-Type: multipart/alternative; boundary=ia\n\n--ia\nContent-Type: text/plain\n\none\n\
             --ia\nContent-Type: text/plain\n\ntwo\n--ia--\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            body_structure(&view),
            concat!(
                r#"BODYSTRUCTURE ("MESSAGE" "RFC822" NIL NIL NIL "7bit" 154 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" (("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0 NIL NIL NIL NIL)"#,
                r#" "alternative" ("boundary" "ia") NIL NIL NIL) 12 NIL NIL NIL NIL)"#,
            )
        );
        assert!(fetch(&view, "1").unwrap().starts_with("Subject: inner\r\n"));
        assert_eq!(fetch(&view, "1.1").as_deref(), Some("one"));
        assert_eq!(fetch(&view, "1.2").as_deref(), Some("two"));
        assert_eq!(fetch(&view, "1.1.MIME").as_deref(), Some("Content-Type: text/plain\r\n\r\n"));
        assert!(fetch(&view, "1.HEADER").unwrap().starts_with("Subject: inner\r\nContent-Type: multipart"));
        assert!(fetch(&view, "1.TEXT").unwrap().starts_with("--ia\r\n"));

        // message/rfc822 whatever its encoding, a digest's parts, message/global.
        let raw = crlf(
            "Subject: base64 message/rfc822\nContent-Type: multipart/mixed; boundary=q\n\n--q\n\
             Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n\
             U3ViamVjdDogaW5uZXIKCmlubmVyIGJvZHkK\n--q\nContent-Type: multipart/digest; boundary=d\n\n--d\n\n\
             Subject: digest part 1\n\nd1\n--d\nContent-Type: text/plain\n\nd2\n--d--\n--q\n\
             Content-Type: message/global\n\nSubject: global\n\ng\n--q--\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            body(&view),
            concat!(
                r#"BODY (("MESSAGE" "RFC822" NIL NIL NIL "base64" 38 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 1)"#,
                r#"(("MESSAGE" "RFC822" NIL NIL NIL "7bit" 28 (NIL "digest part 1" NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                r#" ("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0) 2)"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 2 0) "digest")"#,
                r#"("message" "global" NIL NIL NIL "7bit" 20) "mixed")"#,
            )
        );
        // Dovecot counts the line break before the boundary into the
        // message part here, but not into the header it ends.
        assert_eq!(fetch(&view, "1").as_deref(), Some("U3ViamVjdDogaW5uZXIKCmlubmVyIGJvZHkK\r\n"));
        assert_eq!(fetch(&view, "1.HEADER").as_deref(), Some("U3ViamVjdDogaW5uZXIKCmlubmVyIGJvZHkK"));
        assert_eq!(fetch(&view, "2.1.1").as_deref(), Some("d1"));
        assert_eq!(fetch(&view, "2.1.HEADER").as_deref(), Some("Subject: digest part 1\r\n\r\n"));
        assert_eq!(fetch(&view, "3.1").as_deref(), Some("Subject: global\r\n\r\ng"));
        assert_eq!(fetch(&view, "3.HEADER"), None);
    }

    #[test]
    fn envelope_addresses_as_dovecot() {
        let raw = crlf(concat!(
            "From: =?iso-8859-1?q?Andr=E9?= Pirard <PIRARD@vm1.ulg.ac.be>\n",
            "Sender: \n",
            "Reply-To: list:  a@b.c, \"Q \\\"x\\\" y\" <d@e.f>; , g@h.i\n",
            "To: <@route1,@route2:joe@example.com>, missingdomain, @nomailbox.org, \"Just Name\" <>\n",
            "Cc: (comment only) x@y.z (Xavier)\n",
            "Bcc: \n",
            "Subject: first subject\n",
            "Subject:  second\n  \tsubject \n",
            "In-Reply-To: <a@b>\n\t<c@d>\n",
            "Message-Id:   <with-spaces@example>   \n",
            "Date:   Tue, 1 Jan 2002 00:00:00 +0000   \n",
            "\nbody\n",
        ));
        let view = MessageView::parse(&raw);
        assert_eq!(
            envelope(&view),
            concat!(
                r#"ENVELOPE ("Tue, 1 Jan 2002 00:00:00 +0000   " "second subject""#,
                r#" (("=?iso-8859-1?q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))"#,
                r#" (("=?iso-8859-1?q?Andr=E9?= Pirard" NIL "PIRARD" "vm1.ulg.ac.be"))"#,
                r#" ((NIL NIL "list" NIL)(NIL NIL "a" "b.c")("Q \"x\" y" NIL "d" "e.f")(NIL NIL NIL NIL)(NIL NIL "g" "h.i"))"#,
                r#" ((NIL "@route1,@route2" "joe" "example.com")(NIL NIL "missingdomain" "MISSING_DOMAIN")"#,
                r#"(NIL NIL "MISSING_MAILBOX" "nomailbox.org")("Just Name" NIL "MISSING_MAILBOX" "MISSING_DOMAIN"))"#,
                r#" (("Xavier" NIL "x" "y.z")) NIL "<a@b>	<c@d>" "<with-spaces@example>   ")"#,
            )
        );

        let raw = crlf(concat!(
            "To: a@b.c, , d@e.f, <g@h.i>, j@k.l (c1) (c2), \"quoted@local\"@host, \"weird \\\\ esc\" <m@n.o>\n",
            "Cc: Name <bad, other@x.y\n",
            "Bcc: a.@b, group: ;, undisclosed-recipients:\n",
            "From: =?utf-8?b?Zm9v?= <x@y>, \"\" <empty@name>, Peter (the great) Pan <pp@x.y>\n",
            "Sender: just text here\n",
            "Reply-To: x@[1.2.3.4], y@ex ample . org , \"a\".\"b\"@c\n",
            "To: \"q  s\", \"\"@x\n",
            "Subject: addr\n\nx\n",
        ));
        let view = MessageView::parse(&raw);
        assert_eq!(
            envelope(&view),
            concat!(
                r#"ENVELOPE (NIL "addr" (("=?utf-8?b?Zm9v?=" NIL "x" "y")(NIL NIL "empty" "name")("Peter Pan" NIL "pp" "x.y"))"#,
                r#" (("just text here" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) ((NIL NIL "x" "[1.2.3.4]")(NIL NIL "y" "ex"))"#,
                r#" ((NIL NIL "a" "b.c")(NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "d" "e.f")(NIL NIL "g" "h.i")"#,
                r#"("c2" NIL "j" "k.l")(NIL NIL "quoted@local" "host")("weird \\ esc" NIL "m" "n.o")"#,
                r#"("q s" NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "" "x"))"#,
                r#" (("Name" NIL "bad" "SYNTAX_ERROR")(NIL NIL "other" "x.y"))"#,
                r#" ((NIL NIL "a." "b")(NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))"#,
                r#" NIL NIL)"#,
            )
        );
        assert!(round_trip(vec![MessageDataItem::Envelope(view.envelope())]));
    }

    #[test]
    fn eight_bit_and_nul_need_literals() {
        let raw = b"Subject: 8bit \xc3\xa9 and nul \x00 here\r\nFrom: J\xc3\xb6rg <j@x.de>\r\n\
            Content-Type: text/plain; name=\"\xc3\xa9.txt\"\r\n\r\nbody \x00 nul\r\n";
        let view = MessageView::parse(raw);
        let subject = view.envelope().subject.into_option().unwrap();
        assert_eq!(subject.as_ref(), "8bit é and nul \u{FFFD} here".as_bytes());
        assert!(round_trip(vec![
            MessageDataItem::BodyStructure(view.body_structure(true)),
            MessageDataItem::Envelope(view.envelope()),
        ]));
        // Sections stay byte-exact; as FETCH data the NUL goes out as 0x80.
        let text = view.section(Some(&section("1"))).unwrap();
        assert_eq!(&*text, b"body \x00 nul\r\n");
        let data = section_data(&text);
        assert_eq!(data.clone().into_option().unwrap().as_ref(), b"body \x80 nul\r\n");
        assert!(round_trip(vec![MessageDataItem::BodyExt { section: Some(section("1")), origin: None, data }]));
        assert_eq!(section_data(b""), NString::from(Literal::try_from(&b""[..]).unwrap()));
    }

    #[test]
    fn body_structure_parameters_as_dovecot() {
        let raw = crlf(
            "Subject: params\nContent-Type: multipart/mixed; boundary=b1\n\n--b1\nContent-Type: text/html\n\n\
             <b>a</b>\n--b1\nContent-Type: text/plain; charset*=utf-8''%E2%82%AC; name*0=\"long\"; \
             name*1=\"name.txt\"; title*0*=us-ascii'en'This%20is; title*1*=%20it\n\nb\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            body_structure(&view),
            concat!(
                r#"BODYSTRUCTURE (("TEXT" "html" ("charset" "us-ascii") NIL NIL "7bit" 8 0 NIL NIL NIL NIL)"#,
                r#"("TEXT" "plain" ("charset*" "utf-8''%E2%82%AC" "name" "longname.txt""#,
                r#" "title*" "us-ascii'en'This%20is%20it" "charset" "us-ascii") NIL NIL "7bit" 3 1 NIL NIL NIL NIL)"#,
                r#" "mixed" ("boundary" "b1") NIL NIL NIL)"#,
            )
        );

        // Content-Type values as Dovecot reads them.
        let cases = [
            ("text", r#"("TEXT" "" ("charset" "us-ascii") NIL NIL "7bit" 6 1)"#),
            ("text/", r#"("" "" NIL NIL NIL "7bit" 6)"#),
            ("garbage", r#"("garbage" "" NIL NIL NIL "7bit" 6)"#),
            ("Multipart", r#"("application" "octet-stream" NIL NIL NIL "7bit" 6)"#),
            ("text/plain x", r#"("" "" NIL NIL NIL "7bit" 6)"#),
            ("Text/Plain; Charset=\"a\\\"b\"", r#"("TEXT" "Plain" ("Charset" "a\"b") NIL NIL "7bit" 6 1)"#),
            ("text/plain; a=b c; d=e", r#"("TEXT" "plain" ("a" "b" "d" "e" "charset" "us-ascii") NIL NIL "7bit" 6 1)"#),
            (
                "text/plain; a=b; a*=x; a*0=1; a*1*=%41",
                r#"("TEXT" "plain" ("a" "b" "a*0*" "x" "a*0" "1" "a*1*" "%41" "charset" "us-ascii") NIL NIL "7bit" 6 1)"#,
            ),
            (
                "text/plain; n*0=a; n*1*=%41",
                r#"("TEXT" "plain" ("n*" "''a%41" "charset" "us-ascii") NIL NIL "7bit" 6 1)"#,
            ),
            ("image/png; n*1=b; name*=x''y", r#"("image" "png" ("n*1" "b" "name*1*" "x''y") NIL NIL "7bit" 6)"#),
            ("text/plain; =x; charset=y", r#"("TEXT" "plain" ("" "x" "charset" "y") NIL NIL "7bit" 6 1)"#),
            ("text/plain; a=\"b; c=d", r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1)"#),
            ("x-foo/bar; q=1", r#"("x-foo" "bar" ("q" "1") NIL NIL "7bit" 6)"#),
            (
                "MESSAGE/rfc822",
                concat!(
                    r#"("MESSAGE" "RFC822" NIL NIL NIL "7bit" 6 (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"#,
                    r#" ("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 1)"#,
                ),
            ),
            ("multipart/mixed", r#"(("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")"#),
        ];
        for (content_type, expected) in cases {
            let raw = crlf(&format!("Content-Type: {content_type}\n\nbody\n"));
            let view = MessageView::parse(&raw);
            assert_eq!(body(&view), format!("BODY {expected}"), "{content_type}");
            assert!(round_trip(vec![MessageDataItem::BodyStructure(view.body_structure(true))]));
        }

        // First of repeated fields; Content-* only count in MIME parts.
        let raw = crlf(
            "Content-Type: text/html; charset=a\nContent-Type: image/png; name=b\n\
             Content-Transfer-Encoding: base64 x\nContent-ID: <id1>\nContent-ID: <id2>\n\
             Content-Description: d1\nContent-Disposition: attachment; filename=1\nContent-Language: en\n\
             Content-Location: http://example.org/\n folded/path\nContent-MD5: m1\n\nno trailing newline\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            body_structure(&view),
            concat!(
                r#"BODYSTRUCTURE ("TEXT" "html" ("charset" "a") "<id1>" "d1" "7bit" 21 1 "m1""#,
                r#" ("attachment" ("filename" "1")) ("en") "http://example.org/ folded/path")"#,
            )
        );
        let raw = crlf("Content-Description: d\nContent-Transfer-Encoding: base64\n\nbody\n");
        let view = MessageView::parse(&raw);
        assert_eq!(body(&view), r#"BODY ("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1)"#);
        let raw = crlf("MIME-Version: 1.0\nContent-Description: d\nContent-Transfer-Encoding: base64\n\nbody\n");
        let view = MessageView::parse(&raw);
        assert_eq!(body(&view), r#"BODY ("TEXT" "plain" ("charset" "us-ascii") NIL "d" "base64" 6 1)"#);
    }

    #[test]
    fn boundaries_as_dovecot() {
        // The longest boundary that prefixes the line wins.
        let raw = crlf(
            "Content-Type: multipart/mixed; boundary=\"ab\"\n\n--ab\n\
             Content-Type: multipart/mixed; boundary=\"abc\"\n\n--abc\nContent-Type: text/plain\n\nin abc\n\
             --ab\nContent-Type: text/plain\n\nin ab\n--ab--\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            body(&view),
            concat!(
                r#"BODY ((("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0) "mixed")"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) "mixed")"#,
            )
        );
        let raw = crlf(
            "Content-Type: multipart/mixed; boundary=\"abc\"\n\n--abc\n\
             Content-Type: multipart/mixed; boundary=\"ab\"\n\n--ab\nContent-Type: text/plain\n\nin ab\n\
             --abc\nContent-Type: text/plain\n\nin abc\n--abcX\nContent-Type: text/plain\n\nafter abcX\n--abc--\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(
            body(&view),
            concat!(
                r#"BODY ((("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) "mixed")"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0)"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0) "mixed")"#,
            )
        );
        assert_eq!(fetch(&view, "3").as_deref(), Some("after abcX"));

        // A boundary line cuts a header short.
        let raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n--b\r\n\
            Content-Type: text/plain\r\n\r\nsecond\r\n--b\r\nContent-Transfer-Encoding:\r\n\r\nx\r\n--b--";
        let view = MessageView::parse(raw);
        assert_eq!(
            body(&view),
            concat!(
                r#"BODY (("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 0)"#,
                r#"("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0) "mixed")"#,
            )
        );
        assert_eq!(fetch(&view, "1.MIME").as_deref(), Some("Content-Type: text/plain"));
        assert_eq!(fetch(&view, "1").as_deref(), Some(""));
        let raw = crlf(
            "Content-Type: multipart/mixed; boundary=o\n\n--o\nContent-Type: multipart/mixed; boundary=i\n\n\
             --i\nContent-Type: text/plain\n--o\nContent-Type: message/rfc822\n\nSubject: x\n--o\n\
             Content-Type: text/plain\n\n--o--\n",
        );
        let view = MessageView::parse(&raw);
        assert_eq!(fetch(&view, "1").as_deref(), Some("--i\r\nContent-Type: text/plain\r\n"));
        assert_eq!(fetch(&view, "1.1.MIME").as_deref(), Some("Content-Type: text/plain"));
        assert_eq!(fetch(&view, "2").as_deref(), Some("Subject: x\r\n"));
        assert_eq!(fetch(&view, "2.HEADER").as_deref(), Some("Subject: x"));
        // ... also right after the blank line.
        assert_eq!(fetch(&view, "3.MIME").as_deref(), Some("Content-Type: text/plain\r\n"));
        assert_eq!(fetch(&view, "3").as_deref(), Some(""));

        // A multipart without boundary, or whose boundary never comes.
        for raw in [
            crlf("Content-Type: multipart/mixed\n\n--x\nContent-Type: text/plain\n\na\n--x--\n"),
            crlf("Content-Type: multipart/mixed; boundary=zzz\n\n--x\nContent-Type: text/plain\n\na\n--x--\n"),
        ] {
            let view = MessageView::parse(&raw);
            assert!(
                body(&view).starts_with(r#"BODY (("TEXT" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")"#)
            );
            assert_eq!(fetch(&view, "1"), None);
            assert_eq!(fetch(&view, "TEXT").as_deref(), Some("--x\r\nContent-Type: text/plain\r\n\r\na\r\n--x--\r\n"));
        }
    }

    #[test]
    fn lf_only_messages_stay_byte_exact() {
        let raw = MIXED.as_bytes();
        let view = MessageView::parse(raw);
        assert_eq!(fetch(&view, "1.1").as_deref(), Some("Hello =C3=A9\nsecond line"));
        assert_eq!(fetch(&view, "2.1").as_deref(), Some("fwd text"));
        assert_eq!(fetch(&view, "1.MIME").as_deref(), Some("Content-Type: multipart/alternative; boundary=inner\n\n"));
        assert_eq!(fetch(&view, "2.HEADER.FIELDS (subject)").as_deref(), Some("Subject: forwarded\n\n"));
        assert_eq!([view.header_bytes(), view.text_bytes()].concat(), raw);
        assert!(body_structure(&view).contains(r#""quoted-printable" 24 1"#));
    }

    /// Every numbered part of the tree, with the part a path names.
    fn paths<'p>(part: &'p MimePart, prefix: &[u32], out: &mut Vec<(Vec<u32>, &'p MimePart)>) {
        let push = |number: u32, child: &'p MimePart, out: &mut Vec<(Vec<u32>, &'p MimePart)>| {
            let path = [prefix, &[number]].concat();
            out.push((path.clone(), child));
            below(child, &path, out);
        };
        match &part.kind {
            PartKind::Multipart(children) => {
                for (at, child) in children.iter().enumerate() {
                    push(u32::try_from(at + 1).unwrap(), child, out);
                }
            }
            _ => push(1, part, out),
        }
    }

    /// The parts under a numbered part: only a message/rfc822 has any.
    fn below<'p>(part: &'p MimePart, path: &[u32], out: &mut Vec<(Vec<u32>, &'p MimePart)>) {
        if let PartKind::Message(inner) = &part.kind {
            paths(inner, path, out);
        }
    }

    fn part_spec(path: &[u32]) -> String {
        path.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
    }

    fn check_ranges(raw: &[u8], part: &MimePart) {
        assert!(part.header.start <= part.header.end && part.header.end <= part.body.start);
        assert!(part.body.start <= part.body.end && part.body.end <= raw.len());
        match &part.kind {
            PartKind::Single => {}
            PartKind::Multipart(children) => {
                for child in children {
                    assert!(part.body.start <= child.header.start && child.body.end <= part.body.end);
                    check_ranges(raw, child);
                }
            }
            PartKind::Message(inner) => {
                assert!(inner.header.start == part.body.start && inner.body.end == part.body.end);
                check_ranges(raw, inner);
            }
        }
    }

    /// Everything a FETCH may ask of `raw` renders, stays in the message and
    /// encodes. Returns whether imap-codec could decode it all again.
    fn check_message(raw: &[u8]) -> bool {
        let view = MessageView::parse(raw);
        assert_eq!(view.section(None).as_deref(), Some(raw));
        assert_eq!([view.header_bytes(), view.text_bytes()].concat(), raw);
        check_ranges(raw, &view.root);

        let mut items = vec![
            MessageDataItem::BodyStructure(view.body_structure(true)),
            MessageDataItem::Body(view.body_structure(false)),
            MessageDataItem::Envelope(view.envelope()),
            MessageDataItem::Rfc822Header(section_data(view.header_bytes())),
            MessageDataItem::Rfc822Text(section_data(view.text_bytes())),
        ];
        let mut all = Vec::new();
        paths(&view.root, &[], &mut all);
        for (path, part) in all.iter().take(200) {
            let spec = part_spec(path);
            let bytes = view.section(Some(&section(&spec))).unwrap();
            assert_eq!(&*bytes, &raw[part.body.clone()], "BODY[{spec}]");
            let mime = view.section(Some(&section(&format!("{spec}.MIME")))).unwrap();
            assert_eq!(&*mime, &raw[part.header.clone()], "BODY[{spec}.MIME]");
            for suffix in ["HEADER", "TEXT", "HEADER.FIELDS (subject content-type)", "HEADER.FIELDS.NOT (from)"] {
                let spec = format!("{spec}.{suffix}");
                let bytes = view.section(Some(&section(&spec)));
                assert_eq!(bytes.is_some(), matches!(part.kind, PartKind::Message(_)), "BODY[{spec}]");
                if let Some(bytes) = bytes {
                    items.push(MessageDataItem::BodyExt {
                        section: Some(section(&spec)),
                        origin: None,
                        data: section_data(&bytes),
                    });
                }
            }
            items.push(MessageDataItem::BodyExt {
                section: Some(section(&spec)),
                origin: Some(1),
                data: section_data(partial(&bytes, 1, 10)),
            });
        }
        round_trip(items)
    }

    #[test]
    fn garbage_and_every_prefix_parse() {
        let raw = crlf(MIXED);
        for end in 0..=raw.len() {
            check_message(&raw[..end]);
        }
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let alphabet = b"-\r\n:; =\"()<>@,.\\ab\x00\xff\t[]*'%";
        for _ in 0..300 {
            let mut message = b"Content-Type: multipart/mixed; boundary=a\r\n\r\n--a\r\n".to_vec();
            for _ in 0..200 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                message.push(alphabet[usize::try_from(state % alphabet.len() as u64).unwrap()]);
            }
            check_message(&message);
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut raw = Vec::new();
        for level in 0..200 {
            raw.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n").as_bytes(),
            );
        }
        raw.extend_from_slice(b"\r\ninnermost\r\n");
        let view = MessageView::parse(&raw);
        let mut part = &view.root;
        let mut levels = 0;
        while let PartKind::Multipart(children) = &part.kind {
            levels += 1;
            part = &children[0];
        }
        assert_eq!(levels, MAX_NESTING);
        assert!(!check_message(&raw), "too deep for imap-codec's decoder, but it encodes");
    }

    fn eml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                eml_files(&path, out);
            } else if path.extension().is_some_and(|extension| extension == "eml") {
                out.push(path);
            }
        }
    }

    #[test]
    fn corpus_messages_render() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/mime");
        assert!(dir.is_dir(), "{} is missing", dir.display());
        let mut files = Vec::new();
        eml_files(&dir, &mut files);
        files.sort();
        assert!(files.len() >= 200, "only {} messages in {}", files.len(), dir.display());
        let mut too_deep = Vec::new();
        for file in &files {
            let raw = std::fs::read(file).unwrap();
            if !check_message(&raw) {
                too_deep.push(file.display().to_string());
            }
        }
        println!("{} messages, not decodable by imap-codec (nesting): {too_deep:?}", files.len());
    }
}
