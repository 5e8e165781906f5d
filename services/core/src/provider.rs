//! An account at a provider, bitmaskd's half: the CA pinned at `account add`,
//! sign-up or SRP login at the first start (then the store is created, or
//! restored from the provider's backup on a second device), a fresh session
//! at every start, and the relay's client certificate, renewed before it
//! expires. The passphrase never leaves the machine: the provider gets an
//! SRP verifier of a secret derived from it (`bitmask-auth`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitmask_auth::LoginSecret;
use bitmask_proto::core::v1 as pb;
use bitmask_proto::provider::v1 as provider_pb;
use bitmask_proto::provider::v1::accounts_client::AccountsClient;
use bitmask_proto::provider::v1::key_directory_client::KeyDirectoryClient;
use bitmask_proto::store::v1 as store_pb;
use bitmask_runtime::client::connect_provider;
use bitmask_runtime::provider::{Session, ca_fingerprint, change_login, login, sign_up};
use tonic::Status;

/// Where an account keeps what it knows of its provider (in its data dir).
#[derive(Debug, Clone)]
pub struct ProviderFiles {
    dir: PathBuf,
}

impl ProviderFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("provider") }
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_certificate(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
    fn client_expiry(&self) -> PathBuf {
        self.dir.join("client.expires")
    }
    /// The invite code given at `account add`, until the first start used it.
    fn invite(&self) -> PathBuf {
        self.dir.join("invite")
    }
}

/// A client certificate is renewed when less than this is left of it.
const RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);

