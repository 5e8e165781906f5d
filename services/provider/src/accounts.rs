//! The `bitmask.provider.v1.Accounts` gRPC edge: provider information, SRP
//! sign-up and login (`bitmask_auth`), logout, and client certificates for
//! the relay.
//!
//! - **SignUp** takes an address in the provider's domain (compared without
//!   case) and its SRP salt and verifier; the passphrase never arrives.
//! - **LoginStart** keeps the server's half of the handshake in memory for
//!   [`LOGIN_TIMEOUT`] under a random login id; **LoginFinish** checks the
//!   client's proof and issues a session token of the shared
//!   [`Sessions`] table (the sync endpoint's and the key directory's).
//! - Failed logins slow down per address: after the n-th failure in a row
//!   the answer waits `min(n, 5)` seconds, and the address's next proofs
//!   wait behind it, so guesses cannot run in parallel.
//! - **IssueClientCertificate** signs the caller's CSR with the provider CA
//!   for its own address only, and records the certificate's SHA-256: the
//!   relay knows its clients by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bitmask_auth::{AuthError, ServerLogin};
use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::accounts_server::Accounts;
use bitmask_sync_endpoint::Sessions;
use tonic::{Request, Response, Status};

use crate::ca::{Ca, CaError};
use crate::store::{Account, IssuedCertificate, ProviderStore, StoreError};

/// How long a login may take between its two steps.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Logins under way at once, over all addresses.
const MAX_PENDING_LOGINS: usize = 10_000;
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// The longest wait after a failed login.
const MAX_FAILURE_DELAY_SECONDS: u32 = 5;
/// Bounds on the SRP values a client sends (the 2048-bit group: 256 bytes).
const MAX_SRP_VALUE: usize = 512;
const MIN_SALT: usize = 16;
const MAX_SALT: usize = 64;

/// What `GetProviderInfo` answers.
#[derive(Debug, Clone)]
pub struct ProviderInfo {
    pub domain: String,
    pub relay_address: String,
    pub mx_address: String,
}

/// One login between LoginStart and LoginFinish.
struct PendingLogin {
    address: String,
    server: ServerLogin,
    started: Instant,
}

/// Failed logins of one address in a row.
#[derive(Debug, Default)]
struct Failures {
    count: u32,
    last: Option<Instant>,
}

pub struct AccountsService {
    info: ProviderInfo,
    store: ProviderStore,
    sessions: Arc<Sessions>,
    session_lifetime: Duration,
    ca: Arc<Ca>,
    pending: Mutex<HashMap<String, PendingLogin>>,
    /// Held while a proof is checked and while its failure is paid for.
    failures: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Failures>>>>,
}

impl std::fmt::Debug for AccountsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountsService").field("domain", &self.info.domain).finish_non_exhaustive()
    }
}

fn status_of_store(error: StoreError) -> Status {
    Status::internal(error.to_string())
}

fn random_id() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    data_encoding::HEXLOWER.encode(&bytes)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or(0)
}

/// The session token of `authorization: Bearer TOKEN`, empty if none.
fn bearer<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

impl AccountsService {
    pub fn new(
        info: ProviderInfo,
        store: ProviderStore,
        sessions: Arc<Sessions>,
        session_lifetime: Duration,
        ca: Arc<Ca>,
    ) -> Self {
        Self { info, store, sessions, session_lifetime, ca, pending: Mutex::default(), failures: Mutex::default() }
    }

    /// `address` lowercased if it is one of this provider's; otherwise why not.
    fn own_address(&self, address: &str) -> Result<String, Status> {
        let address =
            bitmask_keydir::normalize_address(address).map_err(|error| Status::invalid_argument(error.to_string()))?;
        match address.rsplit_once('@') {
            Some((_, domain)) if domain == self.info.domain => Ok(address),
            _ => Err(Status::invalid_argument(format!(
                "{address} is not an address of this provider: accounts here are LOCAL@{}",
                self.info.domain
            ))),
        }
    }

