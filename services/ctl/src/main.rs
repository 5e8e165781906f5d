//! `bitmaskctl`: the command line over bitmaskd's Core API (`core.sock`).
//!
//! Exit codes: 0 success, 1 the request failed (unknown account, port in
//! use, ...), 64 bad arguments, 69 bitmaskd is not running.

mod output;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use bitmask_proto::core::v1 as pb;
use bitmask_proto::core::v1::core_client::CoreClient;
use bitmask_proto::keys::v1 as keys_pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::mail::v1 as mail_pb;
use bitmask_proto::mail::v1::mail_client::MailClient;
use bitmask_proto::smtp::v1 as smtp_pb;
use bitmask_proto::smtp::v1::smtp_client::SmtpClient;
use bitmask_runtime::client::TracedChannel;
use bitmask_runtime::{CommonArgs, ServiceKind};
use clap::{Parser, Subcommand, ValueEnum};
use tonic::Code;
use tracing::Instrument as _;
use zeroize::Zeroizing;

const EXIT_USAGE: u8 = 64;
const EXIT_UNAVAILABLE: u8 = 69;

/// Control bitmask: end-to-end encrypted mail for ordinary mail clients.
#[derive(Debug, Parser)]
#[command(name = "bitmaskctl", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add, list, start, stop and remove accounts
    #[command(subcommand)]
    Account(AccountCommand),
    /// Sync the account's store with its provider now, showing progress
    Sync { address: String },
    /// The OpenPGP keys of a started account
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The account's mail: the token mail clients log in with
    #[command(subcommand)]
    Mail(MailCommand),
    /// Every account (or one) and the state of each of its services
    Status {
        address: Option<String>,
        /// Print the status again whenever it changes, until interrupted
        #[arg(long)]
        watch: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Add an account (a local one is not started; one at a provider is
    /// signed up for or logged in to, and started)
    Add(Box<AddArgs>),
    /// List the accounts
    List,
    /// Start the account's services, wait until all are serving, and unlock
    /// its store with the passphrase (asked on the terminal, or read from
    /// --passphrase-file or standard input). The first start creates the
    /// storage secrets and shows a recovery code once.
    Start {
        address: String,
        /// Read the passphrase from the first line of FILE
        #[arg(long, value_name = "FILE", conflicts_with = "locked")]
        passphrase_file: Option<PathBuf>,
        /// Start the services without unlocking the store
        #[arg(long)]
        locked: bool,
    },
    /// Stop the account's services
    Stop { address: String },
    /// Change the passphrase of a started account's store. Asks on the
    /// terminal; otherwise reads two lines from standard input: the current
    /// passphrase (or the recovery code), then the new one.
    Passphrase {
        address: String,
        /// Prove it with the recovery code instead of the current passphrase
        #[arg(long)]
        recovery_code: bool,
    },
    /// Remove a stopped account (its data stays unless --purge)
    Remove {
        address: String,
        /// Delete the account's data too
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Debug, Subcommand)]
enum MailCommand {
    /// Print the mail token: the password for IMAP and SMTP in a mail client
    Token { address: String },
    /// The outgoing queue: what is waiting to be relayed, and why
    Queue {
        address: String,
        /// Try every waiting message now instead of at its next attempt
        #[arg(long, conflicts_with = "cancel")]
        flush: bool,
        /// Remove this message from the queue without sending it
        #[arg(long, value_name = "QUEUE_ID")]
        cancel: Option<String>,
    },
    /// The mailboxes (messages, unseen), incoming mail and the outgoing queue
    Status { address: String },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Every key the account knows (or those of one address)
    List {
        account: String,
        /// Only the keys of this address
        #[arg(long = "for", value_name = "ADDRESS")]
        address: Option<String>,
    },
    /// Print a key, armored (the public part unless --secret)
    Export {
        account: String,
        /// The active key of this address [default: the account's own]
        #[arg(long, conflicts_with = "fingerprint")]
        address: Option<String>,
        #[arg(long)]
        fingerprint: Option<String>,
        /// Include the secret key material
        #[arg(long)]
        secret: bool,
    },
    /// Import keys from a file (armored or binary), by the replacement rules
    Import {
        account: String,
        file: PathBuf,
        /// Import it for this address only
        #[arg(long)]
        address: Option<String>,
    },
    /// Look the key of an address up (provider directory, WKD)
    Fetch { account: String, address: String },
    /// Delete a key (not the account's own active key)
    Delete { account: String, fingerprint: String },
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    /// The mail address, e.g. alice@example.org
    address: String,
    /// IMAP port on the bind address [default: the first free from 1984]
    #[arg(long, value_name = "N")]
    imap_port: Option<u16>,
    /// SMTP port on the bind address [default: the first free from 2013]
    #[arg(long, value_name = "N")]
    smtp_port: Option<u16>,
    /// Address the gateways listen on
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    bind_address: String,
    /// The provider, https://HOST:PORT: its CA is fetched and pinned, and the
    /// account signed up for (or logged in to, on a second device)
    #[arg(long, value_name = "URL", conflicts_with = "relay")]
    provider: Option<String>,
    /// Pin this CA certificate (PEM) instead of fetching the provider's
    #[arg(long, value_name = "FILE", requires = "provider")]
    provider_ca: Option<PathBuf>,
    /// Refuse the provider unless its CA has this SHA-256 fingerprint (hex)
    #[arg(long, value_name = "HEX", requires = "provider")]
    ca_fingerprint: Option<String>,
    /// With --provider: read the passphrase from this file (else the terminal or standard input)
    #[arg(long, value_name = "FILE", requires = "provider")]
    passphrase_file: Option<PathBuf>,
    /// With --provider: the invite code the provider's operator gave (`bitmask-provider invite`),
    /// for a provider that signs up by invitation
    #[arg(long, value_name = "CODE", requires = "provider")]
    invite: Option<String>,
    /// Relay outgoing mail through HOST:PORT instead of the provider
    #[arg(long, value_name = "HOST:PORT")]
    relay: Option<String>,
    /// How to reach the relay
    #[arg(long, value_enum, default_value_t = RelayTlsArg::Starttls, requires = "relay")]
    relay_tls: RelayTlsArg,
    /// PEM file with the CA certificate to trust for the relay
    #[arg(long, value_name = "FILE", requires = "relay")]
    relay_ca: Option<PathBuf>,
    /// PEM file with the client certificate to present to the relay
    #[arg(long, value_name = "FILE", requires_all = ["relay", "relay_client_key"])]
    relay_client_cert: Option<PathBuf>,
    /// PEM file with the private key of --relay-client-cert
    #[arg(long, value_name = "FILE", requires = "relay_client_cert")]
    relay_client_key: Option<PathBuf>,
    /// Refuse to send to recipients whose key is unknown (default: sign only)
    #[arg(long)]
    encrypted_only: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RelayTlsArg {
    None,
    Starttls,
    Tls,
}

/// A failure, with the exit code it means.
struct Failure {
    code: u8,
    message: String,
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        let code = match status.code() {
            Code::InvalidArgument => EXIT_USAGE,
            Code::Unavailable => EXIT_UNAVAILABLE,
            _ => 1,
        };
        Failure { code, message: status.message().to_owned() }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Quiet by default: a command line prints its results, not logs. With
    // OTEL_EXPORTER_OTLP_ENDPOINT set, the command is the root of the trace
    // that bitmaskd and the services continue.
    let telemetry = bitmask_runtime::telemetry::init("bitmaskctl", "warn");
    let span = tracing::info_span!("bitmaskctl", command = %command_name(&cli.command));
    let result = run(cli).instrument(span).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("bitmaskctl: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Account(AccountCommand::Add(_)) => "account add",
        Command::Account(AccountCommand::List) => "account list",
        Command::Account(AccountCommand::Start { .. }) => "account start",
        Command::Account(AccountCommand::Stop { .. }) => "account stop",
        Command::Account(AccountCommand::Passphrase { .. }) => "account passphrase",
        Command::Account(AccountCommand::Remove { .. }) => "account remove",
        Command::Status { .. } => "status",
        Command::Sync { .. } => "sync",
        Command::Keys(_) => "keys",
        Command::Mail(_) => "mail",
    }
}

async fn connect(common: &CommonArgs) -> Result<CoreClient<TracedChannel>, Failure> {
    let paths = common.paths().map_err(|error| Failure { code: EXIT_USAGE, message: error.to_string() })?;
    let socket = paths.core_socket();
    let channel = bitmask_runtime::client::connect_unix(&socket).await.map_err(|_| Failure {
        code: EXIT_UNAVAILABLE,
        message: format!("bitmaskd is not running (nothing answers on {}); start it with `bitmaskd`", socket.display()),
    })?;
    Ok(CoreClient::new(bitmask_runtime::client::traced(channel)))
}

/// The provider's CA certificate to pin: from `file`, or fetched from the
/// provider (trust on first use: its fingerprint is shown, and checked
/// against `fingerprint` when given). bitmaskd then checks that the provider
/// really serves a certificate of this CA.
async fn provider_ca(
    url: &str,
    file: Option<&std::path::Path>,
    fingerprint: Option<&str>,
    json: bool,
) -> Result<String, Failure> {
    let unavailable = |message: String| Failure { code: EXIT_UNAVAILABLE, message };
    let pem =
        match file {
            Some(path) => std::fs::read_to_string(path).map_err(|error| Failure {
                code: EXIT_USAGE,
                message: format!("--provider-ca {}: {error}", path.display()),
            })?,
            None => {
                let client = reqwest::Client::builder()
                    .danger_accept_invalid_certs(true)
                    .timeout(std::time::Duration::from_secs(20))
                    .build()
                    .map_err(|error| unavailable(format!("an HTTPS client: {error}")))?;
                let location = format!("{}/ca.crt", url.trim_end_matches('/'));
                let response =
                    client.get(&location).send().await.and_then(|response| response.error_for_status()).map_err(
                        |error| unavailable(format!("cannot fetch the provider's CA from {location}: {error}")),
                    )?;
                response.text().await.map_err(|error| unavailable(format!("reading {location}: {error}")))?
            }
        };
    let actual = bitmask_runtime::provider::ca_fingerprint(&pem)?;
    if let Some(expected) = fingerprint {
        let expected: String = expected.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(Failure {
                code: 1,
                message: format!("the provider's CA has fingerprint {actual}, not {expected}: refused"),
            });
        }
    }
    if !json {
        eprintln!("Provider CA (SHA-256): {actual}{}", if fingerprint.is_some() { " (as expected)" } else { "" });
    }
    Ok(pem)
}

/// The passphrase from a file, the terminal, or standard input, in that order.
fn read_passphrase(address: &str, file: Option<PathBuf>) -> Result<Zeroizing<String>, Failure> {
    let usage = |message: String| Failure { code: EXIT_USAGE, message };
    let text = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|error| usage(format!("--passphrase-file {}: {error}", path.display())))?,
        ),
        None if std::io::stdin().is_terminal() => Zeroizing::new(
            rpassword::prompt_password(format!("Passphrase for {address}: "))
                .map_err(|error| usage(format!("cannot read the passphrase: {error}")))?,
        ),
        None => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|error| usage(format!("cannot read standard input: {error}")))?;
            line
        }
    };
    let passphrase = Zeroizing::new(text.lines().next().unwrap_or_default().to_owned());
    if passphrase.is_empty() {
        return Err(usage(
            "no passphrase given (on the terminal, --passphrase-file or standard input); --locked starts without one"
                .into(),
        ));
    }
    Ok(passphrase)
}

