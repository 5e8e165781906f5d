//! A message's bytes read piece by piece, for sending a big message without
//! holding it whole (an IMAP `FETCH BODY[]` of 40 MiB).
//!
//! A message is its skeleton (raw stretches kept in the message document)
//! and its contents (inline, or store blobs of sealed 64 KiB chunks). A
//! [`RawBody`] lists those pieces in order; a [`RawReader`] gives the bytes
//! of a range of them a chunk at a time, reading blobs from the store as a
//! stream (`GetBlob` with offset and length), so no more than one reply of
//! the store is held. A message the raw cache holds is one piece.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::TracedChannel;

use crate::model::{BlobRef, ContentDoc, MailModel, MessageDoc, parse};
use crate::split::Segment;
use crate::types::MailError;

/// Bytes a reader gives at most at once from a piece held in memory.
const MEMORY_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
enum Piece {
    Bytes(Arc<[u8]>),
    /// All of a message the raw cache holds.
    Cached(Arc<Vec<u8>>),
    Blob(BlobRef),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes.len() as u64,
            Self::Cached(bytes) => bytes.len() as u64,
            Self::Blob(blob) => blob.size,
        }
    }
}

/// Where each piece of one message's bytes is.
#[derive(Debug, Clone)]
pub struct RawBody {
    size: u64,
    pieces: Vec<Piece>,
}

impl RawBody {
    /// The message's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A reader of `range` (clipped to the message).
    pub fn reader(&self, model: &MailModel, range: Range<u64>) -> RawReader {
        let end = range.end.min(self.size);
        let mut start = range.start.min(end);
        let mut wanted = VecDeque::new();
        let mut at = 0u64;
        for piece in &self.pieces {
            let piece_end = at + piece.len();
            if piece_end > start && at < end {
                let from = start.saturating_sub(at);
                let to = end.min(piece_end) - at;
                wanted.push_back((piece.clone(), from..to));
                start = at + to;
            }
            at = piece_end;
        }
        RawReader { store: model.client(), wanted, blob: None }
    }
}

/// Gives the bytes of a range of a message a chunk at a time.
pub struct RawReader {
    store: StoreClient<TracedChannel>,
    wanted: VecDeque<(Piece, Range<u64>)>,
    /// The blob being read: its stream, the bytes still to come from it,
    /// and its id.
    blob: Option<(tonic::Streaming<pb::BlobChunk>, u64, String)>,
}

impl std::fmt::Debug for RawReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawReader").field("pieces", &self.wanted.len()).finish_non_exhaustive()
    }
}

impl RawReader {
    /// The next bytes, in order; None once the range is given whole. A blob
    /// that ends early or runs long is `Damaged`.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, MailError> {
        loop {
            if let Some((stream, expected, id)) = &mut self.blob {
                match stream.message().await? {
                    Some(chunk) if chunk.data.len() as u64 <= *expected => {
                        *expected -= chunk.data.len() as u64;
                        return Ok(Some(chunk.data));
                    }
                    Some(_) => return Err(MailError::Damaged(format!("blob {id} is longer than its reference"))),
                    None if *expected == 0 => self.blob = None,
                    None => return Err(MailError::Damaged(format!("blob {id} ends {expected} bytes early"))),
                }
                continue;
            }
            let Some((piece, range)) = self.wanted.pop_front() else { return Ok(None) };
            if range.is_empty() {
                continue;
            }
            let memory = |bytes: &[u8]| {
                let start = usize::try_from(range.start).unwrap_or(usize::MAX);
                let end = usize::try_from(range.end).unwrap_or(usize::MAX).min(start.saturating_add(MEMORY_CHUNK));
                bytes.get(start..end).map(<[u8]>::to_vec)
            };
            let chunk = match &piece {
                Piece::Bytes(bytes) => memory(bytes),
                Piece::Cached(bytes) => memory(bytes),
                Piece::Blob(blob) => {
                    let request = pb::GetBlobRequest {
                        id: blob.id.clone(),
                        offset: range.start,
                        length: range.end - range.start,
                    };
                    let stream = self.store.get_blob(request).await?.into_inner();
                    self.blob = Some((stream, range.end - range.start, blob.id.clone()));
                    continue;
                }
            };
            let Some(chunk) = chunk else {
                return Err(MailError::Damaged("a piece of a message is shorter than its skeleton says".into()));
            };
            let rest = range.start + chunk.len() as u64..range.end;
            if !rest.is_empty() {
                self.wanted.push_front((piece, rest));
            }
            return Ok(Some(chunk));
        }
    }
}

impl MailModel {
    /// Where a message's bytes are, to read them piece by piece (None: the
    /// message is gone).
    pub async fn raw_body(&self, message_id: &str) -> Result<Option<RawBody>, MailError> {
        if let Some(raw) = self.cached_raw(message_id) {
            return Ok(Some(RawBody { size: raw.len() as u64, pieces: vec![Piece::Cached(raw)] }));
        }
        let Some(document) = self.get_many(vec![message_id.to_owned()]).await?.pop() else { return Ok(None) };
        if document.rev.is_empty() || document.deleted {
            return Ok(None);
        }
        let message: MessageDoc = parse(&document)?;
        let mut contents = std::collections::HashMap::new();
        for content in self.get_many(message.parts.clone()).await? {
            if content.rev.is_empty() || content.deleted {
                continue;
            }
            let parsed: ContentDoc = parse(&content)?;
            let piece = match parsed.blob {
                Some(blob) => Piece::Blob(blob),
                None => Piece::Bytes(
                    data_encoding::BASE64
                        .decode(parsed.data.as_bytes())
                        .map_err(|_| MailError::Damaged(content.id.clone()))?
                        .into(),
                ),
            };
            contents.insert(content.id, piece);
        }
        let mut pieces = Vec::with_capacity(message.skeleton.len());
        for segment in message.skeleton {
            pieces.push(match segment {
                Segment::Raw(bytes) => Piece::Bytes(bytes.into()),
                Segment::Part(id) => contents.get(&id).cloned().ok_or_else(|| MailError::Damaged(id.clone()))?,
            });
        }
        let size: u64 = pieces.iter().map(Piece::len).sum();
        if size != message.size {
            return Err(MailError::Damaged(format!("{message_id} has {size} bytes, not {}", message.size)));
        }
        Ok(Some(RawBody { size, pieces }))
    }
}
