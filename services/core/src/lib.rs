//! bitmaskd: the Core gRPC API over the [`Supervisor`].
//!
//! This is the service edge: requests are checked and converted into the
//! supervisor's domain types here, and its errors into gRPC statuses.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bitmask_proto::core::v1 as pb;
use bitmask_proto::core::v1::core_server::{Core, CoreServer};
use bitmask_proto::keys::v1 as keys_pb;
use bitmask_proto::keys::v1::keys_client::KeysClient;
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::TracedChannel;
use bitmask_runtime::server::{BoundSocket, GrpcServer, ServerError};
use bitmask_runtime::{Paths, ServiceKind};
use bitmask_supervisor::{
    AccountConfig, AccountState, AccountStatus, EncryptionPolicy, NewAccount, RelayConfig, RelayTls, RestartHook,
    ServiceState, ServiceStatus, Supervisor, SupervisorError,
};
use tonic::server::NamedService as _;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

pub mod provider;

/// How long a start waits for the account key to appear in the provider's directory.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves the Core API on `socket` until `shutdown`, then stops every account.
pub async fn run(
    supervisor: Supervisor,
    socket: BoundSocket,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let passphrases = Passphrases::default();
    supervisor.set_restart_hook(Arc::new(UnlockRestartedStore {
        paths: supervisor.paths().clone(),
        passphrases: passphrases.clone(),
    }));
    let mut server = GrpcServer::new(&[CoreServer::<CoreService>::NAME])?;
    server.routes().add_service(CoreServer::new(CoreService { supervisor: supervisor.clone(), passphrases }));
    let result = server.serve(socket, shutdown).await;
    supervisor.stop_all().await;
    result
}

/// The passphrases of the unlocked accounts, held in memory only (zeroized
/// when dropped) so that a store the supervisor restarts is unlocked again.
#[derive(Clone, Default)]
struct Passphrases(Arc<Mutex<HashMap<String, Zeroizing<String>>>>);

impl std::fmt::Debug for Passphrases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrases(<redacted>)")
    }
}

impl Passphrases {
    fn get(&self, address: &str) -> Option<Zeroizing<String>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(address).cloned()
    }

    /// The status as the API reports it: locked unless we unlocked it.
    fn status_to_pb(&self, status: AccountStatus) -> pb::AccountStatus {
        let unlocked = self.get(&status.address).is_some();
        pb::AccountStatus { locked: !unlocked, ..account_status_to_pb(status) }
    }

    fn set(&self, address: &str, passphrase: Option<Zeroizing<String>>) {
        let mut map = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match passphrase {
            Some(passphrase) => map.insert(address.to_owned(), passphrase),
            None => map.remove(address),
        };
    }
}

/// Unlocks the store of `address`: creates its secrets on first use (and
/// returns the recovery code), otherwise checks the passphrase.
/// A channel to one of the account's services.
async fn service_channel(paths: &Paths, address: &str, kind: ServiceKind) -> Result<TracedChannel, Status> {
    let socket = paths.account(address).map_err(|error| Status::invalid_argument(error.to_string()))?.socket(kind);
    let channel = bitmask_runtime::client::connect_unix(&socket)
        .await
        .map_err(|error| Status::unavailable(format!("cannot reach the {kind} service of {address}: {error}")))?;
    Ok(bitmask_runtime::client::traced(channel))
}

async fn store_client(paths: &Paths, address: &str) -> Result<StoreClient<TracedChannel>, Status> {
    Ok(StoreClient::new(service_channel(paths, address, ServiceKind::Store).await?))
}

/// Asks the key service for the account key, generating it the first time.
async fn ensure_account_key(paths: &Paths, address: &str) -> Result<(), Status> {
    let mut keys = KeysClient::new(service_channel(paths, address, ServiceKind::Keys).await?);
    let request = keys_pb::EnsureAccountKeyRequest::default();
    let key = tokio::time::timeout(std::time::Duration::from_secs(60), keys.ensure_account_key(request))
        .await
        .map_err(|_| Status::deadline_exceeded("the key service took too long"))??;
    tracing::info!(account = %address, fingerprint = %key.into_inner().fingerprint, "account key ready");
    Ok(())
}