    /// The user whose session the request carries.
    fn user<T>(&self, request: &Request<T>) -> Result<String, Status> {
        self.sessions.user(&bearer(request)).map_err(|error| Status::unauthenticated(error.to_string()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ProviderStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| Status::internal(format!("storage task failed: {error}")))?
            .map_err(status_of_store)
    }

    fn failures_of(&self, address: &str) -> Arc<tokio::sync::Mutex<Failures>> {
        let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Addresses nobody is logging in as, with no recent failure, are forgotten.
        failures.retain(|_, entry| {
            Arc::strong_count(entry) > 1
                || entry.try_lock().is_ok_and(|entry| entry.last.is_some_and(|last| last.elapsed() < FAILURE_MEMORY))
        });
        failures.entry(address.to_owned()).or_default().clone()
    }
}

fn check_length(name: &str, value: &[u8], min: usize, max: usize) -> Result<(), Status> {
    if value.len() < min || value.len() > max {
        return Err(Status::invalid_argument(format!("{name} must have {min} to {max} bytes, not {}", value.len())));
    }
    Ok(())
}

/// An SRP salt and verifier fit to keep.
fn check_verifier(salt: &[u8], verifier: &[u8]) -> Result<(), Status> {
    check_length("srp_salt", salt, MIN_SALT, MAX_SALT)?;
    check_length("srp_verifier", verifier, 1, MAX_SRP_VALUE)?;
    if verifier.iter().all(|byte| *byte == 0) {
        return Err(Status::invalid_argument("srp_verifier must not be zero"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn get_provider_info(
        &self,
        _request: Request<pb::GetProviderInfoRequest>,
    ) -> Result<Response<pb::ProviderInfo>, Status> {
        Ok(Response::new(pb::ProviderInfo {
            domain: self.info.domain.clone(),
            ca_fingerprint: self.ca.fingerprint(),
            ca_certificate_pem: self.ca.certificate_pem().to_owned(),
            relay_address: self.info.relay_address.clone(),
            mx_address: self.info.mx_address.clone(),
            api_version: "1".into(),
        }))
    }

    async fn sign_up(&self, request: Request<pb::SignUpRequest>) -> Result<Response<pb::SignUpResponse>, Status> {
        let request = request.into_inner();
        let address = self.own_address(&request.address)?;
        check_verifier(&request.srp_salt, &request.srp_verifier)?;
        let account = Account { salt: request.srp_salt, verifier: request.srp_verifier, created_unix: now_unix() };
        let key = address.clone();
        if !self.blocking(move |store| store.create_account(&key, &account)).await? {
            return Err(Status::already_exists(format!("{address} is taken: choose another address")));
        }
        tracing::info!(%address, "account created");
        Ok(Response::new(pb::SignUpResponse {}))
    }

    async fn login_start(
        &self,
        request: Request<pb::LoginStartRequest>,
    ) -> Result<Response<pb::LoginStartResponse>, Status> {
        let request = request.into_inner();
        let address = self.own_address(&request.address)?;
        check_length("srp_a", &request.srp_a, 1, MAX_SRP_VALUE)?;
        let key = address.clone();
        let account = self.blocking(move |store| store.account(&key)).await?;
        let account = account.ok_or_else(|| Status::not_found(format!("no account {address} at this provider")))?;
        let (server, srp_b) = ServerLogin::start(&account.verifier, &request.srp_a)
            .map_err(|error: AuthError| Status::invalid_argument(error.to_string()))?;
        let login_id = random_id();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            pending.retain(|_, login| login.started.elapsed() < LOGIN_TIMEOUT);
            if pending.len() >= MAX_PENDING_LOGINS {
                return Err(Status::resource_exhausted("too many logins under way: try again in a minute"));
            }
            pending.insert(login_id.clone(), PendingLogin { address, server, started: Instant::now() });
        }
        Ok(Response::new(pb::LoginStartResponse { srp_salt: account.salt, srp_b, login_id }))
    }

    async fn login_finish(
        &self,
        request: Request<pb::LoginFinishRequest>,
    ) -> Result<Response<pb::LoginFinishResponse>, Status> {
        let request = request.into_inner();
        let login = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&request.login_id);
        let login = match login {
            Some(login) if login.started.elapsed() < LOGIN_TIMEOUT => login,
            _ => {
                return Err(Status::not_found(
                    "no such login under way (each login_id is good for one attempt within 2 minutes): start again",
                ));
            }
        };
        let failures = self.failures_of(&login.address);
        let mut failures = failures.lock().await;
        if failures.last.is_some_and(|last| last.elapsed() >= FAILURE_MEMORY) {
            *failures = Failures::default();
        }
        match login.server.finish(&request.srp_m1) {
            Ok(srp_m2) => {
                *failures = Failures::default();
                let session_token = self.sessions.issue(&login.address, self.session_lifetime);
                tracing::info!(address = %login.address, "logged in");
                Ok(Response::new(pb::LoginFinishResponse {
                    srp_m2,
                    session_token,
                    expires_in: self.session_lifetime.as_secs(),
                }))
            }
            Err(_) => {
                failures.count = failures.count.saturating_add(1);
                failures.last = Some(Instant::now());
                let delay = failures.count.min(MAX_FAILURE_DELAY_SECONDS);
                tracing::info!(address = %login.address, failures = failures.count, "login failed");
                // Paid with the lock held: the address's next proof waits too.
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                Err(Status::permission_denied("wrong passphrase"))
            }
        }
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let user = self.user(&request)?;
        self.sessions.revoke(&bearer(&request));
        tracing::info!(address = %user, "logged out");
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn change_login(
        &self,
        request: Request<pb::ChangeLoginRequest>,
    ) -> Result<Response<pb::ChangeLoginResponse>, Status> {
        let user = self.user(&request)?;
        let request = request.into_inner();
        check_verifier(&request.srp_salt, &request.srp_verifier)?;
        let key = user.clone();
        let replaced = self
            .blocking(move |store| {
                let Some(account) = store.account(&key)? else { return Ok(false) };
                let account = Account { salt: request.srp_salt, verifier: request.srp_verifier, ..account };
                store.replace_account(&key, &account)
            })
            .await?;
        if !replaced {
            return Err(Status::aborted(format!("the account {user} changed meanwhile: try again")));
        }
        tracing::info!(address = %user, "login verifier changed");
        Ok(Response::new(pb::ChangeLoginResponse {}))
    }

    async fn issue_client_certificate(
        &self,
        request: Request<pb::IssueClientCertificateRequest>,
    ) -> Result<Response<pb::IssueClientCertificateResponse>, Status> {
        let user = self.user(&request)?;
        let csr_pem = request.into_inner().csr_pem;
        let ca = Arc::clone(&self.ca);
        let address = user.clone();
        let issued =
            tokio::task::spawn_blocking(move || ca.issue_client_certificate(&csr_pem, &address, SystemTime::now()))
                .await
                .map_err(|error| Status::internal(format!("signing task failed: {error}")))?
                .map_err(|error| match error {
                    CaError::CsrTooLarge | CaError::InvalidCsr(_) | CaError::Address(_) => {
                        Status::invalid_argument(error.to_string())
                    }
                    CaError::Ca(_) => Status::internal(error.to_string()),
                })?;
        let record = IssuedCertificate { address: user.clone(), not_after_unix: issued.not_after_unix };
        let sha256 = issued.sha256;
        self.blocking(move |store| store.record_certificate(&sha256, &record)).await?;
        tracing::info!(
            address = %user,
            certificate = %data_encoding::HEXLOWER.encode(&issued.sha256),
            not_after = issued.not_after_unix,
            "client certificate issued"
        );
        Ok(Response::new(pb::IssueClientCertificateResponse {
            certificate_pem: issued.pem,
            not_after_unix: issued.not_after_unix,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bitmask_auth::{ClientLogin, LoginSecret};
    use tokio::time::Instant as VirtualInstant;

    use super::*;

    fn service() -> (tempfile::TempDir, AccountsService) {
        let dir = tempfile::tempdir().unwrap();
        let store = ProviderStore::new(sled::Config::new().path(dir.path()).open().unwrap()).unwrap();
        let info = ProviderInfo {
            domain: "example.org".into(),
            relay_address: "localhost:2".into(),
            mx_address: "localhost:1".into(),
        };
        let (ca, _) = Ca::generate("example.org").unwrap();
        let service = AccountsService::new(info, store, Arc::default(), Duration::from_secs(60), Arc::new(ca));
        (dir, service)
    }

    async fn sign_up(service: &AccountsService, address: &str, secret: &LoginSecret) {
        let (srp_salt, srp_verifier) = bitmask_auth::verifier(address, secret);
        let request = pb::SignUpRequest { address: address.into(), srp_salt, srp_verifier };
        service.sign_up(Request::new(request)).await.unwrap();
    }

    /// LoginStart, and the LoginFinish request `secret` makes of it.
    async fn start(service: &AccountsService, address: &str, secret: &LoginSecret) -> pb::LoginFinishRequest {
        let client = ClientLogin::start();
        let request = pb::LoginStartRequest { address: address.into(), srp_a: client.a_pub().to_vec() };
        let started = service.login_start(Request::new(request)).await.unwrap().into_inner();
        let proof = client.finish(address, secret, &started.srp_salt, &started.srp_b).unwrap();
        pb::LoginFinishRequest { login_id: started.login_id, srp_m1: proof.m1.clone() }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_logins_slow_down_per_address_and_wait_behind_each_other() {
        let (_dir, service) = service();
        let (alice, bob) = ("alice@example.org", "bob@example.org");
        let right = LoginSecret::derive("right", alice);
        let wrong = LoginSecret::derive("wrong", alice);
        sign_up(&service, alice, &right).await;
        sign_up(&service, bob, &LoginSecret::derive("right", bob)).await;

        // Three wrong guesses at once: they take turns, each paying more.
        let mut guesses = Vec::new();
        for _ in 0..3 {
            guesses.push(start(&service, alice, &wrong).await);
        }
        let began = VirtualInstant::now();
        let results =
            futures::future::join_all(guesses.into_iter().map(|guess| service.login_finish(Request::new(guess)))).await;
        assert!(results.iter().all(|result| result.as_ref().unwrap_err().code() == tonic::Code::PermissionDenied));
        assert!(began.elapsed() >= Duration::from_secs(1 + 2 + 3), "{:?}", began.elapsed());

        // Another address pays for its own failures only.
        let guess = start(&service, bob, &LoginSecret::derive("wrong", bob)).await;
        let began = VirtualInstant::now();
        assert!(service.login_finish(Request::new(guess)).await.is_err());
        let elapsed = began.elapsed();
        assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(2), "{elapsed:?}");

        // The right passphrase gets in at once and clears the count.
        let login = start(&service, alice, &right).await;
        let began = VirtualInstant::now();
        let reply = service.login_finish(Request::new(login)).await.unwrap().into_inner();
        assert_eq!(began.elapsed(), Duration::ZERO);
        assert_eq!(service.sessions.user(&reply.session_token).unwrap(), alice);
        let guess = start(&service, alice, &wrong).await;
        let began = VirtualInstant::now();
        assert!(service.login_finish(Request::new(guess)).await.is_err());
        assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    }
}
