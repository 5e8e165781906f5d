//! SMTP submission (RFC 6409) without I/O, and what is done to a message on
//! its way out.
//!
//! `session`: the server side of one SMTP connection, over smtp-proto's
//! parser: bytes in, replies and events out; DATA and BDAT framing that
//! cannot be tricked into ending a message early (SMTP smuggling).
//! `pgpmime`: RFC 3156 PGP/MIME composition (multipart/encrypted and
//! multipart/signed), protected headers, Autocrypt and `OpenPGP:` headers,
//! Bcc removal; the cryptography itself is the key service's.
//! `submission`: the `Date:` and `Message-ID:` a submission agent adds.
//! `text`: line-ending helpers (shared with `bitmask-mail`).

pub mod pgpmime;
pub mod session;
pub mod submission;
pub mod text;
