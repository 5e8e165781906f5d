//! What a message submission agent adds to a submitted message (RFC 6409
//! section 8): a `Date:` and a `Message-ID:` when the client left them out.
//! The Message-ID matters beyond form: it is how the provider recognizes a
//! message relayed twice (a retry after a crash) and delivers it once.

/// The header section of a message: up to (not including) the empty line.
fn header_section(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|at| at + 2)
        .or_else(|| raw.windows(2).position(|window| window == b"\n\n").map(|at| at + 1))
        .unwrap_or(raw.len());
    raw.get(..end).unwrap_or(raw)
}

/// Whether the header section has a field of this name (any case).
fn has_field(header: &[u8], name: &str) -> bool {
    header.split(|&byte| byte == b'\n').any(|line| {
        line.len() > name.len()
            && line.get(..name.len()).is_some_and(|start| start.eq_ignore_ascii_case(name.as_bytes()))
            && line.get(name.len()) == Some(&b':')
    })
}

/// The message with `Date: date` and `Message-ID: message_id` put in front
/// where it has no such field; the rest byte for byte (and not copied when
/// nothing is missing, as with every ordinary mail client). `date` is an
/// RFC 5322 date-time, `message_id` the angle-bracketed id.
pub fn complete(raw: Vec<u8>, date: &str, message_id: &str) -> Vec<u8> {
    let header = header_section(&raw);
    let mut added = String::new();
    if !has_field(header, "Date") {
        added.push_str(&format!("Date: {date}\r\n"));
    }
    if !has_field(header, "Message-ID") {
        added.push_str(&format!("Message-ID: {message_id}\r\n"));
    }
    if added.is_empty() {
        return raw;
    }
    let mut out = Vec::with_capacity(added.len() + raw.len());
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(&raw);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Thu, 26 Nov 2026 03:30:00 +0000";
    const ID: &str = "<abc@example.org>";

    #[test]
    fn missing_fields_are_added_in_front() {
        let out = complete(b"Subject: hi\r\n\r\nbody\r\n".to_vec(), DATE, ID);
        assert_eq!(out, format!("Date: {DATE}\r\nMessage-ID: {ID}\r\nSubject: hi\r\n\r\nbody\r\n").as_bytes());
    }

    #[test]
    fn present_fields_are_kept_in_any_case() {
        let raw = b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\nmessage-id: <x@y>\r\n\r\nbody\r\n";
        assert_eq!(complete(raw.to_vec(), DATE, ID), raw);
    }

    #[test]
    fn only_the_header_section_counts() {
        // A body line that looks like a field does not count, nor does a
        // field whose name merely starts the same way.
        let raw = b"Subject: x\r\nMessage-IDs: no\r\n\r\nMessage-ID: <in@body>\r\nDate: in the body\r\n";
        let out = complete(raw.to_vec(), DATE, ID);
        assert!(out.starts_with(format!("Date: {DATE}\r\nMessage-ID: {ID}\r\nSubject: x").as_bytes()));
        // Bare LF messages too.
        let out = complete(b"Date: now\nSubject: x\n\nbody\n".to_vec(), DATE, ID);
        assert_eq!(out, format!("Message-ID: {ID}\r\nDate: now\nSubject: x\n\nbody\n").as_bytes());
    }
}
