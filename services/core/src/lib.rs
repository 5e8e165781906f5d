//! bitmaskd: the Core gRPC API over the [`Supervisor`].
//!
//! This is the service edge: requests are checked and converted into the
//! supervisor's domain types here, and its errors into gRPC statuses.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use bitmask_proto::core::v1 as pb;
use bitmask_proto::core::v1::core_server::{Core, CoreServer};
use bitmask_runtime::ServiceKind;
use bitmask_runtime::server::{BoundSocket, GrpcServer, ServerError};
use bitmask_supervisor::{
    AccountConfig, AccountState, AccountStatus, EncryptionPolicy, NewAccount, RelayConfig, RelayTls, ServiceState,
    ServiceStatus, Supervisor, SupervisorError,
};
use tonic::server::NamedService as _;
use tonic::{Request, Response, Status};

/// Serves the Core API on `socket` until `shutdown`, then stops every account.
pub async fn run(
    supervisor: Supervisor,
    socket: BoundSocket,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let mut server = GrpcServer::new(&[CoreServer::<CoreService>::NAME])?;
    server.routes().add_service(CoreServer::new(CoreService { supervisor: supervisor.clone() }));
    let result = server.serve(socket, shutdown).await;
    supervisor.stop_all().await;
    result
}

#[derive(Debug, Clone)]
pub struct CoreService {
    supervisor: Supervisor,
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
        locked: false,
    }
}

/// Yields, on each state change, the accounts whose status changed.
struct StatusWatcher {
    supervisor: Supervisor,
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
                Ok(accounts) => accounts.into_iter().map(account_status_to_pb).collect(),
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

#[tonic::async_trait]
impl Core for CoreService {
    async fn add_account(&self, request: Request<pb::AddAccountRequest>) -> Result<Response<pb::Account>, Status> {
        let account = new_account(request.into_inner())?;
        let account = self.supervisor.add_account(account).await.map_err(status_of)?;
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
    ) -> Result<Response<pb::AccountStatus>, Status> {
        let request = request.into_inner();
        let address = required(request.address)?;
        if !request.passphrase.is_empty() {
            // Unlocking is the store's; refuse rather than silently ignore a secret.
            return Err(Status::unimplemented("unlocking with a passphrase comes with the encrypted store"));
        }
        let status = self.supervisor.start_account(&address).await.map_err(status_of)?;
        Ok(Response::new(account_status_to_pb(status)))
    }

    async fn stop_account(
        &self,
        request: Request<pb::StopAccountRequest>,
    ) -> Result<Response<pb::AccountStatus>, Status> {
        let address = required(request.into_inner().address)?;
        let status = self.supervisor.stop_account(&address).await.map_err(status_of)?;
        Ok(Response::new(account_status_to_pb(status)))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let address = non_empty(request.into_inner().address);
        let accounts = self.supervisor.status(address.as_deref()).map_err(status_of)?;
        Ok(Response::new(pb::GetStatusResponse {
            accounts: accounts.into_iter().map(account_status_to_pb).collect(),
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
