//! The `bitmask.provider.v1.Accounts` gRPC edge: provider information, SRP
//! sign-up and login (`bitmask_auth`), logout, and client certificates for
//! the relay.
//!
//! - **SignUp** takes an address in the provider's domain (compared without
//!   case) and its SRP salt and verifier; the passphrase never arrives.
//! - **LoginStart** for an address without an account answers as for one
//!   with an account: a salt and a B made from a decoy verifier (keyed by
//!   the provider secret and the address, so the same salt at every
//!   attempt), and LoginFinish refuses it as a wrong passphrase, its
//!   failures counted like any other. Nobody learns from a login whether
//!   an address has an account (SignUp's ALREADY_EXISTS does tell: a
//!   sign-up must, which is one reason sign-up is by invitation).
//! - **LoginStart** keeps the server's half of the handshake in memory for
//!   [`LOGIN_TIMEOUT`] under a random login id; **LoginFinish** checks the
//!   client's proof and issues a session token of the shared
//!   [`Sessions`] table (the sync endpoint's and the key directory's).
//!   Both are limited per client network (the peer's IP address, IPv6 by
//!   /64): LoginStarts to [`LOGIN_START_BURST`] at once, then one per
//!   [`LOGIN_START_REFILL`] (beyond: RESOURCE_EXHAUSTED, nothing computed);
//!   logins under way and failed logins as [`crate::logins`] says (bounded
//!   tables, nothing refused for lack of room, a wrong passphrase makes
//!   only its own network wait, no lock held while it waits).
//! - **IssueClientCertificate** signs the caller's CSR with the provider CA
//!   for its own address only, and records the certificate's SHA-256: the
//!   relay knows its clients by it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bitmask_auth::{AuthError, ServerLogin};
use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::accounts_server::Accounts;
use bitmask_sync_endpoint::Sessions;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::ca::{Ca, CaError};
use crate::config::{ProviderSecret, SignupPolicy};
use crate::limits::{Network, TokenBucket};
pub use crate::logins::LOGIN_TIMEOUT;
use crate::logins::{FailedLogins, PendingLogins};
use crate::store::{Account, IssuedCertificate, ProviderStore, StoreError};

/// LoginStarts one network may make at once...
pub const LOGIN_START_BURST: u32 = 60;
/// ...and how often it gets one more.
pub const LOGIN_START_REFILL: Duration = Duration::from_secs(1);
/// Networks whose LoginStart rate is remembered at once.
const MAX_RATED_NETWORKS: usize = 10_000;
/// Bounds on the SRP values a client sends (the 2048-bit group: 256 bytes).
const MAX_SRP_VALUE: usize = 512;
const MIN_SALT: usize = 16;
const MAX_SALT: usize = 64;

/// Who may sign up, and where invite codes are.
#[derive(Debug, Clone)]
pub struct Signup {
    pub policy: SignupPolicy,
    pub invites: PathBuf,
}

/// What `GetProviderInfo` answers.
#[derive(Debug, Clone)]
pub struct ProviderInfo {
    pub domain: String,
    pub relay_address: String,
    pub mx_address: String,
}

