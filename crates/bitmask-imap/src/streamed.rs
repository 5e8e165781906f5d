//! A FETCH response whose message body is sent from the store as it is
//! read, never held whole: `BODY[]`, `BODY.PEEK[]`, `RFC822` (and their
//! partial forms) of a big message.
//!
//! The session decides which response is streamed and gives its other items
//! ([`StreamedBody`]); the connection writes [`StreamedBody::head`], the
//! bytes in order (each chunk through [`clean`]), then [`TAIL`]. The body is
//! the last item of the response, which RFC 3501 allows (items come in any
//! order), so the head is the encoded response without its closing
//! parenthesis, followed by the item's name and the literal's length.

use std::num::NonZeroU32;
use std::ops::Range;
use std::sync::Arc;

use crate::imap_types::core::Vec1;
use crate::imap_types::fetch::MessageDataItem;
use crate::imap_types::response::{Data, Response};
use imap_codec::ResponseCodec;
use imap_codec::encode::Encoder as _;

/// What ends a streamed response, after the literal's bytes.
pub const TAIL: &[u8] = b")\r\n";

/// Which item carries the streamed body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamedItem {
    /// `BODY[]` (from `BODY[]` or `BODY.PEEK[]`), with the origin of a
    /// partial fetch.
    Body { origin: Option<u32> },
    /// `RFC822`.
    Rfc822,
}

/// One FETCH response whose body the connection sends from the store.
#[derive(Debug, Clone)]
pub struct StreamedBody {
    pub seq: NonZeroU32,
    /// The response's other items, none of them a literal.
    pub items: Vec<MessageDataItem<'static>>,
    pub item: StreamedItem,
    /// The message (its id in the mail model).
    pub message: Arc<str>,
    /// The bytes of the message to send; clip its end to the message's size.
    pub range: Range<u64>,
}

impl StreamedBody {
    /// What is written before the literal's `length` bytes.
    pub fn head(&self, length: u64) -> Vec<u8> {
        let mut head = match Vec1::try_from(self.items.clone()) {
            Ok(items) => {
                let mut encoded =
                    ResponseCodec::default().encode(&Response::Data(Data::Fetch { seq: self.seq, items })).dump();
                // "* 1 FETCH (UID 5)\r\n": the body goes before ")\r\n".
                encoded.truncate(encoded.len().saturating_sub(TAIL.len()));
                encoded.push(b' ');
                encoded
            }
            Err(_) => format!("* {} FETCH (", self.seq).into_bytes(),
        };
        match self.item {
            StreamedItem::Body { origin: None } => head.extend_from_slice(b"BODY[]"),
            StreamedItem::Body { origin: Some(origin) } => {
                head.extend_from_slice(format!("BODY[]<{origin}>").as_bytes())
            }
            StreamedItem::Rfc822 => head.extend_from_slice(b"RFC822"),
        }
        head.extend_from_slice(format!(" {{{length}}}\r\n").as_bytes());
        head
    }
}

/// Makes message bytes fit for a literal as `section_data` does: a NUL
/// octet (which a literal cannot carry) is sent as 0x80.
pub fn clean(chunk: &mut [u8]) {
    let mut from = 0;
    while let Some(at) = chunk.get(from..).and_then(|rest| memchr::memchr(0, rest)) {
        if let Some(byte) = chunk.get_mut(from + at) {
            *byte = 0x80;
        }
        from += at + 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::imap_types::flag::FlagFetch;

    use super::*;

    fn streamed(items: Vec<MessageDataItem<'static>>, item: StreamedItem) -> StreamedBody {
        StreamedBody { seq: NonZeroU32::new(7).unwrap(), items, item, message: Arc::from("message/x"), range: 0..10 }
    }

    #[test]
    fn the_head_is_the_response_up_to_the_literal() {
        let uid = MessageDataItem::Uid(NonZeroU32::new(42).unwrap());
        let flags = MessageDataItem::Flags(vec![FlagFetch::Flag(crate::imap_types::flag::Flag::Seen)]);
        let cases = [
            (
                streamed(vec![uid.clone(), flags], StreamedItem::Body { origin: None }),
                "* 7 FETCH (UID 42 FLAGS (\\Seen) BODY[] {10}\r\n",
            ),
            (streamed(vec![uid], StreamedItem::Body { origin: Some(5) }), "* 7 FETCH (UID 42 BODY[]<5> {10}\r\n"),
            (streamed(Vec::new(), StreamedItem::Rfc822), "* 7 FETCH (RFC822 {10}\r\n"),
        ];
        for (body, expected) in cases {
            assert_eq!(String::from_utf8(body.head(10)).unwrap(), expected);
        }
    }

    #[test]
    fn a_nul_is_sent_as_0x80() {
        let mut chunk = b"a\0b\0\0c".to_vec();
        clean(&mut chunk);
        assert_eq!(chunk, b"a\x80b\x80\x80c");
    }
}
