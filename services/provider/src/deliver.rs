//! Delivery to the provider's own users, shared by the MX and the relay.
//!
//! A recipient is checked when it is named (RCPT): it must be an account
//! here and have a public key in the key directory; a user without a key
//! gets a temporary refusal (`450 4.7.1`) because the provider never keeps
//! plaintext, not even for a moment on disk.
//!
//! At the end of DATA each recipient's copy gets `Return-Path:`,
//! `Delivered-To:` and `Received:` prepended, is encrypted as a whole to the
//! recipient's key (binary OpenPGP, not signed), streamed from the received
//! message straight into the sync endpoint's incoming item (the ciphertext
//! is never held whole in memory), and deposited (durable, the user's
//! devices woken) before the sender hears `250`.
//!
//! **Retries are deduplicated**: the provider keeps HMAC-SHA256, under its
//! secret, of (envelope sender, recipient, Message-ID) for
//! [`DEDUPLICATION_WINDOW`]; a copy
//! whose pair is known is answered as delivered and not deposited again. A
//! message without a Message-ID cannot be recognized and is deposited each
//! time it comes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitmask_keydir::{KeyStorage, SledKeyStorage};
use bitmask_keys::openpgp;
use bitmask_smtp::session::Reply;
use bitmask_sync_endpoint::{IncomingNotifier, SyncStorage};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::ProviderSecret;
use crate::store::ProviderStore;

/// How long a delivered (sender, recipient, Message-ID) is remembered.
pub const DEDUPLICATION_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// A message as the SMTP session received it, in memory only; zeroized
/// when the last reference goes.
pub type Message = Arc<Zeroizing<Vec<u8>>>;

/// Where a message came from, for its `Received:` header.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The envelope sender (empty for `<>`).
    pub from: String,
    pub peer: IpAddr,
    /// `ESMTP`, or `ESMTPS` over TLS (RFC 3848).
    pub protocol: &'static str,
}

/// What happened to one recipient's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// Deposited as the incoming item with this id.
    Deposited(String),
    /// Delivered before (the same Message-ID): not deposited again.
    Duplicate,
}

pub struct Delivery {
    domain: String,
    store: ProviderStore,
    keys: Arc<SledKeyStorage>,
    sync: Arc<dyn SyncStorage>,
    notifier: Arc<IncomingNotifier>,
    secret: ProviderSecret,
    /// Deduplication keys being delivered right now.
    in_flight: Mutex<HashSet<[u8; 32]>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("domain", &self.domain).finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

fn storage_failure(error: impl std::fmt::Display) -> Reply {
    tracing::error!(%error, "delivery storage failed");
    Reply::new(451, [4, 3, 0], "local error in processing, try again later")
}

fn no_key(address: &str) -> Reply {
    Reply::new(450, [4, 7, 1], format!("<{address}> has no public key yet, try again later"))
}

/// The Message-ID of `message`, if it has one.
pub fn message_id(message: &[u8]) -> Option<String> {
    let headers = bitmask_mime::parse_headers(message)?;
    headers.message_id().filter(|id| !id.is_empty()).map(str::to_owned)
}

/// The lines prepended to a copy for `recipient`.
pub fn trace_headers(trace: &Trace, domain: &str, recipient: Option<&str>) -> String {
    let date = chrono::Utc::now().to_rfc2822();
    let (protocol, peer) = (trace.protocol, trace.peer);
    match recipient {
        Some(recipient) => format!(
            "Return-Path: <{from}>\r\nDelivered-To: {recipient}\r\nReceived: from [{peer}]\r\n\tby {domain} (bitmask-provider) with {protocol}\r\n\tfor <{recipient}>; {date}\r\n",
            from = trace.from
        ),
        None => format!("Received: from [{peer}]\r\n\tby {domain} (bitmask-provider) with {protocol}; {date}\r\n"),
    }
}

/// Forgets a deduplication key's "in flight" mark when dropped.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<[u8; 32]>>,
    key: [u8; 32],
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.key);
    }
}

