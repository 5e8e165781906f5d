//! IMAP4rev1 (RFC 3501 and the extensions bitmask serves) without I/O.
//!
//! Bytes in and out are imap-next's business (framing, literals,
//! AUTHENTICATE, IDLE); this crate renders what a FETCH asks for from a raw
//! message (`message`), evaluates SEARCH keys (`search`) and holds the
//! session's state machine (`session`), over the mail model's trait; a big
//! body is sent from the store as it is read (`streamed`).

pub use imap_next::imap_types;

pub mod message;
pub mod search;
pub mod session;
pub mod streamed;
pub mod utf7;
