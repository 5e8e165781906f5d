//! What bitmaskctl prints: aligned tables for people, JSON for scripts.
//!
//! The JSON shapes are our own (below), not the protobuf messages, so enum
//! values read as words and scripts do not depend on field numbers.

#![allow(clippy::print_stdout)] // printing is this module's job

use std::time::{Duration, SystemTime};

use bitmask_proto::core::v1 as pb;
use bitmask_proto::smtp::v1 as smtp_pb;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct AccountView<'a> {
    address: &'a str,
    imap: String,
    smtp: String,
    imap_port: u32,
    smtp_port: u32,
    bind_address: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    provider: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay: Option<&'a str>,
    encryption_policy: &'static str,
}

impl<'a> From<&'a pb::Account> for AccountView<'a> {
    fn from(account: &'a pb::Account) -> Self {
        Self {
            address: &account.address,
            imap: format!("{}:{}", account.bind_address, account.imap_port),
            smtp: format!("{}:{}", account.bind_address, account.smtp_port),
            imap_port: account.imap_port,
            smtp_port: account.smtp_port,
            bind_address: &account.bind_address,
            provider: &account.provider_url,
            relay: account.relay.as_ref().map(|relay| relay.address.as_str()),
            encryption_policy: match account.encryption_policy() {
                pb::EncryptionPolicy::EncryptedOnly => "encrypted-only",
                _ => "opportunistic",
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct ServiceView<'a> {
    service: &'static str,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    restarts: u32,
    socket: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u32>,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_exit: &'a str,
    /// Seconds until the next start, while backing off.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_start_in: Option<f64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
}

#[derive(Debug, Serialize)]
struct AccountStatusView<'a> {
    address: &'a str,
    state: &'static str,
    locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_sync: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_sync_result: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    quarantined: &'a [String],
    imap_port: u32,
    smtp_port: u32,
    services: Vec<ServiceView<'a>>,
}

fn service_name(kind: pb::ServiceKind) -> &'static str {
    match kind {
        pb::ServiceKind::Store => "store",
        pb::ServiceKind::Keys => "keys",
        pb::ServiceKind::Imap => "imap",
        pb::ServiceKind::Smtp => "smtp",
        pb::ServiceKind::Unspecified => "unknown",
    }
}

fn service_state(state: pb::ServiceState) -> &'static str {
    match state {
        pb::ServiceState::Stopped => "stopped",
        pb::ServiceState::Starting => "starting",
        pb::ServiceState::Serving => "serving",
        pb::ServiceState::Backoff => "backoff",
        pb::ServiceState::Failing => "failing",
        pb::ServiceState::Stopping => "stopping",
        pb::ServiceState::Unspecified => "unknown",
    }
}

fn account_state(state: pb::AccountState) -> &'static str {
    match state {
        pb::AccountState::Stopped => "stopped",
        pb::AccountState::Starting => "starting",
        pb::AccountState::Running => "running",
        pb::AccountState::Degraded => "degraded",
        pb::AccountState::Stopping => "stopping",
        pb::AccountState::Unspecified => "unknown",
    }
}

fn seconds_until(time: &prost_types::Timestamp) -> Option<f64> {
    let at = SystemTime::try_from(*time).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).as_secs_f64())
}

impl<'a> From<&'a pb::AccountStatus> for AccountStatusView<'a> {
    fn from(status: &'a pb::AccountStatus) -> Self {
        Self {
            address: &status.address,
            state: account_state(status.state()),
            locked: status.locked,
            last_sync: status.last_sync_time.as_ref().and_then(|time| SystemTime::try_from(*time).ok()).map(|time| {
                let seconds = SystemTime::now().duration_since(time).unwrap_or(Duration::ZERO).as_secs();
                format!("{seconds}s ago")
            }),
            last_sync_result: &status.last_sync_result,
            quarantined: &status.quarantined,
            imap_port: status.imap_port,
            smtp_port: status.smtp_port,
            services: status
                .services
                .iter()
                .map(|service| ServiceView {
                    service: service_name(service.kind()),
                    state: service_state(service.state()),
                    pid: (service.pid != 0).then_some(service.pid),
                    restarts: service.restarts,
                    socket: &service.socket,
                    port: (service.port != 0).then_some(service.port),
                    last_exit: &service.last_exit,
                    next_start_in: service.next_start_time.as_ref().and_then(seconds_until),
                    message: &service.message,
                })
                .collect(),
        }
    }
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("bitmaskctl: cannot encode JSON: {error}"),
    }
}

