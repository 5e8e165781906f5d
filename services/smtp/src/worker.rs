//! The queue worker: for each queued message, per recipient, encrypt and
//! sign (the recipient's key is known or found), or sign only, or refuse by
//! policy; relay to the account's relay; retry temporary failures with
//! back-off; on a permanent failure file an "undelivered" report in INBOX.
//!
//! A recipient is marked sent (durably) as soon as the relay accepted the
//! message for it, so a crash never sends twice what the relay took; the
//! window left is between the relay's reply and that write.

use std::sync::Arc;
use std::time::Duration;

use bitmask_proto::keys::v1 as keys_pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::mail::v1 as mail_pb;
use bitmask_proto::mail::v1::mail_client::MailClient;
use bitmask_runtime::client::TracedChannel;
use bitmask_supervisor::config::{EncryptionPolicy, RelayConfig, RelayTls};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Identity, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::sync::Notify;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tonic::Status;

use crate::queue::{self, Entry, Queue, State};

/// What the worker needs of the account.
#[derive(Debug)]
pub struct Worker {
    pub address: String,
    pub queue: Queue,
    pub keys: TracedChannel,
    pub mail: TracedChannel,
    pub relay: Option<RelayConfig>,
    pub policy: EncryptionPolicy,
    /// Wakes the worker: a message was queued, or a flush was asked for.
    pub wake: Notify,
}

/// How a recipient's copy is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    Encrypt,
    SignOnly,
    /// Already encrypted by the mail client: sent as it is.
    PassThrough,
}

impl Treatment {
    pub fn name(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::SignOnly => "sign-only",
            Self::PassThrough => "as-is",
        }
    }
}

/// The outcome of relaying one copy to a recipient.
#[derive(Debug, Clone)]
enum Relayed {
    Accepted(String),
    Temporary(String),
    Permanent(String),
}

impl Worker {
    fn keys(&self) -> KeysClient<TracedChannel> {
        KeysClient::new(self.keys.clone()).max_decoding_message_size(80 << 20)
    }

