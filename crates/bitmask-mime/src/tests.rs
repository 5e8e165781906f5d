#![allow(clippy::unwrap_used, clippy::disallowed_methods)]
use super::*;

/// `levels` nested message/rfc822 parts whose Content-Type field is spelled
/// `field`, then a small message.
pub fn nesting_bomb(field: &str, levels: usize) -> Vec<u8> {
    let mut raw = format!("{field} message/rfc822\r\n\r\n").repeat(levels).into_bytes();
    raw.extend_from_slice(b"Subject: deep\r\n\r\nbody\r\n");
    raw
}

/// `levels` nested multipart/mixed parts, each with its own boundary.
fn multipart_bomb(levels: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    for level in 0..levels {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\nx\r\n");
    raw
}

/// `inner` as the base64 body of a message/rfc822 part (mail-parser decodes
/// and parses it).
fn base64_wrapped(inner: &[u8]) -> Vec<u8> {
    let mut raw =
        b"Subject: wrapped\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    raw.extend_from_slice(data_encoding::BASE64_MIME.encode(inner).as_bytes());
    raw
}

/// `inner` as a quoted-printable body with every `C` written `=43`.
fn quoted_printable_wrapped(inner: &[u8]) -> Vec<u8> {
    let mut raw =
        b"Subject: wrapped\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            .to_vec();
    for &byte in inner {
        match byte {
            b'C' | b'c' | b'=' => raw.extend_from_slice(format!("={byte:02X}").as_bytes()),
            _ => raw.push(byte),
        }
    }
    raw
}

/// Runs `work` on a thread with a 2 MiB stack, a Tokio worker's: a stack
/// overflow there aborts the test binary (SIGABRT), which fails the run.
fn on_small_stack(work: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(2 << 20).spawn(work).unwrap().join().unwrap();
}

/// What callers do with a parsed message: own it, walk every part of every
/// nested message.
fn use_fully(message: Message<'_>) -> usize {
    fn walk(message: &Message<'_>) -> usize {
        message
            .parts
            .iter()
            .map(|part| if let PartType::Message(nested) = &part.body { 1 + walk(nested) } else { 1 })
            .sum()
    }
    let owned = message.into_owned();
    walk(&owned) + owned.attachment_count()
}

#[test]
fn nesting_bombs_in_every_spelling_are_refused_before_parsing() {
    let spellings = [
        "Content-Type:",
        "Content-Type :",
        "content-type:",
        "CONTENT-TYPE\t:",
        "Con tent-Type:",
        " Content-Type:",
        ":Content-Type:",
    ];
    let mut bombs: Vec<(String, Vec<u8>)> =
        spellings.iter().map(|field| (format!("message/rfc822 as {field:?}"), nesting_bomb(field, 30_000))).collect();
    bombs.push(("multipart".into(), multipart_bomb(30_000)));
    bombs.push(("LF only".into(), "Content-Type : message/rfc822\n\n".repeat(30_000).into_bytes()));
    for (name, raw) in bombs {
        on_small_stack(move || {
            assert_eq!(check(&raw), Err(Refusal::TooManyParts), "{name}");
            assert!(parse(&raw).is_none(), "{name}");
            assert!(parse_with(&MessageParser::new().with_mime_headers(), &raw).is_none(), "{name}");
            // Only the header section: safe and allowed.
            assert!(parse_headers(&raw).is_some(), "{name}");
        });
    }
}

#[test]
fn encoded_nesting_bombs_are_refused_before_parsing() {
    // mail-parser decodes these bodies and parses them as messages: the
    // Content-Type fields inside are invisible in the raw bytes.
    let bomb = nesting_bomb("Content-Type :", 30_000);
    let bombs = [
        ("base64", base64_wrapped(&bomb)),
        ("quoted-printable", quoted_printable_wrapped(&bomb)),
        ("base64 in quoted-printable", quoted_printable_wrapped(&base64_wrapped(&bomb))),
        ("base64 in base64 in base64", base64_wrapped(&base64_wrapped(&base64_wrapped(&bomb)))),
        ("base64 with a stray dash", {
            let mut raw = base64_wrapped(&bomb);
            raw.insert(raw.len() - 100, b'-');
            raw
        }),
    ];
    for (name, raw) in bombs {
        assert_eq!(count_fields(&raw, b"content-type", usize::MAX), 1, "{name}: hidden from a raw count");
        on_small_stack(move || {
            assert_eq!(check(&raw), Err(Refusal::TooManyParts), "{name}");
            assert!(parse(&raw).is_none(), "{name}");
        });
    }
}

#[test]
fn what_passes_the_gate_is_safe_to_parse_and_walk_on_a_small_stack() {
    let nested = nesting_bomb("Content-Type:", MAX_PARTS - 2);
    let cases = [
        ("nested at the limit", nested.clone()),
        ("multipart at the limit", multipart_bomb(MAX_PARTS - 1)),
        (
            "three encoded layers",
            base64_wrapped(&quoted_printable_wrapped(&base64_wrapped(&nesting_bomb("Content-Type:", 100)))),
        ),
    ];
    for (name, raw) in cases {
        on_small_stack(move || {
            assert_eq!(check(&raw), Ok(()), "{name}");
            let message = parse(&raw).unwrap();
            assert!(use_fully(message) > 1, "{name}");
        });
    }
    assert_eq!(check(&nesting_bomb("Content-Type:", MAX_PARTS + 1)), Err(Refusal::TooManyParts));
}

#[test]
fn field_names_are_counted_as_mail_parser_reads_them() {
    let table: &[(&[u8], usize)] = &[
        (b"Content-Type: text/plain\r\n", 1),
        (b"content-type : text/plain\r\n", 1),
        (b"C o n t e n t - T y p e\t:x\r\n", 1),
        (b"X-Content-Type: x\r\n", 1), // an upper bound: counted anywhere
        (b"Content-Type\r\n: x\r\n", 0),
        (b"Content-Types: x\r\n", 0),
        (b"Content-Type x\r\n", 0),
        (b"Content-TypeContent-Type: x\r\n", 1),
        (b"cContent-Type:Content-Type:", 2),
    ];
    for (raw, expected) in table {
        assert_eq!(count_fields(raw, b"content-type", usize::MAX), *expected, "{:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(count_fields(b"Content-Transfer-Encoding: base64\r\n", b"content-transfer-encoding", 9), 1);
    assert_eq!(count_fields(b"content-transfer-encontent-transfer-encoding:", b"content-transfer-encoding", 9), 1);
}

#[test]
fn decoders_match_mail_parser() {
    let text = b"Content-Type: message/rfc822\r\n\r\nhello = world\r\n";
    let encoded = data_encoding::BASE64_MIME.encode(text);
    assert_eq!(decode_base64(encoded.as_bytes()), text);
    let parsed = mail_parser::decoders::base64::base64_decode(encoded.as_bytes()).unwrap();
    assert_eq!(decode_base64(encoded.as_bytes()), parsed);
    assert_eq!(decode_quoted_printable(b"=43ontent=\r\n-Type: a=3Db =\r\n"), b"Content-Type: a=b ");
}

#[test]
fn a_huge_header_section_is_refused_but_a_huge_body_is_not() {
    let mut raw = b"Subject: big\r\n".to_vec();
    raw.extend_from_slice(&b"X-Filler: 0123456789012345678901234567890123456789\r\n".repeat(MAX_HEADER_BYTES / 50 + 1));
    raw.extend_from_slice(b"\r\nbody\r\n");
    assert_eq!(check(&raw), Err(Refusal::HeaderTooLarge));
    assert!(parse_headers(&raw).is_none());
    let mut raw = b"Subject: big\r\n \r\n".to_vec();
    raw.extend_from_slice(&b"0123456789\r\n".repeat(MAX_HEADER_BYTES / 10));
    assert_eq!(header_section_len(&raw), 17);
    assert_eq!(check(&raw), Ok(()));
}

#[test]
fn every_corpus_message_passes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/mime");
    let mut stack = vec![dir];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|extension| extension == "eml") {
                seen += 1;
                assert_eq!(check(&std::fs::read(&path).unwrap()), Ok(()), "{}", path.display());
            }
        }
    }
    assert!(seen >= 200, "the MIME corpus is missing");
}
