//! The provider (LEAP's platform, rebuilt as one binary): what an account's
//! devices talk to, and what the rest of the world mails to.
//!
//! - [`config`]: the provider directory and `provider.toml`;
//! - [`init`]: making a provider (CA, TLS certificate, secret, settings);
//!   [`invites`]: sign-up codes;
//! - [`ca`]: the provider's CA, which signs the TLS certificate and the
//!   users' client certificates;
//! - [`store`]: accounts, issued certificates, the delivery log (sled);
//! - [`accounts`]: the `bitmask.provider.v1.Accounts` gRPC edge (SRP);
//!   [`logins`]: its bounded tables of logins under way and failed logins;
//! - [`limits`]: what one client network or account may hold or do
//!   (connections, rates);
//! - [`https`]: the HTTPS port: gRPC (accounts, the key directory of
//!   `bitmask_keydir`, the sync endpoint of `bitmask_sync_endpoint`) and
//!   HTTP (`/ca.crt`, Web Key Directory);
//! - [`tls`]: the rustls configurations of the three ports;
//! - [`smtp`]: the MX and the relay; [`deliver`]: encryption to the
//!   recipient's key and deposit; [`smarthost`]: mail for other domains.
//!
//! [`serve`] runs it all until the shutdown future completes.
//!
//! **Architecture invariant:** the provider never writes plaintext mail to
//! disk: the MX and the relay hold a message in memory, encrypt it to each
//! local recipient's published key and deposit only the ciphertext; a
//! recipient without a key is refused temporarily. Its sled files (and the
//! files of incoming items) hold SRP verifiers, public keys, certificate
//! hashes, keyed hashes and ciphertext.

pub mod accounts;
pub mod ca;
pub mod config;
pub mod deliver;
pub mod https;
pub mod init;
pub mod invites;
pub mod limits;
pub mod logins;
pub mod smarthost;
pub mod smtp;
pub mod store;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitmask_keydir::{KeyDirectoryService, SledKeyStorage};
use bitmask_proto::provider::v1::accounts_server::AccountsServer;
use bitmask_proto::provider::v1::key_directory_server::KeyDirectoryServer;
use bitmask_proto::sync::v1::sync_endpoint_server::SyncEndpointServer;
use bitmask_runtime::server::GrpcServer;
use bitmask_sync_endpoint::{IncomingNotifier, Sessions, SledStorage, SyncService};
use tokio::net::TcpListener;
use tonic::server::NamedService as _;
use tonic::service::Routes;

use crate::accounts::{AccountsService, ProviderInfo};
use crate::ca::Ca;
use crate::config::{ConfigError, Layout, ProviderSecret, Settings};
use crate::deliver::Delivery;
use crate::smarthost::Smarthost;
use crate::smtp::SmtpContext;
use crate::tls::ServerIdentity;

/// How long requests under way may go on after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often expired deliveries and certificates are forgotten.
const FORGET_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The directory or its files are not a usable provider.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error("cannot open the provider's data in {path}: {message}")]
    Storage { path: PathBuf, message: String },
    #[error("cannot listen on {address} ({port}): {source}")]
    Bind { address: SocketAddr, port: &'static str, source: std::io::Error },
    #[error("the HTTPS server: {0}")]
    Server(String),
}

impl ServeError {
    /// The exit code: 64 for a bad provider directory, 69 for a port that
    /// cannot be had, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Damaged { .. } => 64,
            Self::Bind { .. } => 69,
            Self::Storage { .. } | Self::Server(_) => 1,
        }
    }
}

/// A provider directory, loaded and checked, before any socket is bound.
#[derive(Debug)]
pub struct Provider {
    pub settings: Settings,
    pub layout: Layout,
    pub ca: Arc<Ca>,
    identity: ServerIdentity,
    secret: ProviderSecret,
}

impl Provider {
    pub fn load(layout: Layout) -> Result<Self, ServeError> {
        let settings = Settings::load(&layout)?;
        let ca_pem = layout.read(&layout.ca_certificate())?;
        let ca_key = layout.read(&layout.ca_key())?;
        let ca = Ca::load(&ca_pem, &ca_key).map_err(|error| damaged(layout.ca_key(), error))?;
        let certificate = layout.read(&layout.tls_certificate())?;
        let key = layout.read(&layout.tls_key())?;
        let identity =
            ServerIdentity::from_pem(&certificate, &key).map_err(|error| damaged(layout.tls_key(), error))?;
        let secret = ProviderSecret::from_hex(&layout.read(&layout.secret())?)
            .ok_or_else(|| damaged(layout.secret(), "not 32 bytes in hex"))?;
        Ok(Self { settings, layout, ca: Arc::new(ca), identity, secret })
    }