    /// The recipient's key, found locally or by discovery.
    pub async fn key_of(&self, address: &str) -> Result<Option<keys_pb::Key>, Status> {
        let selector = Some(keys_pb::get_key_request::Selector::Address(address.to_owned()));
        match self.keys().get_key(keys_pb::GetKeyRequest { selector, fetch: true }).await {
            Ok(key) => Ok(Some(key.into_inner()).filter(|key| !key.revoked)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Runs until the process ends: one pass over the queue, then sleep
    /// until woken or the next retry is due.
    pub async fn run(self: Arc<Self>) {
        loop {
            let next = match self.pass().await {
                Ok(next) => next,
                Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                    // The store is still locked: the account is starting.
                    tracing::debug!(error = %status.message(), "queue pass waits for the store");
                    Some(Duration::from_secs(5))
                }
                Err(status) => {
                    tracing::warn!(error = %status.message(), "queue pass failed; retrying in 5 s");
                    Some(Duration::from_secs(5))
                }
            };
            let sleep = next.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Delivers what is due; returns how long until the next retry.
    pub async fn pass(&self) -> Result<Option<Duration>, Status> {
        let now = queue::now();
        let mut next: Option<u64> = None;
        for mut entry in self.queue.entries().await? {
            if !entry.pending() {
                continue;
            }
            if entry.next_attempt > now {
                next = Some(next.map_or(entry.next_attempt, |next| next.min(entry.next_attempt)));
                continue;
            }
            self.deliver(&mut entry).await?;
            if entry.pending() {
                next = Some(next.map_or(entry.next_attempt, |next| next.min(entry.next_attempt)));
            }
        }
        Ok(next.map(|at| Duration::from_secs(at.saturating_sub(queue::now()).max(1))))
    }

    async fn deliver(&self, entry: &mut Entry) -> Result<(), Status> {
        // Parsed once, kept (not copied) when its lines end in CRLF as SMTP
        // gave them: the original for pass-through copies and reports too.
        let prepared = bitmask_smtp::pgpmime::prepare_owned(self.queue.message(entry).await?)
            .map_err(|error| Status::invalid_argument(format!("the message cannot be composed: {error}")));
        entry.attempts += 1;
        tracing::info!(id = %entry.id, attempt = entry.attempts, "delivering");
        let outcome = match &prepared {
            Ok(prepared) => self.deliver_copies(entry, prepared).await,
            Err(status) => Err(status.clone()),
        };
        if let Err(status) = outcome {
            tracing::warn!(id = %entry.id, error = %status.message(), "delivery attempt failed");
            // Something of ours failed (the key service, composition): try again later.
            entry.last_error = status.message().to_owned();
            for recipient in entry.recipients.iter_mut().filter(|recipient| recipient.state == State::Queued) {
                recipient.state = State::Deferred;
            }
        }
        let expired = queue::now().saturating_sub(entry.queued_at) > queue::GIVE_UP_AFTER.as_secs();
        if expired {
            for recipient in entry.recipients.iter_mut().filter(|recipient| recipient.state == State::Deferred) {
                recipient.state = State::Failed;
                recipient.last_reply = format!("given up after {} attempts: {}", entry.attempts, recipient.last_reply);
            }
        }
        entry.next_attempt = queue::now() + queue::backoff(entry.attempts).as_secs();
        self.queue.save(entry).await?;
        let failed: Vec<String> = entry
            .recipients
            .iter()
            .filter(|recipient| recipient.state == State::Failed && !recipient.last_reply.starts_with("[reported] "))
            .map(|recipient| format!("{}: {}", recipient.address, recipient.last_reply))
            .collect();
        if !failed.is_empty() {
            let original = prepared.as_ref().map(|prepared| prepared.message()).unwrap_or_default();
            self.report(entry, original, &failed).await?;
            for recipient in entry.recipients.iter_mut().filter(|recipient| recipient.state == State::Failed) {
                if !recipient.last_reply.starts_with("[reported] ") {
                    recipient.last_reply = format!("[reported] {}", recipient.last_reply);
                }
            }
            self.queue.save(entry).await?;
        }
        // Done with: every recipient was sent to, or refused and reported
        // (the report in INBOX holds the original).
        if !entry.pending() {
            tracing::info!(id = %entry.id, state = ?entry.state(), "done; removed from the queue");
            self.queue.remove(entry).await?;
        }
        Ok(())
    }

    /// Composes and relays the copies for the recipients still waiting.
    async fn deliver_copies(
        &self,
        entry: &mut Entry,
        prepared: &bitmask_smtp::pgpmime::Prepared,
    ) -> Result<(), Status> {
        let raw = prepared.message();
        let visible = visible_recipients(raw);
        let waiting: Vec<String> = entry
            .recipients
            .iter()
            .filter(|recipient| matches!(recipient.state, State::Queued | State::Deferred))
            .map(|recipient| recipient.address.clone())
            .collect();
        // Decide each recipient's treatment now (keys may have been found since).
        let mut encrypt = Vec::new();
        let mut sign_only = Vec::new();
        let mut pass_through = Vec::new();
        for address in &waiting {
            if prepared.is_encrypted() {
                pass_through.push(address.clone());
            } else if self.key_of(address).await?.is_some() {
                encrypt.push(address.clone());
            } else if self.policy == EncryptionPolicy::EncryptedOnly {
                self.mark(
                    entry,
                    std::slice::from_ref(address),
                    State::Failed,
                    "",
                    "5.7.1 no OpenPGP key is known for this recipient and the account sends encrypted mail only",
                );
            } else {
                sign_only.push(address.clone());
            }
        }
        let headers = self.extra_headers().await?;
        let attachment = self.key_attachment().await?;
        if !pass_through.is_empty() {
            let relayed = self.relay(&entry.from, &pass_through, raw).await;
            self.record(entry, Treatment::PassThrough, relayed);
        }
        // A recipient the headers do not name (Bcc, whether the client kept
        // the Bcc line or, as most do, dropped it) gets an encrypted copy of
        // its own: a shared one would name its key to the others.
        let (shared, hidden): (Vec<String>, Vec<String>) =
            encrypt.into_iter().partition(|address| visible.contains(address));
        let mut groups: Vec<Vec<String>> = hidden.into_iter().map(|address| vec![address]).collect();
        if !shared.is_empty() {
            groups.insert(0, shared);
        }
        for group in groups {
            let inner = prepared.inner_for_encryption(Some(&attachment));
            let mut to = group.clone();
            to.push(self.address.clone());
            // Armored ciphertext: about 4/3 of the plaintext (compressed, often less).
            let mut message =
                prepared.encrypted_message(&headers, inner.len() / 3 * 4 + 4096).map_err(compose_error)?;
            self.encrypt(&to, inner, &mut message).await?;
            let message = message.finish().map_err(compose_error)?;
            let relayed = self.relay(&entry.from, &group, &message).await;
            self.record(entry, Treatment::Encrypt, relayed);
        }
        if !sign_only.is_empty() {
            let entity = prepared.entity_for_signing(Some(&attachment));
            let (signature, micalg) = self.sign(&entity).await?;
            let message = prepared.signed(&entity, &signature, &micalg, &headers).map_err(compose_error)?;
            let relayed = self.relay(&entry.from, &sign_only, &message).await;
            self.record(entry, Treatment::SignOnly, relayed);
        }
        Ok(())
    }

    fn mark(&self, entry: &mut Entry, addresses: &[String], state: State, treatment: &str, reply: &str) {
        for recipient in entry.recipients.iter_mut().filter(|recipient| addresses.contains(&recipient.address)) {
            recipient.state = state;
            if !treatment.is_empty() {
                recipient.treatment = treatment.to_owned();
            }
            recipient.last_reply = reply.to_owned();
        }
    }

    fn record(&self, entry: &mut Entry, treatment: Treatment, outcomes: Vec<(String, Relayed)>) {
        for (address, relayed) in outcomes {
            let (outcome, reply) = match &relayed {
                Relayed::Accepted(reply) => ("accepted", reply),
                Relayed::Temporary(reply) => ("deferred", reply),
                Relayed::Permanent(reply) => ("refused", reply),
            };
            tracing::info!(id = %entry.id, treatment = treatment.name(), outcome, reply = %reply, "relayed");
            let addresses = std::slice::from_ref(&address);
            match relayed {
                Relayed::Accepted(reply) => self.mark(entry, addresses, State::Sent, treatment.name(), &reply),
                Relayed::Temporary(reply) => {
                    entry.last_error = reply.clone();
                    self.mark(entry, addresses, State::Deferred, treatment.name(), &reply);
                }
                Relayed::Permanent(reply) => {
                    entry.last_error = reply.clone();
                    self.mark(entry, addresses, State::Failed, treatment.name(), &reply);
                }
            }
        }
    }

    /// `OpenPGP:` and `Autocrypt:` headers announcing the account key.
    async fn extra_headers(&self) -> Result<Vec<(String, String)>, Status> {
        let selector = Some(keys_pb::get_key_request::Selector::Address(self.address.clone()));
        let key = self.keys().get_key(keys_pb::GetKeyRequest { selector, fetch: false }).await?.into_inner();
        let binary = self.export(false).await?;
        Ok(vec![
            ("OpenPGP".into(), bitmask_keys::learn::openpgp_header(&key.fingerprint, None)),
            ("Autocrypt".into(), bitmask_keys::learn::autocrypt_header(&self.address, &binary, true)),
        ])
    }

    async fn export(&self, armor: bool) -> Result<Vec<u8>, Status> {
        let request = keys_pb::ExportKeyRequest {
            selector: Some(keys_pb::export_key_request::Selector::Address(self.address.clone())),
            include_secret: false,
            armor,
        };
        Ok(self.keys().export_key(request).await?.into_inner().data)
    }

    async fn key_attachment(&self) -> Result<bitmask_smtp::pgpmime::KeyAttachment, Status> {
        Ok(bitmask_smtp::pgpmime::KeyAttachment {
            filename: format!("OpenPGP_{}.asc", self.address),
            armored_public_key: self.export(true).await?,
        })
    }

    /// Encrypts `data` (and signs it) to `recipients`, the armored
    /// ciphertext written into `out` as it comes.
    async fn encrypt(
        &self,
        recipients: &[String],
        data: Vec<u8>,
        out: &mut bitmask_smtp::pgpmime::EncryptedMessage,
    ) -> Result<(), Status> {
        let options =
            keys_pb::EncryptOptions { recipients: recipients.to_vec(), sign: true, armor: true, fetch_missing: false };
        let first = keys_pb::EncryptRequest { item: Some(keys_pb::encrypt_request::Item::Options(options)) };
        let messages =
            std::iter::once(first).chain(bitmask_runtime::client::chunks_of(data, crate::queue::CHUNK, |chunk| {
                keys_pb::EncryptRequest { item: Some(keys_pb::encrypt_request::Item::Data(chunk)) }
            }));
        let mut stream = self.keys().encrypt(tokio_stream::iter(messages)).await?.into_inner();
        while let Some(message) = stream.message().await? {
            out.push(&message.data);
        }
        Ok(())
    }

    async fn sign(&self, data: &[u8]) -> Result<(Vec<u8>, String), Status> {
        let options = keys_pb::SignOptions { detached: true, armor: true, text: false };
        let mut messages = vec![keys_pb::SignRequest { item: Some(keys_pb::sign_request::Item::Options(options)) }];
        messages.extend(
            data.chunks(1 << 20)
                .map(|chunk| keys_pb::SignRequest { item: Some(keys_pb::sign_request::Item::Data(chunk.to_vec())) }),
        );
        let mut stream = self.keys().sign(tokio_stream::iter(messages)).await?.into_inner();
        let (mut signature, mut micalg) = (Vec::new(), String::new());
        while let Some(message) = stream.message().await? {
            signature.extend_from_slice(&message.data);
            if !message.micalg.is_empty() {
                micalg = message.micalg;
            }
        }
        Ok((signature, micalg))
    }

    /// Relays one copy to `recipients` through the account's relay: the
    /// outcome for each.
    async fn relay(&self, from: &str, recipients: &[String], message: &[u8]) -> Vec<(String, Relayed)> {
        let everyone =
            |outcome: Relayed| recipients.iter().map(|recipient| (recipient.clone(), outcome.clone())).collect();
        let Some(relay) = &self.relay else {
            return everyone(Relayed::Temporary("4.4.0 no relay is configured for this account yet".into()));
        };
        match send(relay, from, recipients, message).await {
            Ok(outcomes) => outcomes,
            Err(error) if error.is_permanent() => everyone(Relayed::Permanent(error.to_string())),
            Err(error) => everyone(Relayed::Temporary(error.to_string())),
        }
    }

    /// Files a readable "undelivered" report, the original attached, in INBOX.
    async fn report(&self, entry: &Entry, raw: &[u8], failures: &[String]) -> Result<(), Status> {
        let report = undelivered_report(&self.address, &entry.subject, failures, raw);
        let request =
            mail_pb::AddMessageRequest { mailbox: "INBOX".into(), raw: report, flags: None, internal_date: None };
        MailClient::new(self.mail.clone()).max_encoding_message_size(80 << 20).add_message(request).await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    #[error("5.1.3 {0}")]
    Address(String),
    #[error("4.4.0 {0}")]
    Setup(String),
}

impl SendError {
    fn is_permanent(&self) -> bool {
        match self {
            Self::Smtp(error) => error.is_permanent(),
            Self::Address(_) => true,
            Self::Setup(_) => false,
        }
    }
}

/// Relays one copy: each recipient's outcome (the relay may take some
/// and refuse others), or an error before any recipient was tried.
async fn send(
    relay: &RelayConfig,
    from: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<Vec<(String, Relayed)>, SendError> {
    let (host, port) = relay
        .address
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| SendError::Setup(format!("{:?} is not HOST:PORT", relay.address)))?;
    let parameters = match relay.tls {
        RelayTls::None => None,
        RelayTls::Starttls | RelayTls::Tls => Some(tls_parameters(relay, &host)?),
    };
    let address =
        |text: &str| text.parse::<lettre::Address>().map_err(|error| SendError::Address(format!("{text}: {error}")));
    let sender = address(from)?;
    let hello = ClientId::default();
    let timeout = Some(Duration::from_secs(60));
    let wrapped = if relay.tls == RelayTls::Tls { parameters.clone() } else { None };
    let mut connection =
        AsyncSmtpConnection::connect_tokio1((host.as_str(), port), timeout, &hello, wrapped, None).await?;
    if relay.tls == RelayTls::Starttls {
        if !connection.can_starttls() {
            connection.abort().await;
            return Err(SendError::Setup("the relay does not offer STARTTLS".into()));
        }
        if let Some(parameters) = parameters {
            connection.starttls(parameters, &hello).await?;
        }
    }
    let mut options = Vec::new();
    if !message.is_ascii() && connection.server_info().supports_feature(Extension::EightBitMime) {
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    if let Err(error) = connection.command(Mail::new(Some(sender), options)).await {
        connection.abort().await;
        return Err(error.into());
    }
    let mut outcomes = Vec::new();
    let mut accepted = Vec::new();
    for recipient in recipients {
        let outcome = match address(recipient) {
            Err(error) => Relayed::Permanent(error.to_string()),
            Ok(to) => match connection.command(Rcpt::new(to, Vec::new())).await {
                Ok(_) => {
                    accepted.push(recipient.clone());
                    continue;
                }
                Err(error) if error.is_permanent() => Relayed::Permanent(error.to_string()),
                Err(error) if error.is_transient() => Relayed::Temporary(error.to_string()),
                Err(error) => {
                    // The connection itself failed: nothing of this copy was sent.
                    connection.abort().await;
                    return Err(error.into());
                }
            },
        };
        outcomes.push((recipient.clone(), outcome));
    }
    if accepted.is_empty() {
        let _ = connection.quit().await;
        return Ok(outcomes);
    }
    let data = match connection.command(Data).await {
        // In pieces: the dot-stuffed copy is made 64 KiB at a time.
        Ok(_) => connection.message_iter(message.chunks(64 << 10)).await,
        Err(error) => Err(error),
    };
    let outcome = match data {
        Ok(response) => {
            Relayed::Accepted(format!("{} {}", response.code(), response.message().collect::<Vec<_>>().join(" ")))
        }
        Err(error) if error.is_permanent() => Relayed::Permanent(error.to_string()),
        Err(error) => Relayed::Temporary(error.to_string()),
    };
    let _ = connection.quit().await;
    outcomes.extend(accepted.into_iter().map(|recipient| (recipient, outcome.clone())));
    Ok(outcomes)
}

/// TLS towards the relay: its CA pinned when one is configured, the
/// account's client certificate presented when it has one.
fn tls_parameters(relay: &RelayConfig, host: &str) -> Result<TlsParameters, SendError> {
    let mut parameters = TlsParameters::builder(host.to_owned());
    if let Some(file) = &relay.ca_file {
        let pem = std::fs::read(file).map_err(|error| SendError::Setup(format!("{}: {error}", file.display())))?;
        let certificate = Certificate::from_pem(&pem).map_err(|error| SendError::Setup(error.to_string()))?;
        // Pinned: this CA only, not the system's.
        parameters = parameters.certificate_store(CertificateStore::None).add_root_certificate(certificate);
    }
    if let (Some(certificate), Some(key)) = (&relay.client_cert_file, &relay.client_key_file) {
        let read = |file: &std::path::PathBuf| {
            std::fs::read(file).map_err(|error| SendError::Setup(format!("{}: {error}", file.display())))
        };
        // lettre's rustls `Identity::from_pem` takes the certificate as DER
        // despite its name (0.11.23): give it the first one.
        let der = CertificateDer::pem_slice_iter(&read(certificate)?)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| SendError::Setup(format!("{}: no PEM certificate", certificate.display())))?;
        let identity = Identity::from_pem(der.as_ref(), &read(key)?)
            .map_err(|error| SendError::Setup(format!("the client certificate: {error}")))?;
        parameters = parameters.identify_with(identity);
    }
    parameters.build().map_err(|error| SendError::Setup(error.to_string()))
}

fn compose_error(error: bitmask_smtp::pgpmime::ComposeError) -> Status {
    Status::internal(format!("composing the outgoing message: {error}"))
}

/// The addresses the message's To and Cc name, lowercased: the recipients
/// every other recipient may know of.
fn visible_recipients(raw: &[u8]) -> Vec<String> {
    let Some(message) = bitmask_mime::parse_headers(raw) else { return Vec::new() };
    [message.to(), message.cc()]
        .into_iter()
        .flatten()
        .flat_map(|list| list.iter().filter_map(|address| address.address()).map(str::to_lowercase))
        .collect()
}

/// A readable report of what could not be delivered, the original attached.
fn undelivered_report(account: &str, subject: &str, failures: &[String], original: &[u8]) -> Vec<u8> {
    let boundary = format!("undelivered-{}", data_encoding::HEXLOWER.encode(&rand::random::<[u8; 8]>()));
    let date = chrono::Utc::now().to_rfc2822();
    let subject: String = subject.chars().filter(|c| !c.is_control()).collect();
    let mut report = format!(
        "From: Mail Delivery System <mailer-daemon@localhost>\r\nTo: <{account}>\r\n\
         Subject: Undelivered Mail Returned to Sender: {subject}\r\nDate: {date}\r\nMIME-Version: 1.0\r\n\
         Auto-Submitted: auto-replied\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         Your message could not be delivered to these recipients:\r\n\r\n"
    );
    for failure in failures {
        let line: String = failure.chars().filter(|c| !c.is_control()).collect();
        report.push_str(&format!("  {line}\r\n"));
    }
    report.push_str(&format!(
        "\r\nThe original message is attached.\r\n\r\n--{boundary}\r\n\
         Content-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
    ));
    let mut bytes = report.into_bytes();
    bytes.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}
