//! The IMAP gateway's service: the IMAP listener (`gateway`), the Mail API
//! (`mail_api`), the incoming-mail processor (`incoming`), and following
//! the changes sync brings in.

pub mod gateway;
pub mod incoming;
pub mod mail_api;
mod search;

use std::sync::Arc;
use std::time::Duration;

use bitmask_mail::MailModel;

/// Applies changes other devices made (as sync brings them in) for as long
/// as the process runs; reconnects when the store restarts.
pub async fn follow_sync(model: Arc<MailModel>) {
    loop {
        if let Err(error) = model.clone().follow_sync().await {
            tracing::debug!(%error, "following synced mail changes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