/// Prints rows as columns padded to their widest cell.
fn print_table(rows: &[Vec<String>], indent: &str) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| rows.iter().filter_map(|row| row.get(column)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let mut line = String::from(indent);
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        println!("{}", line.trim_end());
    }
}

pub fn account_added(account: &pb::Account, json: bool) {
    let view = AccountView::from(account);
    if json {
        return print_json(&view);
    }
    println!(
        "added {} (IMAP {}, SMTP {}); start it with: bitmaskctl account start {}",
        view.address, view.imap, view.smtp, view.address
    );
}

pub fn accounts(accounts: &[pb::Account], json: bool) {
    let views: Vec<AccountView> = accounts.iter().map(AccountView::from).collect();
    if json {
        return print_json(&views);
    }
    if views.is_empty() {
        println!("no accounts; add one with: bitmaskctl account add ADDRESS");
        return;
    }
    let mut rows = vec![["ADDRESS", "IMAP", "SMTP", "PROVIDER", "RELAY"].map(String::from).to_vec()];
    for view in &views {
        rows.push(vec![
            view.address.to_owned(),
            view.imap.clone(),
            view.smtp.clone(),
            if view.provider.is_empty() { "-".into() } else { view.provider.to_owned() },
            view.relay.unwrap_or("-").to_owned(),
        ]);
    }
    print_table(&rows, "");
}

pub fn account_started(status: &pb::AccountStatus, recovery_code: &str, json: bool) {
    if json {
        let mut value = serde_json::to_value(AccountStatusView::from(status)).unwrap_or_default();
        if !recovery_code.is_empty() {
            value["recovery_code"] = recovery_code.into();
        }
        return print_json(&value);
    }
    account_status(status, "started", false);
    if !recovery_code.is_empty() {
        println!();
        println!("The store of {} was created. Its recovery code opens it if the passphrase is lost;", status.address);
        println!("write it down now, it is shown only this once:");
        println!();
        println!("    {recovery_code}");
        println!();
    }
}

pub fn account_status(status: &pb::AccountStatus, verb: &str, json: bool) {
    if json {
        return print_json(&AccountStatusView::from(status));
    }
    println!("{verb} {}", status.address);
    self::status(std::slice::from_ref(status), false);
}

pub fn passphrase_changed(address: &str, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "address": address, "passphrase_changed": true }));
    }
    println!("changed the passphrase of {address}; the recovery code stays the same");
}

pub fn removed(address: &str, purged: bool, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "address": address, "removed": true, "purged": purged }));
    }
    let data = if purged { "its data deleted" } else { "its data kept" };
    println!("removed {address} ({data})");
}

