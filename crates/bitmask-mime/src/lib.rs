//! The one gate in front of mail-parser. Sans-I/O and without recursion.
//!
//! mail-parser walks nested `message/rfc822` parts with a loop, but what it
//! builds is as deep as the message: turning a nested message into an owned
//! one (which it does itself for an encoded `message/rfc822` part), and
//! every walk over the parts that follows nested messages, recurses once
//! per level. Some thousands of levels, a few hundred kilobytes of mail,
//! overflow a 2 MiB stack (a Tokio worker's), and a stack overflow aborts
//! the process. So no code here calls mail-parser on a message that has not
//! passed [`check`]; [`parse`], [`parse_with`] and [`parse_headers`] do both.
//!
//! The limits:
//! - [`MAX_PARTS`] `Content-Type` fields in all, counted the way mail-parser
//!   recognizes a field name: any case, ASCII whitespace anywhere in the
//!   name or before the colon (`Content-Type :`, `content - type:`), at any
//!   position in the bytes (not only at a line start), so the count is an
//!   upper bound of the parts mail-parser can make. Each level of nesting
//!   needs one (a `multipart/digest` part's children are messages without
//!   one, but each digest needs one), so this also bounds the depth.
//! - The bodies of the parts mail-parser would decode and parse as a nested
//!   message (a `message/*` part, or one without a Content-Type, with a
//!   `Content-Transfer-Encoding`) are decoded (base64 and quoted-printable,
//!   leniently) and counted too, down to [`MAX_ENCODED_LAYERS`] layers,
//!   mail-parser's own limit; the budget of [`MAX_PARTS`] is shared by all.
//! - [`MAX_HEADER_BYTES`] for the message's header section.
//!
//! A message beyond a limit is not an error of the mail system: callers keep
//! it and serve it as opaque bytes (stored whole, fetched byte for byte,
//! never taken apart), they do not drop it.
//!
//! ```
//! let bomb = "Content-Type : message/rfc822\r\n\r\n".repeat(30_000);
//! assert_eq!(bitmask_mime::check(bomb.as_bytes()), Err(bitmask_mime::Refusal::TooManyParts));
//! assert!(bitmask_mime::parse(bomb.as_bytes()).is_none());
//! assert!(bitmask_mime::parse(b"Subject: hi\r\n\r\nhello\r\n").is_some());
//! ```

use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders as _, PartType};

/// `Content-Type` fields a message may have, in all its layers.
pub const MAX_PARTS: usize = 512;
/// Bytes of the message's header section (up to the first empty line).
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Layers of encoded `message/*` parts mail-parser decodes and parses
/// (its `MAX_NESTED_ENCODED`); deeper ones it leaves as bytes.
pub const MAX_ENCODED_LAYERS: usize = 3;

/// Why a message is not given to mail-parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the message has more than {MAX_PARTS} MIME parts")]
    TooManyParts,
    #[error("the message's header section is larger than {MAX_HEADER_BYTES} bytes")]
    HeaderTooLarge,
}

/// Whether mail-parser may take `raw` apart.
pub fn check(raw: &[u8]) -> Result<(), Refusal> {
    if header_section_len(raw) > MAX_HEADER_BYTES {
        return Err(Refusal::HeaderTooLarge);
    }
    let mut budget = MAX_PARTS;
    check_layer(raw, MAX_ENCODED_LAYERS, &mut budget)
}

/// [`check`], then mail-parser's default parser.
pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    parse_with(&MessageParser::default(), raw)
}

/// [`check`], then `parser`.
#[allow(clippy::disallowed_methods)] // the gate itself
pub fn parse_with<'x>(parser: &MessageParser, raw: &'x [u8]) -> Option<Message<'x>> {
    check(raw).ok()?;
    parser.parse(raw)
}

/// The header section only (mail-parser reads no body, so nesting does not
/// matter), within [`MAX_HEADER_BYTES`].
pub fn parse_headers(raw: &[u8]) -> Option<Message<'_>> {
    parse_headers_with(&MessageParser::default(), raw)
}

/// [`parse_headers`] with `parser`.
#[allow(clippy::disallowed_methods)] // the gate itself
pub fn parse_headers_with<'x>(parser: &MessageParser, raw: &'x [u8]) -> Option<Message<'x>> {
    if header_section_len(raw) > MAX_HEADER_BYTES {
        return None;
    }
    parser.parse_headers(raw)
}

/// Where the header section ends: after the first line that is empty or
/// only whitespace (as mail-parser reads it), or the end.
pub fn header_section_len(raw: &[u8]) -> usize {
    let mut line_start = 0;
    while line_start < raw.len() {
        let line_end = raw[line_start..].iter().position(|&byte| byte == b'\n').map_or(raw.len(), |n| line_start + n);
        if raw[line_start..line_end].iter().all(u8::is_ascii_whitespace) && line_end < raw.len() {
            return line_end + 1;
        }
        line_start = line_end + 1;
    }
    raw.len()
}