async fn unlock_store(
    paths: &Paths,
    address: &str,
    passphrase: &str,
    provider: Option<&provider::Provider>,
) -> Result<Option<String>, Status> {
    let mut store = store_client(paths, address).await?;
    let state = store.get_state(store_pb::GetStateRequest {}).await?.into_inner().state();
    if let Some(provider) = provider {
        // At the provider: sign up or log in first, then the store.
        if state == store_pb::store_state::State::Uninitialized {
            return Ok(match provider::first_start(provider, address, passphrase, &mut store).await? {
                provider::FirstStart::SignedUp { recovery_code } => Some(recovery_code),
                provider::FirstStart::Restored => None,
            });
        }
        let credential = store_pb::unlock_request::Credential::Passphrase(passphrase.to_owned());
        store.unlock(store_pb::UnlockRequest { credential: Some(credential) }).await?;
        provider::resume(provider, address, passphrase, &mut store).await?;
        return Ok(None);
    }
    if state == store_pb::store_state::State::Uninitialized {
        let reply = store
            .initialize(store_pb::InitializeRequest { passphrase: passphrase.to_owned(), from_provider: false })
            .await?;
        return Ok(Some(reply.into_inner().recovery_code));
    }
    let credential = store_pb::unlock_request::Credential::Passphrase(passphrase.to_owned());
    store.unlock(store_pb::UnlockRequest { credential: Some(credential) }).await?;
    Ok(None)
}

#[derive(Debug)]
struct UnlockRestartedStore {
    paths: Paths,
    passphrases: Passphrases,
}