    fn smarthost(&self) -> Option<Smarthost> {
        let (host, port) = config::host_port(self.settings.smarthost.as_deref()?)?;
        Some(Smarthost { host, port, hello: self.settings.hostname.clone() })
    }
}

async fn bind(provider: &Provider, port: u16, name: &'static str) -> Result<TcpListener, ServeError> {
    let address = SocketAddr::new(provider.settings.bind, port);
    TcpListener::bind(address).await.map_err(|source| ServeError::Bind { address, port: name, source })
}

fn damaged(path: PathBuf, error: impl std::fmt::Display) -> ServeError {
    ServeError::Damaged { path, message: error.to_string() }
}

fn storage_error(path: &Path, error: impl std::fmt::Display) -> ServeError {
    ServeError::Storage { path: path.to_owned(), message: error.to_string() }
}

/// Forgets expired deliveries and certificates now and every hour.
async fn forget_expired(store: store::ProviderStore) {
    let mut interval = tokio::time::interval(FORGET_INTERVAL);
    loop {
        interval.tick().await;
        let store = store.clone();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0);
        match tokio::task::spawn_blocking(move || store.forget_expired(now)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(forgotten)) => tracing::info!(forgotten, "expired deliveries and certificates forgotten"),
            Ok(Err(error)) => tracing::warn!(%error, "forgetting expired records"),
            Err(error) => tracing::warn!(%error, "forgetting expired records"),
        }
    }
}

/// The provider's databases: the sync endpoint's, and one for the key
/// directory and the provider's own records.
struct Storages {
    sync: Arc<dyn bitmask_sync_endpoint::SyncStorage>,
    db: sled::Db,
    keys: Arc<SledKeyStorage>,
    store: store::ProviderStore,
}

impl Storages {
    fn open(layout: &Layout) -> Result<Self, ServeError> {
        let sync_path = layout.sync_data();
        let sync = SledStorage::open(&sync_path).map_err(|error| storage_error(&sync_path, error))?;
        let path = layout.provider_data();
        let db = sled::Config::new().path(&path).open().map_err(|error| storage_error(&path, error))?;
        let keys = SledKeyStorage::with_db(db.clone()).map_err(|error| storage_error(&path, error))?;
        let store = store::ProviderStore::new(db.clone()).map_err(|error| storage_error(&path, error))?;
        Ok(Self { sync: Arc::new(sync), db, keys: Arc::new(keys), store })
    }
}

/// The gRPC services (with health and reflection) and the HTTP routes of
/// the HTTPS port, sharing one session table and one incoming-mail notifier
/// with the MX.
async fn https_routes(
    provider: &Provider,
    storages: &Storages,
    sessions: Arc<Sessions>,
    notifier: Arc<IncomingNotifier>,
) -> Result<Routes, ServeError> {
    let settings = &provider.settings;
    let info = ProviderInfo {
        domain: settings.domain.clone(),
        relay_address: format!("{}:{}", settings.hostname, settings.relay_port),
        mx_address: format!("{}:{}", settings.hostname, settings.mx_port),
    };
    let lifetime = Duration::from_secs(settings.session_lifetime_seconds);
    let accounts = AccountsService::new(
        info,
        storages.store.clone(),
        sessions.clone(),
        lifetime,
        provider.ca.clone(),
        provider.secret.clone(),
        accounts::Signup { policy: settings.signup, invites: provider.layout.invites() },
    );
    let directory = KeyDirectoryService::new(storages.keys.clone(), sessions.clone());
    let endpoint = SyncService::with_notifier(storages.sync.clone(), sessions, notifier);

    const SYNC_MESSAGE_LIMIT: usize = 8 << 20;
    let mut grpc = GrpcServer::new(&[
        AccountsServer::<AccountsService>::NAME,
        KeyDirectoryServer::<KeyDirectoryService>::NAME,
        SyncEndpointServer::<SyncService>::NAME,
    ])
    .map_err(|error| ServeError::Server(error.to_string()))?;
    grpc.routes()
        .add_service(AccountsServer::new(accounts))
        .add_service(KeyDirectoryServer::new(directory))
        // One request message is at most one sealed document (the store's
        // 1 MiB limit, sealed) or one blob chunk (1 MiB): 8 MiB leaves room,
        // and is set here rather than left at the library's default.
        .add_service(
            SyncEndpointServer::new(endpoint)
                .max_decoding_message_size(SYNC_MESSAGE_LIMIT)
                .max_encoding_message_size(bitmask_sync_endpoint::MAX_BLOB_BYTES + SYNC_MESSAGE_LIMIT),
        );
    // GrpcServer serves on a Unix socket: its routes (with health and
    // reflection) are taken out to be served on the TLS listener.
    let health = grpc.health();
    let routes = std::mem::take(grpc.routes()).routes();
    health.set_serving::<AccountsServer<AccountsService>>().await;
    health.set_serving::<KeyDirectoryServer<KeyDirectoryService>>().await;
    health.set_serving::<SyncEndpointServer<SyncService>>().await;
    let state = https::HttpState {
        domain: settings.domain.clone(),
        ca_pem: Arc::from(provider.ca.certificate_pem()),
        keys: storages.keys.clone(),
    };
    Ok(https::with_http_routes(routes, state))
}

