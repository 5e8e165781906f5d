//! The account's encrypted document store (LEAP's Soledad, rebuilt), kept in
//! sled. It knows nothing of mail.
//!
//! - [`Store`] opens the sled database; nothing can be read or written until
//!   it is initialized or unlocked with the passphrase ([`secrets`]).
//! - Documents have a client-chosen id, a collection, a revision and JSON
//!   content. Writes are serialized, may be compare-and-set on the revision,
//!   come in atomic batches, and are flushed to disk before they return.
//! - Declared indexes over JSON fields answer equality and range queries.
//! - Every write gets a sequence number; [`Store::changes_since`] replays
//!   what changed, so a watcher never misses a change.
//! - Counters (IMAP UIDs) are atomic and local to the device.
//! - Blobs hold large payloads, content-addressed and sealed in chunks.
//!
//! **Architecture invariant:** the sled files hold only keyed hashes and
//! ciphertext ([`crypto`]): no id, collection, content, index value (except
//! the order of integers) or counter name appears in clear.

mod blobs;
pub mod crypto;
mod reserve;
pub mod secrets;
mod store;
mod sync;
mod types;

pub use blobs::{BlobInfo, BlobUpload, CHUNK_BYTES};
pub use secrets::KdfParams;
pub use store::{Credential, MAX_DOCUMENT_BYTES, MAX_ID_BYTES, Store};
pub use sync::{AppliedBatch, OutgoingDocument, Quarantined, RemoteDocument, RemoteOutcome, SyncCursor, merge_sets};
pub use types::*;