impl RestartHook for UnlockRestartedStore {
    fn restarted(&self, address: &str, kind: ServiceKind) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let passphrase = self.passphrases.get(address).filter(|_| kind == ServiceKind::Store);
        let (paths, address) = (self.paths.clone(), address.to_owned());
        Box::pin(async move {
            let Some(passphrase) = passphrase else { return };
            match unlock_store(&paths, &address, &passphrase, None).await {
                Ok(_) => tracing::info!(account = %address, "unlocked the restarted store"),
                Err(status) => {
                    tracing::error!(account = %address, error = %status.message(), "cannot unlock the restarted store")
                }
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct CoreService {
    supervisor: Supervisor,
    passphrases: Passphrases,
}

impl CoreService {
    /// The provider of a provider account (None for a local-only one).
    fn provider_of(&self, address: &str) -> Result<Option<provider::Provider>, Status> {
        let Some(account) = self.supervisor.accounts().into_iter().find(|account| account.address == address) else {
            return Ok(None);
        };
        let Some(url) = account.provider_url else { return Ok(None) };
        let data_dir =
            self.supervisor.paths().account(address).map_err(|error| Status::internal(error.to_string()))?.data_dir;
        provider::Provider::load(&url, &data_dir).map(Some)
    }

    /// Fails unless the account's services run.
    fn running_store(&self, address: &str) -> Result<(), Status> {
        let status = self.supervisor.status(Some(address)).map_err(status_of)?;
        if status.first().is_none_or(|status| status.state == AccountState::Stopped) {
            return Err(Status::failed_precondition(format!("account {address} is stopped: start it first")));
        }
        Ok(())
    }

    /// Adds the store's last sync to a running account's status.
    async fn with_sync_status(&self, mut status: pb::AccountStatus) -> pb::AccountStatus {
        if status.state() == pb::AccountState::Stopped {
            return status;
        }
        let query = async {
            let mut store = store_client(self.supervisor.paths(), &status.address).await.ok()?;
            store.get_sync_status(store_pb::GetSyncStatusRequest {}).await.ok().map(tonic::Response::into_inner)
        };
        if let Ok(Some(sync)) = tokio::time::timeout(std::time::Duration::from_secs(1), query).await {
            status.last_sync_time = sync.last_sync_time;
            status.last_sync_result = sync.last_result;
            status.quarantined =
                sync.quarantined.into_iter().map(|refused| format!("{}: {}", refused.id, refused.reason)).collect();
        }
        status
    }
}

fn status_of(error: SupervisorError) -> Status {
    let message = error.to_string();
    match error {
        SupervisorError::UnknownAccount(_) => Status::not_found(message),
        SupervisorError::DuplicateAccount(_) => Status::already_exists(message),
        SupervisorError::InvalidAddress(_) | SupervisorError::InvalidArgument(_) => Status::invalid_argument(message),
        SupervisorError::PortTaken { .. } | SupervisorError::PortInUse { .. } | SupervisorError::AccountRunning(_) => {
            Status::failed_precondition(message)
        }
        SupervisorError::StartFailed { .. } => Status::deadline_exceeded(message),
        SupervisorError::Io { .. } | SupervisorError::Config(_) => Status::internal(message),
    }
}

fn port(value: u32, name: &str) -> Result<Option<u16>, Status> {
    match value {
        0 => Ok(None),
        value => u16::try_from(value)
            .map(Some)
            .map_err(|_| Status::invalid_argument(format!("{name} {value} is not a TCP port"))),
    }
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// Checks an AddAccount request and turns it into the supervisor's terms.
fn new_account(request: pb::AddAccountRequest) -> Result<NewAccount, Status> {
    {
        let bind_address = match non_empty(request.bind_address) {
            None => None,
            Some(text) => Some(
                text.parse::<IpAddr>()
                    .map_err(|_| Status::invalid_argument(format!("bind address {text:?} is not an IP address")))?,
            ),
        };
        let relay = match request.relay {
            Some(relay) if !relay.address.is_empty() => Some(RelayConfig {
                address: relay.address,
                tls: match pb::RelayTls::try_from(relay.tls).unwrap_or_default() {
                    pb::RelayTls::None => RelayTls::None,
                    pb::RelayTls::Tls => RelayTls::Tls,
                    pb::RelayTls::Starttls | pb::RelayTls::Unspecified => RelayTls::Starttls,
                },
                ca_file: non_empty(relay.ca_file).map(PathBuf::from),
                client_cert_file: non_empty(relay.client_cert_file).map(PathBuf::from),
                client_key_file: non_empty(relay.client_key_file).map(PathBuf::from),
            }),
            _ => None,
        };
        let encryption_policy = match pb::EncryptionPolicy::try_from(request.encryption_policy).unwrap_or_default() {
            pb::EncryptionPolicy::EncryptedOnly => EncryptionPolicy::EncryptedOnly,
            pb::EncryptionPolicy::Opportunistic | pb::EncryptionPolicy::Unspecified => EncryptionPolicy::Opportunistic,
        };
        Ok(NewAccount {
            address: request.address,
            imap_port: port(request.imap_port, "imap_port")?,
            smtp_port: port(request.smtp_port, "smtp_port")?,
            bind_address,
            provider_url: non_empty(request.provider_url),
            relay,
            encryption_policy,
        })
    }
}

fn account_to_pb(account: AccountConfig) -> pb::Account {
    pb::Account {
        address: account.address,
        imap_port: account.imap_port.into(),
        smtp_port: account.smtp_port.into(),
        provider_url: account.provider_url.unwrap_or_default(),
        relay: account.relay.map(|relay| pb::RelayConfig {
            address: relay.address,
            tls: match relay.tls {
                RelayTls::None => pb::RelayTls::None,
                RelayTls::Starttls => pb::RelayTls::Starttls,
                RelayTls::Tls => pb::RelayTls::Tls,
            }
            .into(),
            ca_file: relay.ca_file.map(|path| path.display().to_string()).unwrap_or_default(),
            client_cert_file: relay.client_cert_file.map(|path| path.display().to_string()).unwrap_or_default(),
            client_key_file: relay.client_key_file.map(|path| path.display().to_string()).unwrap_or_default(),
        }),
        encryption_policy: match account.encryption_policy {
            EncryptionPolicy::Opportunistic => pb::EncryptionPolicy::Opportunistic,
            EncryptionPolicy::EncryptedOnly => pb::EncryptionPolicy::EncryptedOnly,
        }
        .into(),
        bind_address: account.bind_address.to_string(),
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

fn service_to_pb(status: ServiceStatus) -> pb::ServiceStatus {
    pb::ServiceStatus {
        kind: match status.kind {
            ServiceKind::Store => pb::ServiceKind::Store,
            ServiceKind::Keys => pb::ServiceKind::Keys,
            ServiceKind::Imap => pb::ServiceKind::Imap,
            ServiceKind::Smtp => pb::ServiceKind::Smtp,
        }
        .into(),
        state: match status.state {
            ServiceState::Stopped => pb::ServiceState::Stopped,
            ServiceState::Starting => pb::ServiceState::Starting,
            ServiceState::Serving => pb::ServiceState::Serving,
            ServiceState::Backoff => pb::ServiceState::Backoff,
            ServiceState::Failing => pb::ServiceState::Failing,
            ServiceState::Stopping => pb::ServiceState::Stopping,
        }
        .into(),
        pid: status.pid.unwrap_or(0),
        restarts: status.restarts,
        socket: status.socket.display().to_string(),
        last_exit: status.last_exit.unwrap_or_default(),
        last_exit_time: status.last_exit_time.map(timestamp),
        next_start_time: status.next_start_time.map(timestamp),
        message: status.message.unwrap_or_default(),
        since: Some(timestamp(status.since)),
        port: status.port.map(u32::from).unwrap_or(0),
    }
}

fn account_status_to_pb(status: AccountStatus) -> pb::AccountStatus {
    pb::AccountStatus {
        address: status.address,
        state: match status.state {
            AccountState::Stopped => pb::AccountState::Stopped,
            AccountState::Starting => pb::AccountState::Starting,
            AccountState::Running => pb::AccountState::Running,
            AccountState::Degraded => pb::AccountState::Degraded,
            AccountState::Stopping => pb::AccountState::Stopping,
        }
        .into(),
        services: status.services.into_iter().map(service_to_pb).collect(),
        imap_port: status.imap_port.into(),
        smtp_port: status.smtp_port.into(),
        // Filled in by the store issue (sync status) and the store's lock state.
        last_sync_time: None,
        last_sync_result: String::new(),
        // Set by the caller, which knows which accounts it unlocked.
        locked: true,
        quarantined: Vec::new(),
    }
}

/// Yields, on each state change, the accounts whose status changed.
struct StatusWatcher {
    supervisor: Supervisor,
    passphrases: Passphrases,
    changes: tokio::sync::watch::Receiver<u64>,
    address: Option<String>,
    last: Vec<pb::AccountStatus>,
    first: bool,
}

impl StatusWatcher {
    /// The next non-empty batch of changed statuses; None when bitmaskd stops.
    async fn next_changes(&mut self) -> Option<Vec<Result<pb::AccountStatus, Status>>> {
        loop {
            if !std::mem::take(&mut self.first) {
                self.changes.changed().await.ok()?;
            }
            let current: Vec<pb::AccountStatus> = match self.supervisor.status(self.address.as_deref()) {
                Ok(accounts) => accounts.into_iter().map(|account| self.passphrases.status_to_pb(account)).collect(),
                // The account was removed while watched.
                Err(error) => return Some(vec![Err(status_of(error))]),
            };
            let changed: Vec<_> =
                current.iter().filter(|account| !self.last.contains(account)).cloned().map(Ok).collect();
            self.last = current;
            if !changed.is_empty() {
                return Some(changed);
            }
        }
    }
}

fn required(address: String) -> Result<String, Status> {
    if address.is_empty() { Err(Status::invalid_argument("an account address is required")) } else { Ok(address) }
}

type StatusStream = tonic::codegen::BoxStream<pb::AccountStatus>;
type SyncStream = tonic::codegen::BoxStream<store_pb::SyncProgress>;

#[tonic::async_trait]
impl Core for CoreService {
    async fn add_account(&self, request: Request<pb::AddAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let mut request = request.into_inner();
        if !request.provider_url.is_empty() {
            let data_dir = self
                .supervisor
                .paths()
                .account(&request.address)
                .map_err(|error| Status::invalid_argument(error.to_string()))?
                .data_dir;
            provider::pin(&mut request, &provider::ProviderFiles::new(&data_dir)).await?;
        }
        let account = new_account(request)?;
        let account = self.supervisor.add_account(account).await.map_err(status_of)?;
        // The gateways' STARTTLS certificate exists from now on, so a mail
        // client can pin it before the first start.
        let paths =
            self.supervisor.paths().account(&account.address).map_err(|error| Status::internal(error.to_string()))?;
        if let Err(error) = bitmask_runtime::tls::local_certificate(&paths.data_dir.join("tls")) {
            tracing::warn!(account = %account.address, %error, "no local TLS certificate yet");
        }
        Ok(Response::new(account_to_pb(account)))
    }

    async fn remove_account(
        &self,
        request: Request<pb::RemoveAccountRequest>,
    ) -> Result<Response<pb::RemoveAccountResponse>, Status> {
        let request = request.into_inner();
        let address = required(request.address)?;
        self.supervisor.remove_account(&address, request.purge_data).await.map_err(status_of)?;
        Ok(Response::new(pb::RemoveAccountResponse {}))
    }

    async fn list_accounts(
        &self,
        _request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let accounts = self.supervisor.accounts().into_iter().map(account_to_pb).collect();
        Ok(Response::new(pb::ListAccountsResponse { accounts }))
    }

    async fn start_account(
        &self,
        request: Request<pb::StartAccountRequest>,
    ) -> Result<Response<pb::StartAccountResponse>, Status> {
        let request = request.into_inner();
        let address = required(request.address)?;
        let passphrase = Zeroizing::new(request.passphrase);
        if !request.locked && passphrase.is_empty() {
            return Err(Status::invalid_argument("a passphrase is needed to unlock the store (or start it locked)"));
        }
        let was_running = self
            .supervisor
            .status(Some(&address))
            .map_err(status_of)?
            .first()
            .is_some_and(|status| status.state != AccountState::Stopped);
        let status = self.supervisor.start_account(&address).await.map_err(status_of)?;
        let mut recovery_code = String::new();
        if !request.locked {
            let provider = self.provider_of(&address)?;
            match unlock_store(self.supervisor.paths(), &address, &passphrase, provider.as_ref()).await {
                Ok(code) => {
                    recovery_code = code.unwrap_or_default();
                    // The account key is made on the first unlock (and found after).
                    if let Err(status) = ensure_account_key(self.supervisor.paths(), &address).await {
                        tracing::warn!(account = %address, error = %status.message(), "no account key yet");
                    } else if let Some(provider) = &provider {
                        // The key (made just now, on a first start) goes to the
                        // provider before the start returns: a second device set up
                        // right after would otherwise find no key, make its own
                        // and publish it, and mail to it would not open here.
                        let synced = match store_client(self.supervisor.paths(), &address).await {
                            Ok(mut store) => provider::sync_now(&mut store).await,
                            Err(status) => Err(status),
                        };
                        if let Err(status) = synced {
                            tracing::warn!(account = %address, error = %status.message(), "account key not synced yet");
                        }
                        // Others can write to the account once its key is published.
                        match provider::wait_for_published_key(provider, &address, PUBLISH_WAIT).await {
                            Ok(fingerprint) => {
                                tracing::info!(account = %address, %fingerprint, "account key published")
                            }
                            Err(status) => {
                                tracing::warn!(account = %address, error = %status.message(), "account key not published yet");
                            }
                        }
                    }
                    // So is the mail token.
                    let token = match store_client(self.supervisor.paths(), &address).await {
                        Ok(mut store) => bitmask_mail::token::mail_token(&mut store).await.map(drop),
                        Err(status) => Err(status),
                    };
                    if let Err(status) = token {
                        tracing::warn!(account = %address, error = %status.message(), "no mail token yet");
                    }
                }
                Err(status) => {
                    // Nothing changed: an account this call started stops again.
                    if !was_running {
                        let _ = self.supervisor.stop_account(&address).await;
                    }
                    return Err(status);
                }
            }
            self.passphrases.set(&address, Some(passphrase));
        }
        let status = self.passphrases.status_to_pb(status);
        Ok(Response::new(pb::StartAccountResponse { status: Some(status), recovery_code }))
    }

    async fn stop_account(
        &self,
        request: Request<pb::StopAccountRequest>,
    ) -> Result<Response<pb::AccountStatus>, Status> {
        let address = required(request.into_inner().address)?;
        let status = self.supervisor.stop_account(&address).await.map_err(status_of)?;
        self.passphrases.set(&address, None);
        Ok(Response::new(self.passphrases.status_to_pb(status)))
    }

    async fn change_passphrase(
        &self,
        request: Request<pb::ChangePassphraseRequest>,
    ) -> Result<Response<pb::ChangePassphraseResponse>, Status> {
        let request = request.into_inner();
        let address = required(request.address)?;
        let new_passphrase = Zeroizing::new(request.new_passphrase);
        let credential = match (Zeroizing::new(request.old_passphrase), Zeroizing::new(request.recovery_code)) {
            (old, _) if !old.is_empty() => {
                store_pb::change_passphrase_request::Credential::OldPassphrase(old.to_string())
            }
            (_, code) if !code.is_empty() => {
                store_pb::change_passphrase_request::Credential::RecoveryCode(code.to_string())
            }
            _ => return Err(Status::invalid_argument("give the current passphrase or the recovery code")),
        };
        self.running_store(&address)?;
        let mut store = store_client(self.supervisor.paths(), &address).await?;
        let request = store_pb::ChangePassphraseRequest {
            credential: Some(credential),
            new_passphrase: new_passphrase.to_string(),
        };
        store.change_passphrase(request).await?;
        if self.passphrases.get(&address).is_some() {
            self.passphrases.set(&address, Some(new_passphrase.clone()));
        }
        tracing::info!(account = %address, "passphrase changed");
        if let Some(provider) = self.provider_of(&address)? {
            provider::change_passphrase(&provider, &address, &new_passphrase, &mut store).await.map_err(|status| {
                Status::unavailable(format!(
                    "the passphrase of {address} changed on this device, but the provider could not be told ({}): \
                     it is told at the next `bitmaskctl account start` with the new passphrase",
                    status.message()
                ))
            })?;
        }
        Ok(Response::new(pb::ChangePassphraseResponse {}))
    }

    async fn get_mail_token(
        &self,
        request: Request<pb::GetMailTokenRequest>,
    ) -> Result<Response<pb::GetMailTokenResponse>, Status> {
        let address = required(request.into_inner().address)?;
        self.running_store(&address)?;
        let mut store = store_client(self.supervisor.paths(), &address).await?;
        let token = bitmask_mail::token::mail_token(&mut store).await?;
        Ok(Response::new(pb::GetMailTokenResponse { token }))
    }

    async fn sync(&self, request: Request<pb::SyncRequest>) -> Result<Response<SyncStream>, Status> {
        let address = required(request.into_inner().address)?;
        self.running_store(&address)?;
        let mut store = store_client(self.supervisor.paths(), &address).await?;
        let progress = store.sync(store_pb::SyncRequest { if_idle: false }).await?.into_inner();
        Ok(Response::new(Box::pin(progress)))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let address = non_empty(request.into_inner().address);
        let accounts = self.supervisor.status(address.as_deref()).map_err(status_of)?;
        let mut with_sync = Vec::with_capacity(accounts.len());
        for account in accounts {
            with_sync.push(self.with_sync_status(self.passphrases.status_to_pb(account)).await);
        }
        Ok(Response::new(pb::GetStatusResponse {
            accounts: with_sync,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
        }))
    }

    async fn watch_status(&self, request: Request<pb::WatchStatusRequest>) -> Result<Response<StatusStream>, Status> {
        let address = non_empty(request.into_inner().address);
        // Fail now for an unknown account rather than stream nothing.
        self.supervisor.status(address.as_deref()).map_err(status_of)?;
        let watcher = StatusWatcher {
            changes: self.supervisor.subscribe(),
            supervisor: self.supervisor.clone(),
            passphrases: self.passphrases.clone(),
            address,
            last: Vec::new(),
            first: true,
        };
        let stream = futures::stream::unfold(watcher, |mut watcher| async move {
            let changed = watcher.next_changes().await?;
            Some((futures::stream::iter(changed), watcher))
        });
        let stream = futures::StreamExt::flatten(stream);
        Ok(Response::new(Box::pin(stream)))
    }
}