/// Serves `routes` on `incoming` until `shutdown`, then for at most
/// [`SHUTDOWN_GRACE`]: streams such as WatchIncoming never end on their
/// own, so what is still under way then is cut off.
async fn serve_https(
    routes: Routes,
    incoming: https::Incoming,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopped = stop.clone();
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move { stopped.notified().await });
    tokio::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown => {
            stop.notify_one();
            match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::info!("requests still under way after the grace period: cut off");
                    Ok(())
                }
            }
        }
    };
    served.map_err(|error| ServeError::Server(error.to_string()))
}

/// Opens the storages, binds the three ports, calls `ready` once all are
/// bound, and serves until `shutdown` completes.
pub async fn serve(
    provider: Provider,
    shutdown: impl Future<Output = ()> + Send,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    let settings = &provider.settings;
    let storages = Storages::open(&provider.layout)?;
    let sessions = Arc::new(Sessions::default());
    let notifier = Arc::new(IncomingNotifier::default());

    let https_listener = bind(&provider, settings.https_port, "https_port").await?;
    let mx_listener = bind(&provider, settings.mx_port, "mx_port").await?;
    let relay_listener = bind(&provider, settings.relay_port, "relay_port").await?;

    let tls_failure = |error: tls::TlsError| damaged(provider.layout.tls_key(), error);
    let https_tls = tls::https(&provider.identity).map_err(tls_failure)?;
    let starttls = tls::starttls(&provider.identity).map_err(tls_failure)?;
    let relay_tls = tls::relay(&provider.identity, provider.ca.certificate_der()).map_err(tls_failure)?;

    let delivery = Delivery::new(
        settings.domain.clone(),
        storages.store.clone(),
        storages.keys.clone(),
        storages.sync.clone(),
        notifier.clone(),
        provider.secret.clone(),
    );
    let smtp = Arc::new(SmtpContext {
        delivery: Arc::new(delivery),
        smarthost: provider.smarthost(),
        starttls: starttls.into(),
        relay_tls: relay_tls.into(),
    });
    let routes = https_routes(&provider, &storages, sessions, notifier).await?;
    let limits = &settings.limits;
    let mx_limits = limits::ConnectionLimits::new(limits.mx_max_connections, limits.mx_max_connections_per_ip);
    let relay_limits = limits::ConnectionLimits::new(limits.relay_max_connections, limits.relay_max_connections_per_ip);

    let background = [
        tokio::spawn(smtp::serve_mx(mx_listener, smtp.clone(), mx_limits)),
        tokio::spawn(smtp::serve_relay(relay_listener, smtp, relay_limits)),
        tokio::spawn(forget_expired(storages.store.clone())),
    ];
    let incoming = https::tls_incoming(https_listener, https_tls.into());
    tracing::info!(
        domain = %settings.domain,
        bind = %settings.bind,
        https_port = settings.https_port,
        mx_port = settings.mx_port,
        relay_port = settings.relay_port,
        smarthost = settings.smarthost.as_deref().unwrap_or("none"),
        "provider serving"
    );
    ready();
    let served = serve_https(routes, incoming, shutdown).await;
    for task in background {
        task.abort();
    }
    let _ = storages.db.flush_async().await;
    served
}