/// The current secret and the new passphrase, asked on the terminal (the new
/// one twice) or read as two lines from standard input.
fn read_passphrase_change(
    address: &str,
    recovery_code: bool,
) -> Result<(Zeroizing<String>, Zeroizing<String>), Failure> {
    let usage = |message: String| Failure { code: EXIT_USAGE, message };
    let current = if recovery_code { "Recovery code" } else { "Current passphrase" };
    let (old, new) = if std::io::stdin().is_terminal() {
        let ask = |prompt: String| {
            rpassword::prompt_password(prompt)
                .map(Zeroizing::new)
                .map_err(|error| usage(format!("cannot read: {error}")))
        };
        let old = ask(format!("{current} for {address}: "))?;
        let new = ask("New passphrase: ".into())?;
        if *ask("New passphrase again: ".into())? != *new {
            return Err(usage("the two new passphrases differ; nothing changed".into()));
        }
        (old, new)
    } else {
        let mut lines = (Zeroizing::new(String::new()), Zeroizing::new(String::new()));
        for line in [&mut lines.0, &mut lines.1] {
            std::io::stdin().read_line(line).map_err(|error| usage(format!("cannot read standard input: {error}")))?;
            let kept = line.trim_end_matches(['\r', '\n']).len();
            line.truncate(kept);
        }
        lines
    };
    if old.is_empty() || new.is_empty() {
        return Err(usage(format!("give the {} and the new passphrase", current.to_lowercase())));
    }
    Ok((old, new))
}