/// Checks the pinned CA against the provider (it must serve a certificate
/// of that CA and name it as its own), keeps it in the account's files and
/// names the provider's relay as the account's relay (TLS, the CA pinned,
/// the client certificate issued at the first start).
pub async fn pin(request: &mut pb::AddAccountRequest, files: &ProviderFiles) -> Result<(), Status> {
    let ca_pem = std::mem::take(&mut request.provider_ca_pem);
    if ca_pem.is_empty() {
        return Err(Status::invalid_argument(
            "the provider's CA certificate is needed (bitmaskctl fetches it and shows its fingerprint)",
        ));
    }
    let fingerprint = ca_fingerprint(&ca_pem)?;
    let url = &request.provider_url;
    let channel = connect_provider(url, &ca_pem, "").await.map_err(|status| {
        Status::unavailable(format!(
            "cannot reach the provider at {url} with the pinned CA ({fingerprint}): {}",
            status.message()
        ))
    })?;
    let info = AccountsClient::new(channel)
        .get_provider_info(provider_pb::GetProviderInfoRequest {})
        .await
        .map_err(|status| {
            Status::unavailable(format!(
                "the provider at {url} does not answer with the pinned CA: {}",
                status.message()
            ))
        })?
        .into_inner();
    if !info.ca_fingerprint.eq_ignore_ascii_case(&fingerprint) {
        return Err(Status::permission_denied(format!(
            "the provider at {url} names another CA ({}) than the one pinned ({fingerprint})",
            info.ca_fingerprint
        )));
    }
    let (domain_ok, address) = (request.address.to_lowercase(), &info.domain);
    if !domain_ok.ends_with(&format!("@{}", address.to_lowercase())) {
        return Err(Status::invalid_argument(format!(
            "{} is not an address of this provider's domain {address}",
            request.address
        )));
    }
    write_private(&files.ca(), ca_pem.as_bytes())?;
    let invite = std::mem::take(&mut request.invite_code);
    if !invite.trim().is_empty() {
        write_private(&files.invite(), invite.trim().as_bytes())?;
    }
    if request.relay.as_ref().is_none_or(|relay| relay.address.is_empty()) {
        request.relay = Some(pb::RelayConfig {
            address: info.relay_address,
            tls: pb::RelayTls::Tls.into(),
            ca_file: files.ca().display().to_string(),
            client_cert_file: files.client_certificate().display().to_string(),
            client_key_file: files.client_key().display().to_string(),
        });
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Status> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |error: std::io::Error| Status::internal(format!("writing {}: {error}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

/// The account's provider: its URL and pinned CA.
#[derive(Debug, Clone)]
pub struct Provider {
    pub url: String,
    pub ca_pem: String,
    pub files: ProviderFiles,
}

impl Provider {
    pub fn load(url: &str, data_dir: &Path) -> Result<Self, Status> {
        let files = ProviderFiles::new(data_dir);
        let ca_pem = std::fs::read_to_string(files.ca()).map_err(|error| {
            Status::failed_precondition(format!("the provider's pinned CA ({}): {error}", files.ca().display()))
        })?;
        Ok(Self { url: url.to_owned(), ca_pem, files })
    }

    fn configure(&self, address: &str, session: &Session, secret: &LoginSecret) -> store_pb::ConfigureSyncRequest {
        store_pb::ConfigureSyncRequest {
            url: self.url.clone(),
            ca_certificate_pem: self.ca_pem.clone(),
            user: address.to_owned(),
            session_token: session.token.clone(),
            interval_seconds: 0,
            login_secret: secret.as_bytes().to_vec(),
        }
    }
}

/// What the first start did at the provider.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstStart {
    /// A new account: the store was created here (with this recovery code).
    SignedUp { recovery_code: String },
    /// The account existed: the store's secrets came from the provider's
    /// backup (a second device).
    Restored,
}

/// The first start of a provider account (its store is uninitialized):
/// sign up, or log in when the provider has the account already (a second
/// device); then create the store (or restore it) and point it at the
/// provider. Sign-up comes first because a login cannot tell: the provider
/// answers a login for an address without an account as a wrong passphrase.
pub async fn first_start(
    provider: &Provider,
    address: &str,
    passphrase: &str,
    store: &mut crate::StoreClient<crate::TracedChannel>,
) -> Result<FirstStart, Status> {
    let secret = derive(passphrase, address).await?;
    let invite = std::fs::read_to_string(provider.files.invite()).unwrap_or_default();
    let existed = match sign_up(&provider.url, &provider.ca_pem, address, &secret, invite.trim()).await {
        Ok(()) => {
            tracing::info!(account = %address, "signed up at the provider");
            false
        }
        Err(status) if status.code() == tonic::Code::AlreadyExists => true,
        // Sign-up refused by the provider's policy: the account may exist
        // already (a second device needs no code); if the login fails too,
        // both reasons are told.
        Err(refused) if refused.code() == tonic::Code::PermissionDenied => {
            match login(&provider.url, &provider.ca_pem, address, &secret).await {
                Ok(_) => true,
                Err(status) if status.code() == tonic::Code::PermissionDenied => {
                    return Err(Status::permission_denied(format!(
                        "the provider refused to sign {address} up ({}), and refused to log in to it \
                         (a wrong passphrase, if the account exists)",
                        refused.message()
                    )));
                }
                Err(status) => return Err(status),
            }
        }
        Err(status) => return Err(status),
    };
    if !invite.is_empty() {
        let _ = std::fs::remove_file(provider.files.invite());
    }
    let session =
        login(&provider.url, &provider.ca_pem, address, &secret).await.map_err(|status| explain(status, address))?;
    store.configure_sync(provider.configure(address, &session, &secret)).await?;
    let outcome = if existed {
        let request = store_pb::InitializeRequest { passphrase: passphrase.to_owned(), from_provider: true };
        store.initialize(request).await?;
        tracing::info!(account = %address, "store restored from the provider (another device)");
        // The account key comes with the documents: until they are here, the
        // key service would take the account for keyless and make a second
        // key (published, it would take the other devices' mail from them).
        sync_now(store).await?;
        FirstStart::Restored
    } else {
        let request = store_pb::InitializeRequest { passphrase: passphrase.to_owned(), from_provider: false };
        let recovery_code = store.initialize(request).await?.into_inner().recovery_code;
        // At once, so the secrets' backup is at the provider before another
        // device asks for it.
        sync_now(store).await?;
        FirstStart::SignedUp { recovery_code }
    };
    ensure_client_certificate(provider, address, &session).await?;
    Ok(outcome)
}

/// Every later start: a fresh session for the store (sessions do not
/// survive a provider restart), and the client certificate renewed when
/// due. The provider being unreachable is not an error: mail waits.
pub async fn resume(
    provider: &Provider,
    address: &str,
    passphrase: &str,
    store: &mut crate::StoreClient<crate::TracedChannel>,
) -> Result<(), Status> {
    let secret = derive(passphrase, address).await?;
    let session = match login(&provider.url, &provider.ca_pem, address, &secret).await {
        Ok(session) => session,
        Err(status) if status.code() == tonic::Code::Unavailable => {
            tracing::warn!(account = %address, error = %status.message(), "provider unreachable; working offline");
            return Ok(());
        }
        // The passphrase changed here while the provider could not be told:
        // the store (unlocked with this passphrase) still logs in with the
        // old secret it keeps, so the provider is told now.
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            tell_provider(provider, address, &secret, store).await.map_err(|error| {
                tracing::warn!(account = %address, error = %error.message(), "the provider was not told the new passphrase");
                explain(status, address)
            })?;
            login(&provider.url, &provider.ca_pem, address, &secret).await.map_err(|status| explain(status, address))?
        }
        Err(status) => return Err(explain(status, address)),
    };
    store.configure_sync(provider.configure(address, &session, &secret)).await?;
    ensure_client_certificate(provider, address, &session).await
}

/// After the store's passphrase changed: the provider gets a verifier of the
/// new login secret, in the store's session (which the store renews with the
/// old secret it keeps, if it expired), and the store keeps the new secret
/// for its later logins. The store's re-sealed secrets reach the provider's
/// backup with the sync that follows, so a new device restores the account
/// with the new passphrase.
pub async fn change_passphrase(
    provider: &Provider,
    address: &str,
    new_passphrase: &str,
    store: &mut crate::StoreClient<crate::TracedChannel>,
) -> Result<(), Status> {
    let secret = derive(new_passphrase, address).await?;
    tell_provider(provider, address, &secret, store).await
}

async fn tell_provider(
    provider: &Provider,
    address: &str,
    secret: &LoginSecret,
    store: &mut crate::StoreClient<crate::TracedChannel>,
) -> Result<(), Status> {
    let mut token = store.get_sync_config(store_pb::GetSyncConfigRequest {}).await?.into_inner().session_token;
    let mut told = change_login(&provider.url, &provider.ca_pem, address, &token, secret).await;
    if told.as_ref().is_err_and(|status| status.code() == tonic::Code::Unauthenticated) {
        // An expired session: a sync makes the store log in again.
        sync_now(store).await?;
        token = store.get_sync_config(store_pb::GetSyncConfigRequest {}).await?.into_inner().session_token;
        told = change_login(&provider.url, &provider.ca_pem, address, &token, secret).await;
    }
    told?;
    let session = Session { token, expires_in: Duration::ZERO };
    store.configure_sync(provider.configure(address, &session, secret)).await?;
    tracing::info!(account = %address, "the provider has the new passphrase's verifier");
    // The secrets sealed under the new passphrase go to the provider's backup.
    sync_now(store).await?;
    Ok(())
}

/// Runs a sync of the store and waits until it is done.
pub(crate) async fn sync_now(store: &mut crate::StoreClient<crate::TracedChannel>) -> Result<(), Status> {
    let mut progress = store.sync(store_pb::SyncRequest { if_idle: false }).await?.into_inner();
    while progress.message().await?.is_some() {}
    Ok(())
}

async fn derive(passphrase: &str, address: &str) -> Result<LoginSecret, Status> {
    let (passphrase, address) = (zeroize::Zeroizing::new(passphrase.to_owned()), address.to_owned());
    tokio::task::spawn_blocking(move || LoginSecret::derive(&passphrase, &address))
        .await
        .map_err(|error| Status::internal(format!("deriving the login secret: {error}")))
}

fn explain(status: Status, address: &str) -> Status {
    match status.code() {
        tonic::Code::PermissionDenied => {
            Status::permission_denied(format!("the provider refused the passphrase of {address}: {}", status.message()))
        }
        _ => status,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// A client certificate for the relay, issued by the provider's CA for a key
/// made here (its private key never leaves the machine), unless the one
/// there has long enough to live.
async fn ensure_client_certificate(provider: &Provider, address: &str, session: &Session) -> Result<(), Status> {
    let files = &provider.files;
    let expires = std::fs::read_to_string(files.client_expiry())
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if files.client_certificate().exists() && expires > unix_now() + RENEW_BEFORE.as_secs() {
        return Ok(());
    }
    let key = rcgen::KeyPair::generate().map_err(|error| Status::internal(format!("a client key: {error}")))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|error| Status::internal(format!("a certificate request: {error}")))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, address);
    let csr = params
        .serialize_request(&key)
        .and_then(|request| request.pem())
        .map_err(|error| Status::internal(format!("a certificate request: {error}")))?;
    let channel = connect_provider(&provider.url, &provider.ca_pem, &session.token).await?;
    let issued = AccountsClient::new(channel)
        .issue_client_certificate(provider_pb::IssueClientCertificateRequest { csr_pem: csr })
        .await?
        .into_inner();
    write_private(&files.client_key(), key.serialize_pem().as_bytes())?;
    write_private(&files.client_certificate(), issued.certificate_pem.as_bytes())?;
    write_private(&files.client_expiry(), issued.not_after_unix.to_string().as_bytes())?;
    tracing::info!(account = %address, not_after = issued.not_after_unix, "relay client certificate issued");
    Ok(())
}

/// Waits (a readiness check, up to `timeout`) until the provider's key
/// directory has a key for `address`: then others can write to it.
pub async fn wait_for_published_key(provider: &Provider, address: &str, timeout: Duration) -> Result<String, Status> {
    let channel = connect_provider(&provider.url, &provider.ca_pem, "").await?;
    let mut directory = KeyDirectoryClient::new(channel);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match directory.lookup_key(provider_pb::LookupKeyRequest { address: address.to_owned() }).await {
            Ok(found) => return Ok(found.into_inner().fingerprint),
            Err(status) if status.code() == tonic::Code::NotFound && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => return Err(status),
        }
    }
}
