//! Modified UTF-7 mailbox names (RFC 3501 section 5.1.3), strictly: a name
//! that is not valid modified UTF-7 is refused rather than guessed at.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a valid modified UTF-7 mailbox name")]
pub struct InvalidUtf7(pub String);

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn sextet(byte: u8) -> Option<u32> {
    ALPHABET.iter().position(|known| *known == byte).map(|position| position as u32)
}

/// Decodes a mailbox name as the client sent it.
pub fn decode(name: &[u8]) -> Result<String, InvalidUtf7> {
    let invalid = || InvalidUtf7(String::from_utf8_lossy(name).into_owned());
    let mut out = String::with_capacity(name.len());
    let mut index = 0;
    while index < name.len() {
        let byte = name[index];
        if !(0x20..=0x7e).contains(&byte) {
            return Err(invalid());
        }
        if byte != b'&' {
            out.push(char::from(byte));
            index += 1;
            continue;
        }
        let end = name[index + 1..].iter().position(|byte| *byte == b'-').ok_or_else(invalid)? + index + 1;
        let encoded = &name[index + 1..end];
        index = end + 1;
        if encoded.is_empty() {
            out.push('&');
            continue;
        }
        let (mut bits, mut count, mut units) = (0u32, 0u32, Vec::new());
        for byte in encoded {
            bits = (bits << 6) | sextet(*byte).ok_or_else(invalid)?;
            count += 6;
            if count >= 16 {
                count -= 16;
                units.push(((bits >> count) & 0xffff) as u16);
            }
        }
        // Leftover bits must be zero padding, shorter than a sextet.
        if count >= 6 || bits & ((1 << count) - 1) != 0 || units.is_empty() {
            return Err(invalid());
        }
        let decoded = String::from_utf16(&units).map_err(|_| invalid())?;
        // Printable ASCII must not be encoded (RFC 3501).
        if decoded.chars().any(|c| (' '..='~').contains(&c)) {
            return Err(invalid());
        }
        out.push_str(&decoded);
    }
    Ok(out)
}

/// Encodes a UTF-8 mailbox name for the wire.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let (mut bits, mut count) = (0u32, 0u32);
        for unit in pending.drain(..) {
            bits = (bits << 16) | u32::from(unit);
            count += 16;
            while count >= 6 {
                count -= 6;
                out.push(char::from(ALPHABET[((bits >> count) & 63) as usize]));
            }
        }
        if count > 0 {
            out.push(char::from(ALPHABET[((bits << (6 - count)) & 63) as usize]));
        }
        out.push('-');
    };
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buffer = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buffer));
        }
    }
    flush(&mut pending, &mut out);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc_3501_example_and_round_trips() {
        // The example of RFC 3501 5.1.3.
        assert_eq!(decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(), "~peter/mail/台北/日本語");
        for name in ["INBOX", "Entwürfe", "a&b", "日本語/Ünïcödé", "emoji 📬", "&"] {
            assert_eq!(decode(encode(name).as_bytes()).unwrap(), name);
        }
        assert_eq!(encode("a&b"), "a&-b");
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [&b"&"[..], b"&U,BTFw", b"&U,BTF-", b"&AGE-", b"caf\xc3\xa9", b"&!!-", b"a\x01b", b"&2D3-"] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
