//! Mail from the relay's users to other domains goes to the configured
//! smarthost (lettre, plain SMTP to `HOST:PORT`) while the user's client
//! waits: there is no queue here, the smarthost's `250` is what makes the
//! relay answer `250`.
//!
//! All recipients go in one transaction, all or nothing: if the smarthost
//! refuses any of them, the message is not sent and the relay's reply says
//! which and how (temporary → `451`, permanent → `554`).

use std::time::Duration;

use bitmask_smtp::session::Reply;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};

/// How long one exchange with the smarthost may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where mail for other domains goes.
#[derive(Debug, Clone)]
pub struct Smarthost {
    pub host: String,
    pub port: u16,
    /// Our name in EHLO.
    pub hello: String,
}

fn refusal(what: &str, error: &lettre::transport::smtp::Error) -> Reply {
    if error.is_permanent() {
        Reply::new(554, [5, 0, 0], format!("the smarthost refused {what}: {error}"))
    } else {
        Reply::new(451, [4, 4, 0], format!("the smarthost did not take {what}, try again later: {error}"))
    }
}

impl Smarthost {
    /// Sends `message` (with `prefix` prepended, the relay's `Received:`
    /// line) from `from` to `recipients`; the smarthost's answer, or the
    /// relay's refusal.
    pub async fn send(
        &self,
        from: &str,
        recipients: &[String],
        prefix: &[u8],
        message: &[u8],
    ) -> Result<String, Reply> {
        let sender = from
            .parse::<lettre::Address>()
            .map_err(|error| Reply::new(550, [5, 1, 7], format!("<{from}> cannot be relayed: {error}")))?;
        let hello = ClientId::Domain(self.hello.clone());
        let mut connection =
            AsyncSmtpConnection::connect_tokio1((self.host.as_str(), self.port), Some(TIMEOUT), &hello, None, None)
                .await
                .map_err(|error| refusal("the connection", &error))?;
        let result = self.transaction(&mut connection, sender, recipients, prefix, message).await;
        match &result {
            Ok(_) => {
                let _ = connection.quit().await;
            }
            Err(_) => connection.abort().await,
        }
        result
    }

    async fn transaction(
        &self,
        connection: &mut AsyncSmtpConnection,
        sender: lettre::Address,
        recipients: &[String],
        prefix: &[u8],
        message: &[u8],
    ) -> Result<String, Reply> {
        let mut options = Vec::new();
        if !message.is_ascii() && connection.server_info().supports_feature(Extension::EightBitMime) {
            options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        connection.command(Mail::new(Some(sender), options)).await.map_err(|error| refusal("the sender", &error))?;
        for recipient in recipients {
            let to = recipient
                .parse::<lettre::Address>()
                .map_err(|error| Reply::new(554, [5, 1, 3], format!("<{recipient}> cannot be relayed: {error}")))?;
            connection
                .command(Rcpt::new(to, Vec::new()))
                .await
                .map_err(|error| refusal(&format!("<{recipient}>"), &error))?;
        }
        connection.command(Data).await.map_err(|error| refusal("the message", &error))?;
        // In pieces: the dot-stuffed copy is made 64 KiB at a time.
        let pieces = std::iter::once(prefix).chain(message.chunks(64 << 10));
        let response = connection.message_iter(pieces).await.map_err(|error| refusal("the message", &error))?;
        Ok(format!("{} {}", response.code(), response.message().collect::<Vec<_>>().join(" ")))
    }
}
