//! A raw message split into documents and put back together, byte for byte.
//!
//! The leaf bodies of the message's MIME tree that are large enough become
//! content documents named by the SHA-256 of their bytes (the store keys
//! every id before it leaves the process), so an attachment forwarded or
//! copied many times is stored once. The rest (headers, boundaries, small
//! bodies) stays in the message document's skeleton, in order, so putting
//! the pieces back together gives the exact bytes that were appended:
//! whatever the MIME parser understood or not.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Bodies smaller than this stay in the skeleton.
pub const MIN_CONTENT: usize = 2048;

/// One piece of the skeleton.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Segment {
    /// Bytes kept in the message document (base64 in JSON).
    Raw(#[serde(with = "base64")] Vec<u8>),
    /// The id of a content document.
    Part(String),
}

/// A message split for storage.
#[derive(Debug, Clone)]
pub struct Split {
    /// `message/<sha256 of the raw bytes>`.
    pub message_id: String,
    pub size: u64,
    pub skeleton: Vec<Segment>,
    /// The content documents: id and bytes, in order of appearance.
    pub contents: Vec<(String, Vec<u8>)>,
}

pub fn message_id(raw: &[u8]) -> String {
    format!("message/{}", data_encoding::HEXLOWER.encode(&Sha256::digest(raw)))
}

pub fn content_id(bytes: &[u8]) -> String {
    format!("content/{}", data_encoding::HEXLOWER.encode(&Sha256::digest(bytes)))
}

/// The byte ranges of the leaf bodies worth storing apart, in order. A
/// message beyond the limits of `bitmask_mime` has none: it is kept whole.
fn leaf_ranges(raw: &[u8]) -> Vec<(usize, usize)> {
    let Some(message) = bitmask_mime::parse(raw) else { return Vec::new() };
    let mut ranges: Vec<(usize, usize)> = message
        .parts
        .iter()
        .filter(|part| !matches!(part.body, mail_parser::PartType::Multipart(_)))
        .map(|part| (part.offset_body as usize, part.offset_end as usize))
        .filter(|(start, end)| start < end && *end <= raw.len() && end - start >= MIN_CONTENT)
        .collect();
    ranges.sort_unstable();
    // A nested message's parts may sit inside an earlier range: keep the outer one.
    let mut kept: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
    for range in ranges {
        if kept.last().is_none_or(|last| range.0 >= last.1) {
            kept.push(range);
        }
    }
    kept
}

/// The most bytes one raw piece of the skeleton holds: a longer one (a huge
/// header, or the text of a message that is not taken apart) is a content of
/// its own.
pub const MAX_RAW_SEGMENT: usize = 16 * 1024;

/// The most raw bytes a skeleton holds in all: a message with more (e.g.
/// thousands of small parts) is kept as one content, so the message
/// document stays far below the store's document limit.
pub const MAX_SKELETON_RAW: usize = 256 * 1024;

pub fn split(raw: &[u8]) -> Split {
    let mut skeleton = Vec::new();
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    let mut raw_bytes = 0;
    let mut keep = |bytes: &[u8], skeleton: &mut Vec<Segment>, raw_bytes: &mut usize, inline: bool| {
        if inline {
            *raw_bytes += bytes.len();
            skeleton.push(Segment::Raw(bytes.to_vec()));
            return;
        }
        let id = content_id(bytes);
        skeleton.push(Segment::Part(id.clone()));
        if !contents.iter().any(|(known, _)| *known == id) {
            contents.push((id, bytes.to_vec()));
        }
    };
    let mut position = 0;
    for (start, end) in leaf_ranges(raw) {
        if start > position {
            let between = &raw[position..start];
            keep(between, &mut skeleton, &mut raw_bytes, between.len() <= MAX_RAW_SEGMENT);
        }
        keep(&raw[start..end], &mut skeleton, &mut raw_bytes, false);
        position = end;
    }
    if position < raw.len() {
        let rest = &raw[position..];
        keep(rest, &mut skeleton, &mut raw_bytes, rest.len() <= MAX_RAW_SEGMENT);
    }
    if raw_bytes > MAX_SKELETON_RAW {
        let id = content_id(raw);
        return Split {
            message_id: message_id(raw),
            size: raw.len() as u64,
            skeleton: vec![Segment::Part(id.clone())],
            contents: vec![(id, raw.to_vec())],
        };
    }
    Split { message_id: message_id(raw), size: raw.len() as u64, skeleton, contents }
}

/// The content ids a skeleton refers to (each once).
pub fn parts(skeleton: &[Segment]) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for segment in skeleton {
        if let Segment::Part(id) = segment
            && !parts.contains(id)
        {
            parts.push(id.clone());
        }
    }
    parts
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("content {0} of a message is missing")]
pub struct MissingContent(pub String);