pub fn status(accounts: &[pb::AccountStatus], json: bool) {
    let views: Vec<AccountStatusView> = accounts.iter().map(AccountStatusView::from).collect();
    if json {
        return print_json(&views);
    }
    if views.is_empty() {
        println!("no accounts; add one with: bitmaskctl account add ADDRESS");
        return;
    }
    for view in &views {
        let lock = match (view.state, view.locked) {
            ("stopped", _) => "",
            (_, true) => ", store locked",
            (_, false) => ", store unlocked",
        };
        println!(
            "{}  {}  (IMAP port {}, SMTP port {}{lock})",
            view.address, view.state, view.imap_port, view.smtp_port
        );
        if let Some(when) = &view.last_sync {
            println!("  last sync {when}: {}", view.last_sync_result);
        }
        for refused in view.quarantined {
            println!("  refused from the provider, skipped: {refused}");
        }
        let mut rows =
            vec![["SERVICE", "STATE", "PID", "RESTARTS", "PORT", "SOCKET", "LAST EXIT"].map(String::from).to_vec()];
        for service in &view.services {
            let mut last_exit = service.last_exit.to_owned();
            if let Some(seconds) = service.next_start_in {
                last_exit.push_str(&format!(" (retry in {seconds:.1}s)"));
            }
            rows.push(vec![
                service.service.to_owned(),
                service.state.to_owned(),
                service.pid.map(|pid| pid.to_string()).unwrap_or_else(|| "-".into()),
                service.restarts.to_string(),
                service.port.map(|port| port.to_string()).unwrap_or_else(|| "-".into()),
                service.socket.to_owned(),
                if last_exit.is_empty() { "-".into() } else { last_exit },
            ]);
        }
        print_table(&rows, "  ");
        for service in view.services.iter().filter(|service| !service.message.is_empty() && service.state != "serving")
        {
            println!("  {} log: {}", service.service, service.message.replace('\n', "\n    "));
        }
    }
}

/// Shows sync progress: one updating line on a terminal, plain lines (or
/// JSON lines) otherwise.
#[derive(Debug)]
pub struct SyncPrinter {
    json: bool,
    terminal: bool,
    last: Option<bitmask_proto::store::v1::SyncProgress>,
}

impl SyncPrinter {
    pub fn new(json: bool) -> Self {
        Self { json, terminal: !json && std::io::IsTerminal::is_terminal(&std::io::stdout()), last: None }
    }

    pub fn update(&mut self, update: &bitmask_proto::store::v1::SyncProgress) {
        use bitmask_proto::store::v1::sync_progress::Phase;
        let phase = match update.phase() {
            Phase::Connecting => "connecting",
            Phase::Sending => "sending",
            Phase::Receiving => "receiving",
            Phase::Blobs => "blobs",
            Phase::Done => "done",
            Phase::Unspecified => "working",
        };
        if self.json {
            let line = serde_json::json!({
                "phase": phase, "documents_done": update.documents_done, "documents_total": update.documents_total,
                "message": update.message,
            });
            println!("{line}");
        } else {
            let count = match update.documents_total {
                0 => format!("{}", update.documents_done),
                total => format!("{}/{total}", update.documents_done),
            };
            let bar = match update.documents_total {
                0 => String::new(),
                total => {
                    let filled = (update.documents_done.min(total) * 20 / total) as usize;
                    format!("[{}{}] ", "#".repeat(filled), ".".repeat(20 - filled))
                }
            };
            let text = format!("{phase:<10} {bar}{count} documents {}", update.message);
            if self.terminal {
                print!("\r\x1b[2K{text}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            } else {
                println!("{}", text.trim_end());
            }
        }
        self.last = Some(update.clone());
    }

    pub fn finish(&self) {
        if self.terminal {
            println!();
        }
    }
}

/// Bytes as they are (an exported key).
pub fn raw(data: &[u8]) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(data);
    let _ = stdout.flush();
}

#[derive(Debug, Serialize)]
struct KeyView<'a> {
    fingerprint: &'a str,
    addresses: &'a [String],
    source: String,
    validation: String,
    active: bool,
    has_secret: bool,
    used: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_unix: Option<i64>,
}

fn enum_name(debug: String) -> String {
    // "ProviderDirectory" -> "provider-directory"
    let mut name = String::new();
    for (index, character) in debug.chars().enumerate() {
        if character.is_uppercase() && index > 0 {
            name.push('-');
        }
        name.extend(character.to_lowercase());
    }
    name
}

