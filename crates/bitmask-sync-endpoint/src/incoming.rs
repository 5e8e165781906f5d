//! Incoming mail at the sync endpoint: the MX deposits a message already
//! encrypted to the user's public key, and the user's devices are told at
//! once (`WatchIncoming`) so they fetch it without polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore as _;
use tokio::sync::watch;

use crate::storage::{ByteSink, StorageError, SyncStorage};

/// Wakes the watchers of a user when something arrives for them.
#[derive(Debug, Default)]
pub struct IncomingNotifier {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl IncomingNotifier {
    fn sender(&self, user: &str) -> watch::Sender<u64> {
        let mut users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Users nobody watches any more are forgotten.
        users.retain(|_, sender| sender.receiver_count() > 0);
        users.entry(user.to_owned()).or_insert_with(|| watch::channel(0).0).clone()
    }

    /// A receiver that changes whenever [`IncomingNotifier::notify`] is
    /// called for `user`.
    pub fn subscribe(&self, user: &str) -> watch::Receiver<u64> {
        self.sender(user).subscribe()
    }

    pub fn notify(&self, user: &str) {
        let users = self.users.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = users.get(user) {
            sender.send_modify(|count| *count = count.wrapping_add(1));
        }
    }
}

/// Deposits an already encrypted message for `user` and wakes their
/// devices; durable before it returns. Gives the new item's id.
pub fn deposit(
    storage: &dyn SyncStorage,
    notifier: &IncomingNotifier,
    user: &str,
    encrypted: &[u8],
) -> Result<String, StorageError> {
    deposit_from(storage, notifier, user, &mut |sink| sink.write_all(encrypted))
}

/// [`deposit`] of what `write` writes into the sink it is given (the
/// output of an encryption as it is made: the ciphertext is never held
/// whole); nothing is deposited if `write` fails.
pub fn deposit_from(
    storage: &dyn SyncStorage,
    notifier: &IncomingNotifier,
    user: &str,
    write: &mut dyn FnMut(&mut ByteSink) -> std::io::Result<()>,
) -> Result<String, StorageError> {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let id = data_encoding::HEXLOWER.encode(&bytes);
    let received_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_millis() as u64).unwrap_or(0);
    storage.deposit_incoming_from(user, &id, received_ms, write)?;
    notifier.notify(user);
    Ok(id)
}

/// The notifier shared by an endpoint and its MX.
pub type SharedNotifier = Arc<IncomingNotifier>;
