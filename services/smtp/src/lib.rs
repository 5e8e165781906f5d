//! The SMTP gateway's service: the submission listener (`listener`), the
//! durable outgoing queue in the store (`queue`), the worker that encrypts,
//! signs and relays (`worker`), and the `bitmask.smtp.v1.Smtp` API (`api`).

pub mod api;
pub mod listener;
pub mod queue;
pub mod worker;
