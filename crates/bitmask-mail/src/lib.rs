//! The mail model: mailboxes and messages as documents of the account's
//! encrypted store, with UIDs and MODSEQs local to the device.
//!
//! `split` cuts a raw message into a skeleton and deduplicated content
//! documents and puts it back together byte for byte; `model` is the model
//! over the store service (the only writer of mail documents on a device),
//! `converge` says how what several devices made apart comes together
//! (mailbox names, incoming mail filed twice), and `raw_body` reads a message from it piece by piece for sending;
//! `types` are its protocol-neutral types; `incoming` reads and marks
//! what the provider's MX accepted (the sender's encryption and signature).

#[cfg(feature = "store")]
mod converge;
pub mod incoming;
#[cfg(feature = "store")]
pub mod model;
#[cfg(feature = "store")]
pub mod raw_body;
pub mod split;
#[cfg(feature = "store")]
pub mod token;
pub mod types;

#[cfg(feature = "store")]
pub use converge::incoming_copy_id;
#[cfg(feature = "store")]
pub use model::MailModel;
pub use types::{
    Entry, FlagOperation, Flags, MAX_MESSAGE_BYTES, MailError, MailEvent, MailboxInfo, Mailstore, SpecialUse,
};