async fn keys_client(common: &CommonArgs, account: &str) -> Result<KeysClient<TracedChannel>, Failure> {
    let paths = common.paths().map_err(|error| Failure { code: EXIT_USAGE, message: error.to_string() })?;
    let socket = paths
        .account(account)
        .map_err(|error| Failure { code: EXIT_USAGE, message: error.to_string() })?
        .socket(ServiceKind::Keys);
    let channel = bitmask_runtime::client::connect_unix(&socket).await.map_err(|_| Failure {
        code: 1,
        message: format!("the key service of {account} is not running: start the account first"),
    })?;
    Ok(KeysClient::new(bitmask_runtime::client::traced(channel)))
}

async fn run_keys(common: &CommonArgs, command: KeysCommand, json: bool) -> Result<(), Failure> {
    match command {
        KeysCommand::List { account, address } => {
            let mut keys = keys_client(common, &account).await?;
            let request = keys_pb::ListKeysRequest { address: address.unwrap_or_default(), only_secret: false };
            output::keys(&keys.list_keys(request).await?.into_inner().keys, json);
        }
        KeysCommand::Export { account, address, fingerprint, secret } => {
            let mut keys = keys_client(common, &account).await?;
            let selector = match fingerprint {
                Some(fingerprint) => keys_pb::export_key_request::Selector::Fingerprint(fingerprint),
                None => keys_pb::export_key_request::Selector::Address(address.unwrap_or_else(|| account.clone())),
            };
            let request = keys_pb::ExportKeyRequest { selector: Some(selector), include_secret: secret, armor: true };
            let data = keys.export_key(request).await?.into_inner().data;
            output::raw(&data);
        }
        KeysCommand::Import { account, file, address } => {
            let data = std::fs::read(&file)
                .map_err(|error| Failure { code: EXIT_USAGE, message: format!("{}: {error}", file.display()) })?;
            let mut keys = keys_client(common, &account).await?;
            let request = keys_pb::ImportKeyRequest {
                data,
                source: keys_pb::KeySource::Imported.into(),
                validation: 0,
                address: address.unwrap_or_default(),
            };
            let results = keys.import_key(request).await?.into_inner().results;
            output::imported(&results, json);
            if results.iter().any(|result| !result.imported) {
                return Err(Failure { code: 1, message: "some keys were refused".into() });
            }
        }
        KeysCommand::Fetch { account, address } => {
            let mut keys = keys_client(common, &account).await?;
            let reply = keys.fetch_key(keys_pb::FetchKeyRequest { address: address.clone() }).await?.into_inner();
            let refused = reply.result.as_ref().filter(|result| !result.imported).map(|result| result.reason.clone());
            match reply.key {
                Some(key) => output::keys(&[key], json),
                None => {
                    let mut message = format!("no key found for {address}; asked: {}", reply.tried.join("; "));
                    if let Some(reason) = refused {
                        message.push_str(&format!("; refused: {reason}"));
                    }
                    return Err(Failure { code: 1, message });
                }
            }
        }
        KeysCommand::Delete { account, fingerprint } => {
            let mut keys = keys_client(common, &account).await?;
            keys.delete_key(keys_pb::DeleteKeyRequest { fingerprint: fingerprint.clone() }).await?;
            output::removed_key(&fingerprint, json);
        }
    }
    Ok(())
}