fn check_layer(raw: &[u8], layers_left: usize, budget: &mut usize) -> Result<(), Refusal> {
    let parts = count_fields(raw, b"content-type", *budget + 1);
    if parts > *budget {
        return Err(Refusal::TooManyParts);
    }
    *budget -= parts;
    if layers_left == 0 || count_fields(raw, b"content-transfer-encoding", 1) == 0 {
        return Ok(());
    }
    for body in encoded_message_bodies(raw) {
        for decoded in [decode_base64(body), decode_quoted_printable(body)] {
            check_layer(&decoded, layers_left - 1, budget)?;
        }
    }
    Ok(())
}

/// The bodies of the parts mail-parser would decode and parse as a nested
/// message: found by mail-parser itself with transfer encodings ignored
/// (so it decodes and nests nothing), walked without recursion. A superset:
/// a part without a Content-Type is taken whatever its parent.
#[allow(clippy::disallowed_methods)] // `raw` passed the count of this layer
fn encoded_message_bodies(raw: &[u8]) -> Vec<&[u8]> {
    let parser = MessageParser::new()
        .header_content_type(HeaderName::ContentType)
        .header_address(HeaderName::ContentTransferEncoding);
    let Some(message) = parser.parse(raw) else { return Vec::new() };
    let mut ranges = Vec::new();
    let mut messages = vec![&message];
    while let Some(message) = messages.pop() {
        for part in &message.parts {
            let encoded = part.headers.iter().any(|header| header.name == HeaderName::ContentTransferEncoding);
            let message_type =
                part.content_type().is_none_or(|content_type| content_type.ctype().eq_ignore_ascii_case("message"));
            if encoded && message_type {
                ranges.push((part.offset_body as usize, part.offset_end as usize));
            }
            if let PartType::Message(nested) = &part.body {
                messages.push(nested);
            }
        }
    }
    drop(message);
    ranges.into_iter().filter_map(|(start, end)| raw.get(start..end.max(start))).collect()
}

/// How often `name` (lower case, no whitespace) occurs as a field name the
/// way mail-parser reads one: its characters in any case with any ASCII
/// whitespace but a line break between them, then a colon. Counts up to
/// `stop`. Linear (KMP over the bytes with the whitespace skipped).
fn count_fields(raw: &[u8], name: &[u8], stop: usize) -> usize {
    let mut fallback = vec![0usize; name.len()];
    let mut k = 0;
    for i in 1..name.len() {
        while k > 0 && name[i] != name[k] {
            k = fallback[k - 1];
        }
        if name[i] == name[k] {
            k += 1;
        }
        fallback[i] = k;
    }
    let mut count = 0;
    let mut matched = 0;
    for &byte in raw {
        if byte == b'\n' {
            matched = 0;
            continue;
        }
        if byte.is_ascii_whitespace() {
            continue;
        }
        if matched == name.len() {
            if byte == b':' {
                count += 1;
                if count >= stop {
                    return count;
                }
                matched = 0;
                continue;
            }
            matched = fallback[matched - 1];
        }
        let byte = byte.to_ascii_lowercase();
        while matched > 0 && name[matched] != byte {
            matched = fallback[matched - 1];
        }
        if name[matched] == byte {
            matched += 1;
        }
    }
    count
}

/// Base64 as mail-parser decodes a part: whitespace and other characters
/// skipped (where it gives up instead, it parses the bytes undecoded, which
/// the raw count covers), `=` ends a group.
fn decode_base64(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 4 * 3);
    let (mut chunk, mut symbols) = (0u32, 0u8);
    for &byte in body {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                let partial = chunk << (6 * (4 - u32::from(symbols)));
                match symbols {
                    1 | 2 => out.push((partial >> 16) as u8),
                    3 => out.extend_from_slice(&[(partial >> 16) as u8, (partial >> 8) as u8]),
                    _ => {}
                }
                (chunk, symbols) = (0, 0);
                continue;
            }
            _ => continue,
        };
        chunk = (chunk << 6) | u32::from(value);
        symbols += 1;
        if symbols == 4 {
            out.extend_from_slice(&chunk.to_be_bytes()[1..]);
            (chunk, symbols) = (0, 0);
        }
    }
    out
}

/// Quoted-printable as mail-parser decodes a part: `=XX` a byte, `=` and
/// whitespace up to a line break nothing, carriage returns dropped.
fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let hex = |byte: u8| (byte as char).to_digit(16);
    let mut out = Vec::with_capacity(body.len());
    let mut index = 0;
    while let Some(&byte) = body.get(index) {
        index += 1;
        match byte {
            b'\r' => {}
            b'=' => {
                if let (Some(high), Some(low)) =
                    (body.get(index).copied().and_then(hex), body.get(index + 1).copied().and_then(hex))
                {
                    out.push((high * 16 + low) as u8);
                    index += 2;
                    continue;
                }
                let mut ahead = index;
                while body.get(ahead).is_some_and(|&next| next != b'\n' && next.is_ascii_whitespace()) {
                    ahead += 1;
                }
                if body.get(ahead) == Some(&b'\n') {
                    index = ahead + 1;
                } else {
                    out.push(b'=');
                }
            }
            _ => out.push(byte),
        }
    }
    out
}

#[cfg(test)]
mod tests;