pub fn keys(keys: &[bitmask_proto::keys::v1::Key], json: bool) {
    let views: Vec<KeyView> = keys
        .iter()
        .map(|key| KeyView {
            fingerprint: &key.fingerprint,
            addresses: &key.addresses,
            source: enum_name(format!("{:?}", key.source())),
            validation: enum_name(format!("{:?}", key.validation())),
            active: key.active,
            has_secret: key.has_secret,
            used: key.used,
            expires_unix: key.expires.map(|time| time.seconds),
        })
        .collect();
    if json {
        return print_json(&views);
    }
    if views.is_empty() {
        println!("no keys");
        return;
    }
    let mut rows =
        vec![["FINGERPRINT", "ADDRESSES", "SOURCE", "LEVEL", "EXPIRES", "ACTIVE", "SECRET"].map(String::from).to_vec()];
    for view in &views {
        let expires = view
            .expires_unix
            .and_then(|seconds| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(seconds.max(0) as u64)))
            .map(|at| match at.duration_since(SystemTime::now()) {
                Ok(left) => format!("in {} days", left.as_secs() / 86_400),
                Err(_) => "expired".into(),
            })
            .unwrap_or_else(|| "never".into());
        rows.push(vec![
            view.fingerprint.to_owned(),
            view.addresses.join(","),
            view.source.clone(),
            view.validation.clone(),
            expires,
            if view.active { "yes".into() } else { "no".into() },
            if view.has_secret { "yes".into() } else { "no".into() },
        ]);
    }
    print_table(&rows, "");
}

pub fn imported(results: &[bitmask_proto::keys::v1::ImportResult], json: bool) {
    if json {
        let values: Vec<_> = results
            .iter()
            .map(|result| serde_json::json!({"fingerprint": result.fingerprint, "imported": result.imported, "reason": result.reason}))
            .collect();
        return print_json(&values);
    }
    for result in results {
        if result.imported {
            println!("imported {}", result.fingerprint);
        } else {
            println!("refused {}: {}", result.fingerprint, result.reason);
        }
    }
}

pub fn removed_key(fingerprint: &str, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "fingerprint": fingerprint, "deleted": true }));
    }
    println!("deleted {fingerprint}");
}

/// The mail token: only the token on standard output, for scripts too.
pub fn token(token: &str, json: bool) {
    if json {
        return print_json(&serde_json::json!({ "token": token }));
    }
    println!("{token}");
}

#[derive(Debug, Serialize)]
struct QueueRecipientView<'a> {
    address: &'a str,
    state: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    treatment: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_reply: &'a str,
}

#[derive(Debug, Serialize)]
struct QueueEntryView<'a> {
    queue_id: &'a str,
    state: &'static str,
    subject: &'a str,
    size: u64,
    attempts: u32,
    /// Seconds since it was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    age: Option<u64>,
    /// Seconds until the next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_in: Option<f64>,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_error: &'a str,
    recipients: Vec<QueueRecipientView<'a>>,
}

fn queue_state(state: smtp_pb::QueueState) -> &'static str {
    match state {
        smtp_pb::QueueState::Queued => "queued",
        smtp_pb::QueueState::Sending => "sending",
        smtp_pb::QueueState::Deferred => "deferred",
        smtp_pb::QueueState::Failed => "failed",
        smtp_pb::QueueState::Unspecified => "sent",
    }
}

impl<'a> From<&'a smtp_pb::QueueEntry> for QueueEntryView<'a> {
    fn from(entry: &'a smtp_pb::QueueEntry) -> Self {
        Self {
            queue_id: &entry.queue_id,
            state: queue_state(entry.state()),
            subject: &entry.subject,
            size: entry.size,
            attempts: entry.attempts,
            age: entry
                .queued_at
                .as_ref()
                .and_then(|time| SystemTime::try_from(*time).ok())
                .map(|time| SystemTime::now().duration_since(time).unwrap_or(Duration::ZERO).as_secs()),
            next_attempt_in: entry.next_attempt.as_ref().and_then(seconds_until),
            last_error: &entry.last_error,
            recipients: entry
                .recipients
                .iter()
                .map(|recipient| QueueRecipientView {
                    address: &recipient.address,
                    state: queue_state(recipient.state()),
                    treatment: &recipient.treatment,
                    last_reply: &recipient.last_reply,
                })
                .collect(),
        }
    }
}