/// A channel to one of the account's services, straight to its socket.
async fn service_channel(common: &CommonArgs, account: &str, kind: ServiceKind) -> Result<TracedChannel, Failure> {
    let paths = common.paths().map_err(|error| Failure { code: EXIT_USAGE, message: error.to_string() })?;
    let socket =
        paths.account(account).map_err(|error| Failure { code: EXIT_USAGE, message: error.to_string() })?.socket(kind);
    let channel = bitmask_runtime::client::connect_unix(&socket).await.map_err(|_| Failure {
        code: 1,
        message: format!("the {} service of {account} is not running: start the account first", kind.name()),
    })?;
    Ok(bitmask_runtime::client::traced(channel))
}

async fn run_mail(common: &CommonArgs, command: MailCommand, json: bool) -> Result<(), Failure> {
    match command {
        MailCommand::Queue { address, flush, cancel } => {
            let mut smtp = SmtpClient::new(service_channel(common, &address, ServiceKind::Smtp).await?);
            if flush {
                smtp.flush_queue(smtp_pb::FlushQueueRequest {}).await?;
            }
            if let Some(queue_id) = cancel {
                smtp.cancel_queued(smtp_pb::CancelQueuedRequest { queue_id }).await?;
            }
            let entries = smtp.list_queue(smtp_pb::ListQueueRequest {}).await?.into_inner().entries;
            output::queue(&entries, json);
        }
        MailCommand::Status { address } => {
            let mut mail = MailClient::new(service_channel(common, &address, ServiceKind::Imap).await?);
            let status = mail.get_mail_status(mail_pb::GetMailStatusRequest {}).await?.into_inner();
            let mut smtp = SmtpClient::new(service_channel(common, &address, ServiceKind::Smtp).await?);
            let queue = smtp.list_queue(smtp_pb::ListQueueRequest {}).await?.into_inner().entries;
            output::mail_status(&address, &status, &queue, json);
        }
        MailCommand::Token { .. } => unreachable!("asked of bitmaskd"),
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::Keys(command) = cli.command {
        return run_keys(&cli.common, command, cli.json).await;
    }
    if let Command::Mail(command @ (MailCommand::Queue { .. } | MailCommand::Status { .. })) = cli.command {
        return run_mail(&cli.common, command, cli.json).await;
    }
    let mut core = connect(&cli.common).await?;
    let json = cli.json;
    match cli.command {
        Command::Account(AccountCommand::Add(args)) => {
            let absolute = |option: &str, path: Option<PathBuf>| -> Result<String, Failure> {
                match path {
                    Some(path) => Ok(std::path::absolute(&path)
                        .map_err(|error| Failure {
                            code: EXIT_USAGE,
                            message: format!("{option} {}: {error}", path.display()),
                        })?
                        .display()
                        .to_string()),
                    None => Ok(String::new()),
                }
            };
            let relay_ca = absolute("--relay-ca", args.relay_ca)?;
            let client_cert_file = absolute("--relay-client-cert", args.relay_client_cert)?;
            let client_key_file = absolute("--relay-client-key", args.relay_client_key)?;
            let provider_ca_pem = match &args.provider {
                Some(url) => {
                    provider_ca(url, args.provider_ca.as_deref(), args.ca_fingerprint.as_deref(), json).await?
                }
                None => String::new(),
            };
            let passphrase = match &args.provider {
                Some(_) => Some(read_passphrase(&args.address, args.passphrase_file.clone())?),
                None => None,
            };
            let address = args.address.clone();
            let request = pb::AddAccountRequest {
                provider_ca_pem,
                address: args.address,
                imap_port: args.imap_port.map(u32::from).unwrap_or(0),
                smtp_port: args.smtp_port.map(u32::from).unwrap_or(0),
                provider_url: args.provider.unwrap_or_default(),
                relay: args.relay.map(|address| pb::RelayConfig {
                    address,
                    tls: match args.relay_tls {
                        RelayTlsArg::None => pb::RelayTls::None,
                        RelayTlsArg::Starttls => pb::RelayTls::Starttls,
                        RelayTlsArg::Tls => pb::RelayTls::Tls,
                    }
                    .into(),
                    ca_file: relay_ca,
                    client_cert_file,
                    client_key_file,
                }),
                encryption_policy: if args.encrypted_only {
                    pb::EncryptionPolicy::EncryptedOnly
                } else {
                    pb::EncryptionPolicy::Opportunistic
                }
                .into(),
                bind_address: args.bind_address,
                invite_code: args.invite.unwrap_or_default(),
            };
            let account = core.add_account(request).await?.into_inner();
            output::account_added(&account, json);
            if let Some(passphrase) = passphrase {
                // Sign up or log in, create the store, the key (published)
                // and the mail token: the account is ready to use.
                let request = pb::StartAccountRequest {
                    address: address.clone(),
                    passphrase: passphrase.to_string(),
                    locked: false,
                };
                match core.start_account(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        output::account_started(&reply.status.unwrap_or_default(), &reply.recovery_code, json);
                    }
                    Err(status) => {
                        // Nothing is left half set up: the next try starts afresh.
                        let _ = core.remove_account(pb::RemoveAccountRequest { address, purge_data: true }).await;
                        return Err(status.into());
                    }
                }
            }
        }
        Command::Account(AccountCommand::List) => {
            let accounts = core.list_accounts(pb::ListAccountsRequest {}).await?.into_inner().accounts;
            output::accounts(&accounts, json);
        }
        Command::Account(AccountCommand::Start { address, passphrase_file, locked }) => {
            // An unknown account fails before the passphrase is asked for.
            core.get_status(pb::GetStatusRequest { address: address.clone() }).await?;
            let passphrase =
                if locked { Zeroizing::new(String::new()) } else { read_passphrase(&address, passphrase_file)? };
            let request = pb::StartAccountRequest { address, passphrase: passphrase.to_string(), locked };
            let reply = core.start_account(request).await?.into_inner();
            let status = reply.status.unwrap_or_default();
            output::account_started(&status, &reply.recovery_code, json);
        }
        Command::Account(AccountCommand::Passphrase { address, recovery_code }) => {
            let (old, new) = read_passphrase_change(&address, recovery_code)?;
            let (old_passphrase, code) =
                if recovery_code { (String::new(), old.to_string()) } else { (old.to_string(), String::new()) };
            let request = pb::ChangePassphraseRequest {
                address: address.clone(),
                old_passphrase,
                new_passphrase: new.to_string(),
                recovery_code: code,
            };
            core.change_passphrase(request).await?;
            output::passphrase_changed(&address, json);
        }
        Command::Account(AccountCommand::Stop { address }) => {
            let status = core.stop_account(pb::StopAccountRequest { address }).await?.into_inner();
            output::account_status(&status, "stopped", json);
        }
        Command::Account(AccountCommand::Remove { address, purge }) => {
            core.remove_account(pb::RemoveAccountRequest { address: address.clone(), purge_data: purge }).await?;
            output::removed(&address, purge, json);
        }
        Command::Mail(MailCommand::Token { address }) => {
            let token = core.get_mail_token(pb::GetMailTokenRequest { address }).await?.into_inner().token;
            output::token(&Zeroizing::new(token), json);
        }
        Command::Sync { address } => {
            let mut progress = core.sync(pb::SyncRequest { address: address.clone() }).await?.into_inner();
            let mut printer = output::SyncPrinter::new(json);
            while let Some(update) = progress.message().await? {
                printer.update(&update);
            }
            printer.finish();
        }
        Command::Status { address, watch: false } => {
            let request = pb::GetStatusRequest { address: address.unwrap_or_default() };
            let status = core.get_status(request).await?.into_inner();
            output::status(&status.accounts, json);
        }
        Command::Keys(_) | Command::Mail(MailCommand::Queue { .. } | MailCommand::Status { .. }) => {
            unreachable!("handled above")
        }
        Command::Status { address, watch: true } => {
            let request = pb::WatchStatusRequest { address: address.unwrap_or_default() };
            let mut updates = core.watch_status(request).await?.into_inner();
            while let Some(account) = updates.message().await? {
                output::status(std::slice::from_ref(&account), json);
            }
        }
    }
    Ok(())
}