pub struct AccountsService {
    info: ProviderInfo,
    store: ProviderStore,
    sessions: Arc<Sessions>,
    session_lifetime: Duration,
    ca: Arc<Ca>,
    /// Keys the decoy logins of addresses without an account.
    secret: ProviderSecret,
    signup: Signup,
    /// LoginStarts per network.
    starts: Mutex<HashMap<Network, TokenBucket>>,
    pending: Mutex<PendingLogins>,
    /// Held while a proof is checked (a hash compared), never while waiting.
    failures: Mutex<FailedLogins>,
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
        secret: ProviderSecret,
        signup: Signup,
    ) -> Self {
        Self {
            info,
            store,
            sessions,
            session_lifetime,
            ca,
            secret,
            signup,
            starts: Mutex::default(),
            pending: Mutex::default(),
            failures: Mutex::default(),
        }
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

    /// HMAC-SHA256 under the provider secret of `purpose` and `address`.
    fn keyed(&self, purpose: &[u8], address: &str) -> [u8; 32] {
        use hmac::Mac as _;
        // HMAC takes a key of any length: this does not fail.
        let Ok(mut mac) = <hmac::Hmac<sha2::Sha256>>::new_from_slice(self.secret.as_bytes()) else {
            return [0; 32];
        };
        for part in [b"bitmask-provider ".as_slice(), purpose, b"\0", address.as_bytes()] {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A LoginStart from `network` now, or how long until one is taken.
    fn may_start(&self, network: Network, now: Instant) -> Result<(), Duration> {
        let mut starts = self.starts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !starts.contains_key(&network) && starts.len() >= MAX_RATED_NETWORKS {
            starts.retain(|_, bucket| !bucket.is_full(now));
            if starts.len() >= MAX_RATED_NETWORKS {
                // Every remembered network is busy: one is forgotten.
                let any = starts.keys().next().copied();
                if let Some(any) = any {
                    starts.remove(&any);
                }
            }
        }
        starts.entry(network).or_insert_with(|| TokenBucket::full(LOGIN_START_BURST, LOGIN_START_REFILL, now)).take(now)
    }

    /// LoginStart from `network`.
    async fn start_login(
        &self,
        network: Network,
        request: pb::LoginStartRequest,
    ) -> Result<pb::LoginStartResponse, Status> {
        if let Err(wait) = self.may_start(network, Instant::now()) {
            return Err(Status::resource_exhausted(format!(
                "too many logins from your network: try again in {} seconds",
                whole_seconds(wait)
            )));
        }
        let address = self.own_address(&request.address)?;
        check_length("srp_a", &request.srp_a, 1, MAX_SRP_VALUE)?;
        let key = address.clone();
        let account = self.blocking(move |store| store.account(&key)).await?;
        // An address without an account gets a decoy: a salt and verifier
        // of its own, the same at every attempt, that no proof matches.
        let (salt, verifier) = match account {
            Some(account) => (account.salt, account.verifier),
            None => {
                let salt = self.keyed(b"decoy salt", &address).to_vec();
                (salt, bitmask_auth::decoy_verifier(&self.keyed(b"decoy verifier", &address)))
            }
        };
        let (server, srp_b) = ServerLogin::start(&verifier, &request.srp_a)
            .map_err(|error: AuthError| Status::invalid_argument(error.to_string()))?;
        let login_id = random_id();
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(
            login_id.clone(),
            address,
            network,
            server,
            Instant::now(),
        );
        Ok(pb::LoginStartResponse { srp_salt: salt, srp_b, login_id })
    }

    /// LoginFinish from `network`.
    async fn finish_login(
        &self,
        network: Network,
        request: pb::LoginFinishRequest,
    ) -> Result<pb::LoginFinishResponse, Status> {
        let now = Instant::now();
        let login = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take(&request.login_id, now);
        let Some((address, server)) = login else {
            return Err(Status::not_found(
                "no such login under way (each login_id is good for one attempt within 2 minutes): start again",
            ));
        };
        // Gate, check and count in one short critical section (a hash
        // compared): parallel proofs from one network cannot all pass the
        // gate; nothing waits while it is held.
        let outcome = {
            let mut failures = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match failures.gate(&address, network, now) {
                Err(wait) => Checked::NotNow(wait),
                Ok(()) => match server.finish(&request.srp_m1) {
                    Ok(srp_m2) => {
                        failures.succeeded(&address, network, now);
                        Checked::Right(srp_m2)
                    }
                    Err(_) => Checked::Wrong(failures.failed(&address, network, now)),
                },
            }
        };
        match outcome {
            Checked::Right(srp_m2) => {
                let session_token = self.sessions.issue(&address, self.session_lifetime);
                tracing::info!(%address, "logged in");
                Ok(pb::LoginFinishResponse { srp_m2, session_token, expires_in: self.session_lifetime.as_secs() })
            }
            Checked::NotNow(wait) => {
                tracing::info!(%address, %network, "login refused unchecked: too many failures");
                Err(Status::resource_exhausted(format!(
                    "too many wrong passphrases for {address} recently: try again in {} seconds",
                    whole_seconds(wait)
                )))
            }
            Checked::Wrong(delay) => {
                tracing::info!(%address, %network, "login failed");
                // The answer waits as long as this network's next proof
                // would (no lock held): a client guessing one at a time
                // never sees the refusal above.
                tokio::time::sleep(delay).await;
                Err(Status::permission_denied("wrong passphrase"))
            }
        }
    }
}

/// What became of a proof.
enum Checked {
    Right(Vec<u8>),
    Wrong(Duration),
    NotNow(Duration),
}

/// `wait` in whole seconds, rounded up: "try again in N seconds" is never early.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The client network of a request (its peer's IP address).
fn network_of<T>(request: &Request<T>) -> Network {
    request.remote_addr().map_or_else(Network::unknown, |peer| Network::of(peer.ip()))
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
        // The policy before the account table: without a code nobody learns
        // whether an address is taken.
        let mut claim = match self.signup.policy {
            SignupPolicy::Open => None,
            SignupPolicy::Closed => {
                return Err(Status::permission_denied("this provider takes no new accounts"));
            }
            SignupPolicy::Invite => {
                let (invites, code) = (self.signup.invites.clone(), request.invite_code);
                let claim = tokio::task::spawn_blocking(move || crate::invites::claim(&invites, &code, now_unix()))
                    .await
                    .map_err(|error| Status::internal(format!("invite task failed: {error}")))?;
                Some(claim.ok_or_else(|| {
                    Status::permission_denied(
                        "sign-up at this provider needs an invite code from its operator \
                         (bitmaskctl account add --invite CODE); this one is missing, unknown, used or expired",
                    )
                })?)
            }
        };
        let account = Account { salt: request.srp_salt, verifier: request.srp_verifier, created_unix: now_unix() };
        let key = address.clone();
        // An unused claim goes back when dropped: a taken address uses up no code.
        if !self.blocking(move |store| store.create_account(&key, &account)).await? {
            return Err(Status::already_exists(format!("{address} is taken: choose another address")));
        }
        if let Some(claim) = &mut claim {
            claim.use_up();
        }
        tracing::info!(%address, invited = claim.is_some(), "account created");
        Ok(Response::new(pb::SignUpResponse {}))
    }

    async fn login_start(
        &self,
        request: Request<pb::LoginStartRequest>,
    ) -> Result<Response<pb::LoginStartResponse>, Status> {
        let network = network_of(&request);
        self.start_login(network, request.into_inner()).await.map(Response::new)
    }

    async fn login_finish(
        &self,
        request: Request<pb::LoginFinishRequest>,
    ) -> Result<Response<pb::LoginFinishResponse>, Status> {
        let network = network_of(&request);
        self.finish_login(network, request.into_inner()).await.map(Response::new)
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
    use futures::StreamExt as _;
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
        let secret = ProviderSecret::generate();
        let signup = Signup { policy: SignupPolicy::Open, invites: dir.path().join("invites") };
        let service =
            AccountsService::new(info, store, Arc::default(), Duration::from_secs(60), Arc::new(ca), secret, signup);
        (dir, service)
    }

    async fn sign_up(service: &AccountsService, address: &str, secret: &LoginSecret) {
        let (srp_salt, srp_verifier) = bitmask_auth::verifier(address, secret);
        let request = pb::SignUpRequest { address: address.into(), srp_salt, srp_verifier, ..Default::default() };
        service.sign_up(Request::new(request)).await.unwrap();
    }

    /// `message` as a request from `peer` (what tonic's TCP server notes).
    fn from<T>(peer: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let remote_addr = Some(std::net::SocketAddr::new(peer.parse().unwrap(), 40000));
        request.extensions_mut().insert(tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr });
        request
    }

    /// A whole login of `address` from `peer`: the session token, or the refusal.
    async fn log_in(
        service: &AccountsService,
        peer: &str,
        address: &str,
        secret: &LoginSecret,
    ) -> Result<String, Status> {
        let client = ClientLogin::start();
        let request = pb::LoginStartRequest { address: address.into(), srp_a: client.a_pub().to_vec() };
        let started = service.login_start(from(peer, request)).await?.into_inner();
        let proof = client.finish(address, secret, &started.srp_salt, &started.srp_b).unwrap();
        let request = pb::LoginFinishRequest { login_id: started.login_id, srp_m1: proof.m1.clone() };
        let finished = service.login_finish(from(peer, request)).await?.into_inner();
        proof.verify_server(&finished.srp_m2).unwrap();
        Ok(finished.session_token)
    }

    /// Issue 14: 20,000 LoginStarts (for the user's address, for random
    /// addresses, from one network and from many) never keep the real user
    /// out, even between the two steps of the user's own login.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_login_starts_does_not_keep_the_real_user_out() {
        let (_dir, service) = service();
        let service = Arc::new(service);
        let alice = "alice@example.org";
        let right = LoginSecret::derive("right", alice);
        sign_up(&service, alice, &right).await;
        let attacker = ClientLogin::start();
        let flood = |addresses: Vec<(String, String)>| {
            let service = service.clone();
            let srp_a = attacker.a_pub().to_vec();
            async move {
                let calls = futures::stream::iter(addresses).map(|(peer, address)| {
                    let service = service.clone();
                    let srp_a = srp_a.clone();
                    async move {
                        let _ = service.login_start(from(&peer, pb::LoginStartRequest { address, srp_a })).await;
                    }
                });
                calls.buffer_unordered(16).collect::<Vec<()>>().await;
            }
        };
        const FLOOD: usize = 20_000;
        let one_network = |address: &dyn Fn(usize) -> String| {
            (0..FLOOD).map(|n| ("198.51.100.7".to_owned(), address(n))).collect::<Vec<_>>()
        };
        // Each of these is computed (every network has its own rate): fewer,
        // the table's own bound is tested in `logins`.
        let many_networks = |address: &dyn Fn(usize) -> String| {
            (0..FLOOD / 10)
                .map(|n| (format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255), address(n)))
                .collect::<Vec<_>>()
        };

        for (name, addresses) in [
            ("one address, one network", one_network(&|_| alice.to_owned())),
            ("random addresses, one network", one_network(&|n| format!("u{n}x{}@example.org", n * 7919))),
            ("one address, many networks", many_networks(&|_| alice.to_owned())),
        ] {
            // The flood before the user's login, and between its two steps.
            flood(addresses.clone()).await;
            let client = ClientLogin::start();
            let request = pb::LoginStartRequest { address: alice.into(), srp_a: client.a_pub().to_vec() };
            let started = service.login_start(from("192.0.2.1", request)).await;
            let started = started.unwrap_or_else(|status| panic!("{name}: {status:?}")).into_inner();
            if !name.contains("many networks") {
                flood(addresses).await;
            }
            let proof = client.finish(alice, &right, &started.srp_salt, &started.srp_b).unwrap();
            let request = pb::LoginFinishRequest { login_id: started.login_id, srp_m1: proof.m1.clone() };
            let finished = service.login_finish(from("192.0.2.1", request)).await;
            assert!(finished.is_ok(), "{name}: {finished:?}");
        }
        log_in(&service, "192.0.2.1", alice, &right).await.unwrap();
    }

    /// Issue 14: a flood of wrong passphrases for one address holds no lock
    /// while it is paid for, delays no other address, and the real user's
    /// right passphrase gets in at once from another network and within the
    /// longest delay from the attacker's own.
    #[tokio::test(start_paused = true)]
    async fn wrong_passphrases_queue_no_one() {
        let (_dir, service) = service();
        let (alice, bob) = ("alice@example.org", "bob@example.org");
        let right = LoginSecret::derive("right", alice);
        let wrong = LoginSecret::derive("wrong", alice);
        sign_up(&service, alice, &right).await;
        sign_up(&service, bob, &LoginSecret::derive("right", bob)).await;

        let bob_right = LoginSecret::derive("right", bob);
        let began = VirtualInstant::now();
        let guesses = (0..50).map(|_| async {
            let error = log_in(&service, "198.51.100.7", alice, &wrong).await.unwrap_err();
            assert!(
                matches!(error.code(), tonic::Code::PermissionDenied | tonic::Code::ResourceExhausted),
                "{error:?}"
            );
        });
        let timed = |future| async move {
            let result = future.await;
            (result, began.elapsed())
        };
        let (_, (alice_in, alice_took), (bob_in, bob_took)) = tokio::join!(
            futures::future::join_all(guesses),
            timed(log_in(&service, "192.0.2.1", alice, &right)),
            timed(log_in(&service, "192.0.2.2", bob, &bob_right)),
        );
        alice_in.unwrap();
        bob_in.unwrap();
        assert_eq!(alice_took, Duration::ZERO, "the real user waits for no one's failures");
        assert_eq!(bob_took, Duration::ZERO, "another address waits for no one");

        // On the attacker's own network the real user gets a turn within the longest delay.
        let began = VirtualInstant::now();
        loop {
            match log_in(&service, "198.51.100.7", alice, &right).await {
                Ok(_) => break,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("try again in"), "{status:?}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        assert!(began.elapsed() <= Duration::from_secs(30), "{:?}", began.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_logins_make_their_network_wait_and_spend_the_address_budget() {
        let (_dir, service) = service();
        let alice = "alice@example.org";
        let right = LoginSecret::derive("right", alice);
        let wrong = LoginSecret::derive("wrong", alice);
        sign_up(&service, alice, &right).await;
        let attacker = "198.51.100.7";

        // One at a time from one network: each answer waits longer.
        for n in 1..=3u64 {
            let began = VirtualInstant::now();
            let refused = log_in(&service, attacker, alice, &wrong).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
            assert_eq!(refused.message(), "wrong passphrase");
            assert_eq!(began.elapsed(), Duration::from_secs(n));
        }
        // In parallel from that network: one is checked, the rest refused unchecked.
        tokio::time::advance(Duration::from_secs(4)).await;
        let guesses = futures::future::join_all((0..5).map(|_| log_in(&service, attacker, alice, &wrong))).await;
        let codes: Vec<_> = guesses.iter().map(|guess| guess.as_ref().unwrap_err().code()).collect();
        assert_eq!(codes.iter().filter(|code| **code == tonic::Code::PermissionDenied).count(), 1, "{codes:?}");
        assert_eq!(codes.iter().filter(|code| **code == tonic::Code::ResourceExhausted).count(), 4, "{codes:?}");
        // Even the right passphrase waits its network's turn (while a wrong
        // one is being paid for)...
        let service = Arc::new(service);
        let paying = tokio::spawn({
            let (service, wrong) = (service.clone(), wrong.clone());
            async move { log_in(&service, attacker, alice, &wrong).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let early = log_in(&service, attacker, alice, &right).await.unwrap_err();
        assert_eq!(early.code(), tonic::Code::ResourceExhausted, "{early:?}");
        assert!(early.message().contains("try again in 5 seconds"), "{early:?}");
        // ...and then gets in, which clears that network's count.
        assert_eq!(paying.await.unwrap().unwrap_err().code(), tonic::Code::PermissionDenied);
        log_in(&service, attacker, alice, &right).await.unwrap();
        let began = VirtualInstant::now();
        assert!(log_in(&service, attacker, alice, &wrong).await.is_err());
        assert_eq!(began.elapsed(), Duration::from_secs(1));

        // Many networks spend the address's budget: then a network that
        // failed before is refused unchecked, a new one is still checked.
        for n in 0..crate::logins::ADDRESS_FAILURE_BURST {
            assert!(log_in(&service, &format!("203.0.113.{n}"), alice, &wrong).await.is_err());
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let refused = log_in(&service, "203.0.113.0", alice, &right).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        log_in(&service, "192.0.2.1", alice, &right).await.unwrap();
        // The budget comes back with time.
        tokio::time::advance(crate::logins::ADDRESS_FAILURE_REFILL).await;
        log_in(&service, "203.0.113.0", alice, &right).await.unwrap();
    }

    /// Issue 14: LoginStart for an address without an account answers as
    /// for one with an account (a salt that is the same each time, a B of
    /// the group), and LoginFinish refuses it as a wrong passphrase.
    #[tokio::test(start_paused = true)]
    async fn an_unknown_address_logs_in_like_a_wrong_passphrase() {
        let (_dir, service) = service();
        let alice = "alice@example.org";
        sign_up(&service, alice, &LoginSecret::derive("right", alice)).await;
        let start = |address: &str| {
            let client = ClientLogin::start();
            let request = pb::LoginStartRequest { address: address.into(), srp_a: client.a_pub().to_vec() };
            let service = &service;
            async move { (client, service.login_start(from("192.0.2.1", request)).await.map(Response::into_inner)) }
        };
        let (_, known) = start(alice).await;
        let known = known.unwrap();
        let (client, unknown) = start("nobody@example.org").await;
        let unknown = unknown.unwrap();
        assert_eq!(unknown.srp_salt.len(), known.srp_salt.len());
        assert_eq!(unknown.srp_b.len().div_ceil(8), known.srp_b.len().div_ceil(8), "B is a number of the group");
        assert_eq!(unknown.login_id.len(), known.login_id.len());
        let (_, again) = start("Nobody@example.org").await;
        assert_eq!(again.unwrap().srp_salt, unknown.srp_salt, "the same salt at every attempt");
        let (_, other) = start("somebody@example.org").await;
        assert_ne!(other.unwrap().srp_salt, unknown.srp_salt);

        let secret = LoginSecret::derive("anything", "nobody@example.org");
        let proof = client.finish("nobody@example.org", &secret, &unknown.srp_salt, &unknown.srp_b).unwrap();
        let request = pb::LoginFinishRequest { login_id: unknown.login_id, srp_m1: proof.m1.clone() };
        let refused = service.login_finish(from("192.0.2.1", request)).await.unwrap_err();
        let wrong = log_in(&service, "192.0.2.2", alice, &LoginSecret::derive("wrong", alice)).await.unwrap_err();
        assert_eq!((refused.code(), refused.message()), (wrong.code(), wrong.message()));
        // And its failures are counted like any address's: the second waits longer.
        let began = VirtualInstant::now();
        let refused = log_in(&service, "192.0.2.1", "nobody@example.org", &secret).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert_eq!(began.elapsed(), Duration::from_secs(2));
    }
}
