//! Small helpers for message text, shared by outgoing PGP/MIME here and
//! incoming mail in `bitmask-mail`.

/// Every bare LF becomes CRLF (a CR not followed by LF stays: it is encoded
/// or cleaned where it matters).
pub fn crlf_line_endings(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut previous = 0u8;
    for &byte in raw {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_feeds_get_a_carriage_return() {
        assert_eq!(crlf_line_endings(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\rd\r\n");
        assert_eq!(crlf_line_endings(b""), b"");
    }
}