/// Puts a message back together from its skeleton and its contents.
pub fn assemble<'c>(
    skeleton: &[Segment],
    size: u64,
    content: impl Fn(&str) -> Option<&'c [u8]>,
) -> Result<Vec<u8>, MissingContent> {
    let mut raw = Vec::with_capacity(size as usize);
    for segment in skeleton {
        match segment {
            Segment::Raw(bytes) => raw.extend_from_slice(bytes),
            Segment::Part(id) => raw.extend_from_slice(content(id).ok_or_else(|| MissingContent(id.clone()))?),
        }
    }
    Ok(raw)
}

mod base64 {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&data_encoding::BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        data_encoding::BASE64.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn round_trip(raw: &[u8]) -> Split {
        let split = split(raw);
        let contents = split.contents.clone();
        let back = assemble(&split.skeleton, split.size, |id| {
            contents.iter().find(|(known, _)| known == id).map(|(_, bytes)| bytes.as_slice())
        })
        .unwrap();
        assert!(back == raw, "not byte-identical");
        split
    }

    #[test]
    fn no_skeleton_holds_much_raw_text() {
        // A message that is not taken apart (no MIME structure), a huge
        // header, and thousands of small parts: the skeleton stays small.
        let plain = format!("Subject: long\r\n\r\n{}", "a line of text\r\n".repeat(100_000));
        let header = format!("X-Long: {}\r\nSubject: x\r\n\r\nbody\r\n", "h".repeat(200_000));
        let mut many = String::from("Content-Type: multipart/mixed; boundary=b\r\n\r\n");
        for n in 0..400 {
            many.push_str(&format!("--b\r\nContent-Type: text/plain\r\nX-N: {n}\r\n\r\n{}\r\n", "x".repeat(1000)));
        }
        many.push_str("--b--\r\n");
        for raw in [plain, header, many] {
            let split = round_trip(raw.as_bytes());
            let raw_bytes: usize = split
                .skeleton
                .iter()
                .map(|segment| match segment {
                    Segment::Raw(bytes) => bytes.len(),
                    Segment::Part(_) => 0,
                })
                .sum();
            assert!(raw_bytes <= MAX_SKELETON_RAW, "{raw_bytes} raw bytes in the skeleton");
            assert!(
                split
                    .skeleton
                    .iter()
                    .all(|segment| !matches!(segment, Segment::Raw(bytes) if bytes.len() > MAX_RAW_SEGMENT))
            );
        }
    }

    #[test]
    fn attachments_are_stored_apart_and_deduplicated() {
        let attachment = "QUJD".repeat(2000);
        let raw = format!(
            "From: a@example.org\r\nSubject: two copies\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nshort\r\n\
             --b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n\
             --b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n\
             --b--\r\n"
        );
        let split = round_trip(raw.as_bytes());
        assert_eq!(split.contents.len(), 1, "the same attachment twice is one content");
        assert_eq!(parts(&split.skeleton).len(), 1);
        assert_eq!(split.skeleton.iter().filter(|segment| matches!(segment, Segment::Part(_))).count(), 2);
        // Another message with the same attachment refers to the same content.
        let other = raw.replace("two copies", "forwarded");
        assert_eq!(super::split(other.as_bytes()).contents[0].0, split.contents[0].0);
    }

    #[test]
    fn every_corpus_message_comes_back_byte_identical() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/mime");
        let mut files = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|extension| extension == "eml") {
                    files.push(path);
                }
            }
        }
        assert!(files.len() >= 200, "the MIME corpus is missing");
        for file in files {
            round_trip(&std::fs::read(&file).unwrap());
        }
        round_trip(b"");
        round_trip(b"\x00\xff not mail at all");
    }

    #[test]
    fn deeply_nested_messages_are_kept_whole_without_parsing() {
        // 50,000 nested message/rfc822 parts overflow mail-parser's recursion.
        let mut raw = b"Content-Type: message/rfc822\r\n\r\n".repeat(50_000);
        raw.extend_from_slice(&b"Subject: deep\r\n\r\nbody\r\n".repeat(200));
        assert!(bitmask_mime::check(&raw).is_err());
        let split = round_trip(&raw);
        // Kept whole: one content of every byte, not taken apart.
        assert_eq!(split.contents.len(), 1);
        assert_eq!(split.contents[0].1, raw);
        // Whatever the spelling of the field (mail-parser reads them all),
        // on a Tokio worker's 2 MiB stack.
        for field in ["Content-Type :", "content-type:", "CONTENT-TYPE\t:"] {
            let mut raw = format!("{field} message/rfc822\r\n\r\n").repeat(30_000).into_bytes();
            raw.extend_from_slice(&b"Subject: deep\r\n\r\nbody\r\n".repeat(200));
            let work = move || {
                let split = round_trip(&raw);
                assert_eq!(split.contents.len(), 1, "{field:?}: kept whole");
                assert!(matches!(crate::incoming::process(raw.clone()), crate::incoming::Step::File(_)));
            };
            std::thread::Builder::new().stack_size(2 << 20).spawn(work).unwrap().join().unwrap();
        }
    }

    #[test]
    fn a_skeleton_survives_json() {
        let split = split(b"Subject: x\r\n\r\nbody\r\n");
        let json = serde_json::to_string(&split.skeleton).unwrap();
        let back: Vec<Segment> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, split.skeleton);
    }
}