impl Delivery {
    pub fn new(
        domain: String,
        store: ProviderStore,
        keys: Arc<SledKeyStorage>,
        sync: Arc<dyn SyncStorage>,
        notifier: Arc<IncomingNotifier>,
        secret: ProviderSecret,
    ) -> Self {
        Self { domain, store, keys, sync, notifier, secret, in_flight: Mutex::default() }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn store(&self) -> &ProviderStore {
        &self.store
    }

    /// Whether `address` is in the provider's domain (without case).
    pub fn is_local(&self, address: &str) -> bool {
        address.rsplit_once('@').is_some_and(|(_, domain)| domain.eq_ignore_ascii_case(&self.domain))
    }

    /// RCPT of a local `address`: its lowercased form if mail for it can be
    /// delivered now; otherwise the refusal.
    pub fn check_local(&self, address: &str) -> Result<String, Reply> {
        let address = bitmask_keydir::normalize_address(address)
            .map_err(|_| Reply::new(550, [5, 1, 3], format!("<{address}> is not a valid address")))?;
        if self.store.account(&address).map_err(storage_failure)?.is_none() {
            return Err(Reply::new(550, [5, 1, 1], format!("<{address}>: no such user here")));
        }
        if self.keys.get(&address).map_err(storage_failure)?.is_none() {
            return Err(no_key(&address));
        }
        Ok(address)
    }

    /// HMAC-SHA256 under the provider secret of `recipient` and `message_id`.
    /// The envelope sender is part of the key: someone who learns a
    /// Message-ID before it is sent cannot have the real message dropped as
    /// a "retry" of theirs unless they also send as its sender.
    fn deduplication_key(&self, sender: &str, recipient: &str, message_id: &str) -> Result<[u8; 32], Reply> {
        // HMAC takes a key of any length: this does not fail.
        let mut mac = <Hmac<Sha256>>::new_from_slice(self.secret.as_bytes()).map_err(storage_failure)?;
        let sender = sender.to_lowercase();
        for part in [
            b"bitmask-provider delivery\0".as_slice(),
            sender.as_bytes(),
            b"\0",
            recipient.as_bytes(),
            b"\0",
            message_id.as_bytes(),
        ] {
            mac.update(part);
        }
        Ok(mac.finalize().into_bytes().into())
    }

    /// Delivers `message` to each of `recipients` (local, checked, lowercased)
    /// in turn; blocking (encryption, fsync). The first failure stops the
    /// rest: the client retries the whole message, and what was deposited
    /// before is recognized by its Message-ID.
    pub fn deliver(&self, trace: &Trace, recipients: &[String], message: &[u8]) -> Result<Vec<Delivered>, Reply> {
        let message_id = message_id(message);
        recipients.iter().map(|recipient| self.deliver_one(trace, recipient, message_id.as_deref(), message)).collect()
    }

    fn deliver_one(
        &self,
        trace: &Trace,
        recipient: &str,
        message_id: Option<&str>,
        message: &[u8],
    ) -> Result<Delivered, Reply> {
        let mut _in_flight = None;
        let mut remember = None;
        if let Some(message_id) = message_id {
            let key = self.deduplication_key(&trace.from, recipient, message_id)?;
            if !self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key) {
                return Err(Reply::new(
                    451,
                    [4, 4, 5],
                    "the same message is being delivered right now, try again later",
                ));
            }
            _in_flight = Some(InFlight { set: &self.in_flight, key });
            if self.store.delivered(&key, now_unix()).map_err(storage_failure)? {
                tracing::info!(%recipient, "a retried message was delivered before: not deposited again");
                return Ok(Delivered::Duplicate);
            }
            remember = Some(key);
        }
        let published = self.keys.get(recipient).map_err(storage_failure)?.ok_or_else(|| no_key(recipient))?;
        let certificates = openpgp::parse_certs(published.armored.as_bytes()).map_err(storage_failure)?;
        let headers = trace_headers(trace, &self.domain, Some(recipient));
        // Encrypted straight into the incoming item: the ciphertext is never
        // held whole. An encryption failure is told apart from a storage one.
        let mut unusable = None;
        let deposited =
            bitmask_sync_endpoint::deposit_from(self.sync.as_ref(), &self.notifier, recipient, &mut |sink| {
                let mut plaintext = std::io::Read::chain(headers.as_bytes(), message);
                openpgp::encrypt_stream(&mut plaintext, sink, &certificates, None, false).map_err(|error| {
                    let failure = std::io::Error::other(error.to_string());
                    unusable = Some(error);
                    failure
                })
            });
        let id = match (deposited, unusable) {
            (Ok(id), _) => id,
            (Err(_), Some(error)) => {
                tracing::warn!(%recipient, fingerprint = %published.fingerprint, %error, "cannot encrypt to the published key");
                return Err(Reply::new(
                    450,
                    [4, 7, 1],
                    format!("<{recipient}>'s public key cannot be used now, try again later"),
                ));
            }
            (Err(error), None) => return Err(storage_failure(error)),
        };
        if let Some(key) = remember {
            self.store.mark_delivered(&key, now_unix() + DEDUPLICATION_WINDOW.as_secs()).map_err(storage_failure)?;
        }
        tracing::info!(%recipient, item = %id, size = message.len(), "mail deposited");
        Ok(Delivered::Deposited(id))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn message_ids_are_read_from_the_header() {
        assert_eq!(
            message_id(b"Subject: x\r\nMessage-ID: <a.1@example.net>\r\n\r\nbody\r\n"),
            Some("a.1@example.net".into())
        );
        assert_eq!(message_id(b"Subject: x\r\n\r\nbody\r\n"), None);
    }

    #[test]
    fn trace_headers_are_header_lines() {
        let trace = Trace { from: "a@example.net".into(), peer: "192.0.2.1".parse().unwrap(), protocol: "ESMTPS" };
        let lines = trace_headers(&trace, "example.org", Some("bob@example.org"));
        assert!(lines.starts_with("Return-Path: <a@example.net>\r\nDelivered-To: bob@example.org\r\nReceived: from [192.0.2.1]\r\n\tby example.org (bitmask-provider) with ESMTPS\r\n\tfor <bob@example.org>; "), "{lines}");
        assert!(lines.ends_with("\r\n"));
        let relayed = trace_headers(&trace, "example.org", None);
        assert!(relayed.starts_with("Received: from [192.0.2.1]\r\n\tby example.org"), "{relayed}");
    }
}