fn print_queue(views: &[QueueEntryView], indent: &str) {
    if views.is_empty() {
        println!("{indent}the outgoing queue is empty");
        return;
    }
    for view in views {
        let next = match view.next_attempt_in {
            Some(seconds) => format!(", next attempt in {seconds:.0}s"),
            None => String::new(),
        };
        println!(
            "{indent}{}  {}  {:?}  {} bytes, {} attempt(s){next}",
            view.queue_id, view.state, view.subject, view.size, view.attempts
        );
        let mut rows = Vec::new();
        for recipient in &view.recipients {
            let why = if recipient.last_reply.is_empty() { "-" } else { recipient.last_reply };
            rows.push(vec![
                recipient.address.to_owned(),
                recipient.state.to_owned(),
                if recipient.treatment.is_empty() { "-".into() } else { recipient.treatment.to_owned() },
                why.replace('\n', " "),
            ]);
        }
        print_table(&rows, &format!("{indent}  "));
        if !view.last_error.is_empty() {
            println!("{indent}  last error: {}", view.last_error.replace('\n', " "));
        }
    }
}

pub fn queue(entries: &[smtp_pb::QueueEntry], json: bool) {
    let views: Vec<QueueEntryView> = entries.iter().map(QueueEntryView::from).collect();
    if json {
        return print_json(&views);
    }
    print_queue(&views, "");
}

#[derive(Debug, Serialize)]
struct MailboxView<'a> {
    name: &'a str,
    messages: u32,
    unseen: u32,
    uid_validity: u32,
    uid_next: u32,
}

#[derive(Debug, Serialize)]
struct MailStatusView<'a> {
    address: &'a str,
    mailboxes: Vec<MailboxView<'a>>,
    incoming_pending: u32,
    undecryptable: u32,
    incoming_problems: Vec<IncomingProblemView<'a>>,
    queue: Vec<QueueEntryView<'a>>,
}

#[derive(Debug, Serialize)]
struct IncomingProblemView<'a> {
    item: &'a str,
    attempts: u32,
    last_error: &'a str,
}

pub fn mail_status(
    address: &str,
    status: &bitmask_proto::mail::v1::GetMailStatusResponse,
    queue: &[smtp_pb::QueueEntry],
    json: bool,
) {
    let view = MailStatusView {
        address,
        mailboxes: status
            .mailboxes
            .iter()
            .map(|mailbox| MailboxView {
                name: &mailbox.name,
                messages: mailbox.messages,
                unseen: mailbox.unseen,
                uid_validity: mailbox.uid_validity,
                uid_next: mailbox.uid_next,
            })
            .collect(),
        incoming_pending: status.incoming_pending,
        undecryptable: status.undecryptable,
        incoming_problems: status
            .incoming_problems
            .iter()
            .map(|problem| IncomingProblemView {
                item: &problem.item,
                attempts: problem.attempts,
                last_error: &problem.last_error,
            })
            .collect(),
        queue: queue.iter().map(QueueEntryView::from).collect(),
    };
    if json {
        return print_json(&view);
    }
    println!("{address}");
    let mut rows = vec![["MAILBOX", "MESSAGES", "UNSEEN"].map(String::from).to_vec()];
    for mailbox in &view.mailboxes {
        rows.push(vec![mailbox.name.to_owned(), mailbox.messages.to_string(), mailbox.unseen.to_string()]);
    }
    print_table(&rows, "  ");
    println!("  incoming, not yet filed: {}", view.incoming_pending);
    for problem in &view.incoming_problems {
        println!("    item {}: {} failed attempts, last: {}", problem.item, problem.attempts, problem.last_error);
    }
    if view.undecryptable > 0 {
        println!("  filed undecrypted: {}", view.undecryptable);
    }
    let waiting = view.queue.iter().filter(|entry| entry.state != "failed").count();
    println!("  outgoing queue: {waiting} waiting, {} failed", view.queue.len() - waiting);
    print_queue(&view.queue, "  ");
}
