//! The `bitmask.keys.v1.Keys` gRPC edge over `bitmask-keys`, keeping the
//! keys as documents of the account's store (collection `keys`, sealed there
//! and synced, so another device of the account has the account key too).
//!
//! **Architecture invariant:** private key material lives only in this
//! process's memory and, sealed, in the store; a reply carries it only for an
//! explicit `ExportKey` with `include_secret`.

pub mod discovery;
mod streaming;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bitmask_keys::openpgp::{self, Algorithm, Certificate, SignatureStatus};
use bitmask_keys::validation::{KeyFacts, KeySource, ValidationLevel, may_replace};
use bitmask_proto::keys::v1 as pb;
use bitmask_proto::keys::v1::keys_server::Keys;
use bitmask_proto::provider::v1 as provider_pb;
use bitmask_proto::provider::v1::key_directory_client::KeyDirectoryClient;
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::{ProviderChannel, TracedChannel, connect_provider};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};

const COLLECTION: &str = "keys";
const ALL_KEYS_INDEX: &str = "keys-all";
/// The largest message encrypted or decrypted in one call.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What is kept of a key in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    fingerprint: String,
    addresses: Vec<String>,
    source: KeySource,
    #[serde(default)]
    source_detail: String,
    validation: ValidationLevel,
    /// The addresses this key is the active key of.
    active_for: Vec<String>,
    used: bool,
    /// The certificate (with secrets for the account's own keys), binary.
    certificate: String,
    /// The account key: the fingerprint-and-expiry last published to the
    /// provider's directory ("" when not yet).
    #[serde(default)]
    published: String,
    /// Seconds since the epoch of the last fetch from its source.
    #[serde(default)]
    refreshed: u64,
}

struct Entry {
    stored: StoredKey,
    cert: Certificate,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("fingerprint", &self.stored.fingerprint).finish_non_exhaustive()
    }
}

/// The service; cheap to clone (the state is shared), so background work
/// (publishing, refresh, streaming crypto) can hold it.
#[derive(Debug, Clone)]
pub struct KeysService(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    account: String,
    store: StoreClient<TracedChannel>,
    http: discovery::Http,
    /// Loaded from the store on first use (the store may still be locked at start).
    keys: Mutex<Option<HashMap<String, Entry>>>,
    /// Wakes the background work (an account key to publish).
    wake: Notify,
    refresh_every: Duration,
}

impl std::ops::Deref for KeysService {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn millis(time: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    time.map(prost_types::Timestamp::from)
}

fn store_status(status: Status) -> Status {
    Status::new(status.code(), format!("the store: {}", status.message()))
}

fn pgp_status(error: openpgp::PgpError) -> Status {
    use openpgp::PgpError;
    let message = error.to_string();
    match error {
        // The data itself is refused: the incoming processor files the
        // message as an explanation instead of retrying it.
        PgpError::NotAKey(_) | PgpError::Malformed(_) | PgpError::TooLarge => Status::invalid_argument(message),
        PgpError::Unusable(..) => Status::failed_precondition(message),
        PgpError::NotForUs => Status::permission_denied(message),
        PgpError::Other(_) => Status::internal(message),
    }
}

fn source_from_pb(source: i32) -> KeySource {
    match pb::KeySource::try_from(source).unwrap_or_default() {
        pb::KeySource::Generated => KeySource::Generated,
        pb::KeySource::ProviderDirectory => KeySource::ProviderDirectory,
        pb::KeySource::Wkd => KeySource::Wkd,
        pb::KeySource::Autocrypt => KeySource::Autocrypt,
        pb::KeySource::Attachment => KeySource::Attachment,
        pb::KeySource::OpenpgpHeader => KeySource::OpenPgpHeader,
        pb::KeySource::Imported | pb::KeySource::Unspecified => KeySource::Imported,
    }
}

fn source_to_pb(source: KeySource) -> pb::KeySource {
    match source {
        KeySource::Generated => pb::KeySource::Generated,
        KeySource::Imported => pb::KeySource::Imported,
        KeySource::ProviderDirectory => pb::KeySource::ProviderDirectory,
        KeySource::Wkd => pb::KeySource::Wkd,
        KeySource::Autocrypt => pb::KeySource::Autocrypt,
        KeySource::Attachment => pb::KeySource::Attachment,
        KeySource::OpenPgpHeader => pb::KeySource::OpenpgpHeader,
    }
}

const LEVELS: [(ValidationLevel, pb::ValidationLevel); 8] = [
    (ValidationLevel::WeakChain, pb::ValidationLevel::WeakChain),
    (ValidationLevel::ProviderTrust, pb::ValidationLevel::ProviderTrust),
    (ValidationLevel::ProviderEndorsement, pb::ValidationLevel::ProviderEndorsement),
    (ValidationLevel::ThirdPartyEndorsement, pb::ValidationLevel::ThirdPartyEndorsement),
    (ValidationLevel::ThirdPartyConsensus, pb::ValidationLevel::ThirdPartyConsensus),
    (ValidationLevel::HistoricallyAuditing, pb::ValidationLevel::HistoricallyAuditing),
    (ValidationLevel::KnownKey, pb::ValidationLevel::KnownKey),
    (ValidationLevel::Fingerprint, pb::ValidationLevel::Fingerprint),
];

fn level_from_pb(level: i32) -> Option<ValidationLevel> {
    let level = pb::ValidationLevel::try_from(level).ok()?;
    LEVELS.iter().find(|(_, api)| *api == level).map(|(ours, _)| *ours)
}

fn level_to_pb(level: ValidationLevel) -> pb::ValidationLevel {
    LEVELS.iter().find(|(ours, _)| *ours == level).map(|(_, api)| *api).unwrap_or_default()
}

impl Entry {
    fn to_pb(&self) -> pb::Key {
        let stored = &self.stored;
        pb::Key {
            fingerprint: stored.fingerprint.clone(),
            addresses: stored.addresses.clone(),
            has_secret: openpgp::has_secret(&self.cert),
            active: !stored.active_for.is_empty(),
            source: source_to_pb(stored.source).into(),
            source_detail: stored.source_detail.clone(),
            validation: level_to_pb(stored.validation).into(),
            created: millis(Some(self.cert.primary_key().key().creation_time())),
            expires: millis(openpgp::expires(&self.cert)),
            revoked: openpgp::revoked(&self.cert),
            used: stored.used,
            refreshed: (stored.refreshed > 0)
                .then_some(prost_types::Timestamp { seconds: stored.refreshed as i64, nanos: 0 }),
            algorithm: algorithm_of(&self.cert).into(),
        }
    }

    fn facts(&self) -> KeyFacts {
        KeyFacts {
            fingerprint: self.stored.fingerprint.clone(),
            validation: self.stored.validation,
            expires: openpgp::expires(&self.cert),
            used: self.stored.used,
        }
    }
}

/// Where a key being imported comes from.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    source: KeySource,
    validation: ValidationLevel,
    /// E.g. the URL it was fetched from.
    detail: &'a str,
}

impl<'a> Origin<'a> {
    fn of(source: KeySource, detail: &'a str) -> Self {
        Self { source, validation: source.default_level(), detail }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or_default()
}

fn algorithm_of(cert: &Certificate) -> pb::KeyAlgorithm {
    use bitmask_keys::openpgp::PublicKeyAlgorithm;
    match cert.primary_key().key().pk_algo() {
        PublicKeyAlgorithm::EdDSA | PublicKeyAlgorithm::Ed25519 => pb::KeyAlgorithm::Cv25519,
        #[allow(deprecated)] // RSA sign-only keys exist in the wild
        PublicKeyAlgorithm::RSAEncryptSign | PublicKeyAlgorithm::RSASign => pb::KeyAlgorithm::Rsa4096,
        _ => pb::KeyAlgorithm::Unspecified,
    }
}

fn encode(cert: &Certificate) -> Result<String, Status> {
    let bytes = openpgp::to_storage(cert).map_err(pgp_status)?;
    Ok(data_encoding::BASE64.encode(&bytes))
}

fn decode(stored: &StoredKey) -> Result<Certificate, Status> {
    let bytes = data_encoding::BASE64
        .decode(stored.certificate.as_bytes())
        .map_err(|_| Status::data_loss(format!("stored key {} is damaged", stored.fingerprint)))?;
    let mut certs = openpgp::parse_certs(&bytes).map_err(pgp_status)?;
    certs.pop().ok_or_else(|| Status::data_loss(format!("stored key {} is damaged", stored.fingerprint)))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(work).await.map_err(|error| Status::internal(format!("key task failed: {error}")))
}

impl KeysService {
    pub fn new(account: String, store: TracedChannel, http: discovery::Http, refresh_every: Duration) -> Self {
        let store = StoreClient::new(store).max_decoding_message_size(64 << 20);
        Self(Arc::new(Inner { account, store, http, keys: Mutex::new(None), wake: Notify::new(), refresh_every }))
    }
}

impl Inner {
    /// The keys, loaded from the store on first use.
    async fn loaded(&self) -> Result<tokio::sync::MutexGuard<'_, Option<HashMap<String, Entry>>>, Status> {
        let mut keys = self.keys.lock().await;
        if keys.is_none() {
            let mut store = self.store.clone();
            let collection = store_pb::CollectionDefinition {
                name: COLLECTION.into(),
                conflict_policy: store_pb::ConflictPolicy::LastWriterWins.into(),
                local_only: false,
            };
            store.declare_collection(collection).await.map_err(store_status)?;
            let index = store_pb::IndexDefinition {
                name: ALL_KEYS_INDEX.into(),
                collection: COLLECTION.into(),
                fields: vec![],
                unique: false,
            };
            store.declare_index(index).await.map_err(store_status)?;
            let query = store_pb::QueryRequest { index: ALL_KEYS_INDEX.into(), ..Default::default() };
            let documents = store.query(query).await.map_err(store_status)?.into_inner().documents;
            let mut loaded = HashMap::new();
            for document in documents {
                let stored: StoredKey = serde_json::from_slice(&document.content)
                    .map_err(|_| Status::data_loss(format!("stored key {} is damaged", document.id)))?;
                let cert = decode(&stored)?;
                loaded.insert(stored.fingerprint.clone(), Entry { stored, cert });
            }
            *keys = Some(loaded);
        }
        Ok(keys)
    }

    async fn save(&self, entry: &Entry) -> Result<(), Status> {
        let content = serde_json::to_vec(&entry.stored).map_err(|error| Status::internal(error.to_string()))?;
        let put = store_pb::PutRequest {
            id: format!("key/{}", entry.stored.fingerprint),
            collection: COLLECTION.into(),
            content,
            ..Default::default()
        };
        self.store.clone().put(put).await.map_err(store_status)?;
        Ok(())
    }

    async fn remove(&self, fingerprint: &str) -> Result<(), Status> {
        let delete = store_pb::DeleteRequest { id: format!("key/{fingerprint}"), expected_rev: String::new() };
        self.store.clone().delete(delete).await.map_err(store_status)?;
        Ok(())
    }

    fn active<'a>(keys: &'a HashMap<String, Entry>, address: &str) -> Option<&'a Entry> {
        keys.values().find(|entry| entry.stored.active_for.iter().any(|active| active == address))
    }

    fn account_key(keys: &HashMap<String, Entry>, account: &str) -> Option<Certificate> {
        Self::active(keys, account).filter(|entry| openpgp::has_secret(&entry.cert)).map(|entry| entry.cert.clone())
    }

    /// Imports one certificate for its addresses, applying the replacement rules.
    async fn import_one(
        &self,
        keys: &mut HashMap<String, Entry>,
        cert: Certificate,
        origin: Origin<'_>,
        only_address: Option<&str>,
    ) -> Result<pb::ImportResult, Status> {
        let Origin { source, validation, detail } = origin;
        let fingerprint = openpgp::fingerprint(&cert);
        let refuse = |reason: String| pb::ImportResult { fingerprint: fingerprint.clone(), imported: false, reason };
        // A key we have already: take its public updates, keep our secrets.
        let cert = match keys.get(&fingerprint) {
            Some(existing) => {
                existing.cert.clone().merge_public(cert).map_err(|error| Status::invalid_argument(error.to_string()))?
            }
            None => cert,
        };
        if let Err(error) = openpgp::usable(&cert) {
            return Ok(refuse(error.to_string()));
        }
        let addresses: Vec<String> = match only_address {
            Some(address) => vec![address.to_lowercase()],
            None => openpgp::addresses(&cert),
        };
        if addresses.is_empty() {
            return Ok(refuse("the key has no user id with an e-mail address".into()));
        }
        let candidate = Entry {
            stored: StoredKey {
                fingerprint: fingerprint.clone(),
                addresses: openpgp::addresses(&cert),
                source,
                source_detail: detail.to_owned(),
                validation,
                active_for: Vec::new(),
                used: false,
                certificate: encode(&cert)?,
                published: String::new(),
                refreshed: if source.is_fetched() { unix_now() } else { 0 },
            },
            cert,
        };
        let mut active_for = Vec::new();
        let mut replaced = Vec::new();
        for address in &addresses {
            let old = Self::active(keys, address);
            let signed_by_old = old.is_some_and(|old| openpgp::certified_by(&candidate.cert, &old.cert));
            match may_replace(old.map(Entry::facts).as_ref(), &candidate.facts(), signed_by_old, SystemTime::now()) {
                Ok(_) => {
                    active_for.push(address.clone());
                    if let Some(old) = old.filter(|old| old.stored.fingerprint != fingerprint) {
                        replaced.push((old.stored.fingerprint.clone(), address.clone()));
                    }
                }
                Err(refusal) => return Ok(refuse(refusal.to_string())),
            }
        }
        for (old, address) in replaced {
            if let Some(entry) = keys.get_mut(&old) {
                entry.stored.active_for.retain(|active| *active != address);
                self.save(entry).await?;
            }
        }
        let mut candidate = candidate;
        if let Some(existing) = keys.get(&fingerprint) {
            // Merge with what we had: keep the stronger level (and its source) and the use.
            if existing.stored.validation >= candidate.stored.validation {
                candidate.stored.validation = existing.stored.validation;
                candidate.stored.source = existing.stored.source;
                candidate.stored.source_detail = existing.stored.source_detail.clone();
            }
            candidate.stored.used |= existing.stored.used;
            candidate.stored.published = existing.stored.published.clone();
            candidate.stored.refreshed = candidate.stored.refreshed.max(existing.stored.refreshed);
            for address in &existing.stored.active_for {
                if !active_for.contains(address) {
                    active_for.push(address.clone());
                }
            }
        }
        candidate.stored.active_for = active_for;
        self.save(&candidate).await?;
        keys.insert(fingerprint.clone(), candidate);
        Ok(pb::ImportResult { fingerprint, imported: true, reason: String::new() })
    }
}

/// A key found at one of the remote sources.
struct Found {
    data: Vec<u8>,
    source: KeySource,
    detail: String,
}

/// How often fetched keys are fetched again.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Account keys are extended this long before they expire.
pub const EXTEND_BEFORE: Duration = Duration::from_secs(60 * 24 * 3600);

impl Inner {
    /// The provider's key directory, when the account has a provider (its
    /// connection is the store's sync configuration).
    async fn directory(&self) -> Result<Option<KeyDirectoryClient<ProviderChannel>>, Status> {
        let request = store_pb::GetSyncConfigRequest {};
        let config = match self.store.clone().get_sync_config(request).await {
            Ok(config) => config.into_inner(),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => return Ok(None),
            Err(status) => return Err(store_status(status)),
        };
        let channel = connect_provider(&config.url, &config.ca_certificate_pem, &config.session_token).await?;
        Ok(Some(KeyDirectoryClient::new(channel)))
    }

    /// Asks the remote sources for `address`'s key, in order: the provider's
    /// directory, then Web Key Directory. Nothing is imported here.
    async fn fetch_remote(&self, address: &str, tried: &mut Vec<String>) -> Option<Found> {
        match self.directory().await {
            Ok(None) => tried.push("provider directory: no provider configured".into()),
            Ok(Some(mut directory)) => {
                match directory.lookup_key(provider_pb::LookupKeyRequest { address: address.to_owned() }).await {
                    Ok(found) => {
                        tried.push("provider directory: found".into());
                        return Some(Found {
                            data: found.into_inner().armored_key.into_bytes(),
                            source: KeySource::ProviderDirectory,
                            detail: "provider directory".into(),
                        });
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        tried.push("provider directory: not found".into());
                    }
                    Err(status) => tried.push(format!("provider directory: {}", status.message())),
                }
            }
            Err(status) => tried.push(format!("provider directory: {}", status.message())),
        }
        let outcome = discovery::wkd(&self.http, address).await;
        tried.extend(outcome.tried);
        outcome.found.map(|(data, url)| Found { data, source: KeySource::Wkd, detail: url })
    }

    /// Imports what a source gave for `address`: only certificates with a
    /// user id of that address, and only for it.
    async fn import_found(
        &self,
        keys: &mut HashMap<String, Entry>,
        address: &str,
        found: &Found,
    ) -> Result<Vec<pb::ImportResult>, Status> {
        let data = found.data.clone();
        let certs = match blocking(move || openpgp::parse_certs(&data)).await? {
            Ok(certs) => certs,
            Err(error) => {
                let reason = format!("{}: {error}", found.detail);
                return Ok(vec![pb::ImportResult { fingerprint: String::new(), imported: false, reason }]);
            }
        };
        let mut results = Vec::new();
        for cert in certs {
            if openpgp::has_secret(&cert) {
                let reason = "a fetched or received key must not carry secret key material".into();
                results.push(pb::ImportResult { fingerprint: openpgp::fingerprint(&cert), imported: false, reason });
                continue;
            }
            if !openpgp::addresses(&cert).iter().any(|uid| uid == address) {
                let reason = format!("the key has no user id for {address}");
                results.push(pb::ImportResult { fingerprint: openpgp::fingerprint(&cert), imported: false, reason });
                continue;
            }
            let origin = Origin::of(found.source, &found.detail);
            results.push(self.import_one(keys, cert, origin, Some(address)).await?);
        }
        Ok(results)
    }

    /// FetchKey: the remote sources for `address`, imported by the rules.
    async fn fetch(&self, address: &str) -> Result<pb::FetchKeyResponse, Status> {
        let mut tried = Vec::new();
        let found = self.fetch_remote(address, &mut tried).await;
        let mut guard = self.loaded().await?;
        let keys = guard.get_or_insert_with(HashMap::new);
        let result = match &found {
            Some(found) => self.import_found(keys, address, found).await?.into_iter().next(),
            None => None,
        };
        let key = Self::active(keys, address).map(Entry::to_pb);
        Ok(pb::FetchKeyResponse { key, tried, result })
    }

    /// Publishes the account key to the provider's directory unless this
    /// version of it (fingerprint and expiry) is there already.
    async fn publish_account_key(&self) -> Result<bool, Status> {
        let (fingerprint, version, armored) = {
            let guard = self.loaded().await?;
            let Some(entry) = guard.as_ref().and_then(|keys| Self::active(keys, &self.account)) else {
                return Ok(false);
            };
            let version = published_version(&entry.cert);
            if entry.stored.published == version {
                return Ok(false);
            }
            let armored = openpgp::export_public(&entry.cert, true).map_err(pgp_status)?;
            (entry.stored.fingerprint.clone(), version, armored)
        };
        let Some(mut directory) = self.directory().await? else { return Ok(false) };
        let armored_key = String::from_utf8(armored).map_err(|_| Status::internal("armor is text"))?;
        directory.publish_key(provider_pb::PublishKeyRequest { armored_key }).await?;
        let mut guard = self.loaded().await?;
        if let Some(entry) = guard.as_mut().and_then(|keys| keys.get_mut(&fingerprint)) {
            entry.stored.published = version;
            let entry = &*entry;
            self.save(entry).await?;
        }
        tracing::info!(%fingerprint, "published the account key to the provider's directory");
        Ok(true)
    }

    /// Extends the account key when it expires within [`EXTEND_BEFORE`].
    async fn extend_account_key(&self) -> Result<bool, Status> {
        let mut guard = self.loaded().await?;
        let Some(keys) = guard.as_mut() else { return Ok(false) };
        let Some(entry) = Self::active(keys, &self.account).filter(|entry| openpgp::has_secret(&entry.cert)) else {
            return Ok(false);
        };
        let due = openpgp::expires(&entry.cert).is_some_and(|at| at < SystemTime::now() + EXTEND_BEFORE);
        if !due {
            return Ok(false);
        }
        let cert = entry.cert.clone();
        let extended = blocking(move || openpgp::extend(&cert, openpgp::VALIDITY)).await?.map_err(pgp_status)?;
        let fingerprint = entry.stored.fingerprint.clone();
        if let Some(entry) = keys.get_mut(&fingerprint) {
            entry.stored.certificate = encode(&extended)?;
            entry.cert = extended;
            let entry = &*entry;
            self.save(entry).await?;
        }
        tracing::info!(%fingerprint, "extended the account key");
        Ok(true)
    }

    /// Refresh: the account key extended and (re)published, other keys
    /// fetched again from where they came from, by the replacement rules.
    /// `all`: every fetched key now; otherwise those older than the interval.
    async fn refresh(&self, all: bool) -> pb::RefreshResponse {
        let mut response = pb::RefreshResponse::default();
        match self.extend_account_key().await {
            Ok(extended) => response.refreshed += u32::from(extended),
            Err(status) => response.errors.push(format!("extending the account key: {}", status.message())),
        }
        if let Err(status) = self.publish_account_key().await {
            response.errors.push(format!("publishing the account key: {}", status.message()));
        }
        let due: Vec<(String, String, KeySource, String)> = match self.loaded().await {
            Ok(guard) => {
                let horizon = unix_now().saturating_sub(self.refresh_every.as_secs());
                guard
                    .iter()
                    .flat_map(|keys| keys.values())
                    .filter(|entry| entry.stored.source.is_fetched() && !openpgp::has_secret(&entry.cert))
                    .filter(|entry| all || entry.stored.refreshed <= horizon)
                    .flat_map(|entry| {
                        entry.stored.active_for.iter().map(|address| {
                            let stored = &entry.stored;
                            (stored.fingerprint.clone(), address.clone(), stored.source, stored.source_detail.clone())
                        })
                    })
                    .collect()
            }
            Err(status) => {
                response.errors.push(status.message().to_owned());
                return response;
            }
        };
        for (fingerprint, address, source, detail) in due {
            let mut tried = Vec::new();
            let found = match source {
                KeySource::OpenPgpHeader => match self.http.get(&detail).await {
                    Ok(Some(data)) => Some(Found { data, source, detail }),
                    Ok(None) => None,
                    Err(error) => {
                        response.errors.push(format!("{address}: {error}"));
                        None
                    }
                },
                _ => self.fetch_remote(&address, &mut tried).await,
            };
            let Some(found) = found else { continue };
            let Ok(mut guard) = self.loaded().await else { continue };
            let keys = guard.get_or_insert_with(HashMap::new);
            match self.import_found(keys, &address, &found).await {
                Ok(results) => {
                    for result in results {
                        if result.imported && result.fingerprint == fingerprint {
                            response.refreshed += 1;
                        } else if result.imported {
                            response.replaced += 1;
                        } else {
                            response.errors.push(format!("{address}: {}", result.reason));
                        }
                    }
                    if let Some(entry) = keys.get_mut(&fingerprint) {
                        entry.stored.refreshed = unix_now();
                        let entry = &*entry;
                        if let Err(status) = self.save(entry).await {
                            response.errors.push(status.message().to_owned());
                        }
                    }
                }
                Err(status) => response.errors.push(format!("{address}: {}", status.message())),
            }
        }
        response
    }
}

/// What identifies a published version of the account key: a new expiry
/// (after an extension) is published again.
fn published_version(cert: &Certificate) -> String {
    let expires = openpgp::expires(cert)
        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|since| since.as_secs())
        .unwrap_or_default();
    format!("{}/{expires}", openpgp::fingerprint(cert))
}

impl KeysService {
    /// The background work: publishing the account key once the provider is
    /// known (woken by EnsureAccountKey), and the periodic refresh.
    /// Forgets the loaded keys whenever sync brings a change to them (a key
    /// made or imported on another device of the account), so that the next
    /// use reads them again: mail encrypted to a key another device made opens
    /// here too, without a restart. A broken watch (the store restarting or
    /// still locked) is opened again a second later, and the keys are read
    /// again then, since a change may have come in between.
    pub async fn follow_synced_keys(self) {
        loop {
            let request = store_pb::WatchRequest {
                collections: vec![COLLECTION.into()],
                since_sequence: None,
                include_content: false,
            };
            if let Ok(response) = self.store.clone().watch(request).await {
                let mut changes = response.into_inner();
                *self.keys.lock().await = None;
                while let Ok(Some(change)) = changes.message().await {
                    // Sync's, or a replay that cannot say whose (ours are known).
                    if change.origin() != store_pb::change::Origin::Local {
                        tracing::info!("keys changed on another device; reading them again");
                        *self.keys.lock().await = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    pub async fn background(self) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {
                    if let Err(status) = self.publish_account_key().await {
                        tracing::warn!(error = %status.message(), "cannot publish the account key yet");
                    }
                }
                () = tokio::time::sleep(self.refresh_every) => {
                    let outcome = Inner::refresh(&self, false).await;
                    for error in &outcome.errors {
                        tracing::warn!(%error, "key refresh");
                    }
                    tracing::info!(refreshed = outcome.refreshed, replaced = outcome.replaced, "key refresh done");
                }
            }
        }
    }
}

type ByteStream<T> = tonic::codegen::BoxStream<T>;

/// Reads a streamed request: its options (first message), then the data.
async fn read_stream<M, O>(
    mut stream: tonic::Streaming<M>,
    split: impl Fn(M) -> (Option<O>, Vec<u8>),
) -> Result<(O, Vec<u8>), Status>
where
    M: Send + 'static,
    O: Default,
{
    let mut options = None;
    let mut data = Vec::new();
    while let Some(message) = stream.message().await? {
        let (given, bytes) = split(message);
        if given.is_some() {
            options = given;
        }
        if data.len() + bytes.len() > MAX_MESSAGE_BYTES {
            return Err(Status::invalid_argument(format!("a message has at most {MAX_MESSAGE_BYTES} bytes")));
        }
        data.extend_from_slice(&bytes);
    }
    Ok((options.unwrap_or_default(), data))
}

fn signature_to_pb(status: &SignatureStatus, addresses: &HashMap<String, Vec<String>>) -> pb::SignatureOutcome {
    match status {
        SignatureStatus::None => {
            pb::SignatureOutcome { status: pb::SignatureStatus::None.into(), ..Default::default() }
        }
        SignatureStatus::Valid { fingerprint } => pb::SignatureOutcome {
            status: pb::SignatureStatus::Valid.into(),
            fingerprint: fingerprint.clone(),
            signer_addresses: addresses.get(fingerprint).cloned().unwrap_or_default(),
            ..Default::default()
        },
        SignatureStatus::Invalid { detail } => pb::SignatureOutcome {
            status: pb::SignatureStatus::Invalid.into(),
            detail: detail.clone(),
            ..Default::default()
        },
        SignatureStatus::UnknownSigner { issuer } => pb::SignatureOutcome {
            status: pb::SignatureStatus::UnknownSigner.into(),
            detail: format!("signed by {issuer}, whose key we do not have"),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl Keys for KeysService {
    async fn ensure_account_key(
        &self,
        request: Request<pb::EnsureAccountKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let algorithm = match request.into_inner().algorithm() {
            pb::KeyAlgorithm::Rsa4096 => Algorithm::Rsa4096,
            _ => Algorithm::Cv25519,
        };
        let mut guard = self.loaded().await?;
        // Publishing (once the provider is known) happens in the background.
        self.wake.notify_one();
        let has_account_key = |keys: &HashMap<String, Entry>| {
            Inner::active(keys, &self.account).is_some_and(|entry| openpgp::has_secret(&entry.cert))
        };
        if !guard.as_ref().is_some_and(has_account_key) {
            // Read again before making one: sync may have brought the key
            // another device made since the keys were loaded (a second key
            // would take that device's mail from it).
            drop(guard);
            *self.keys.lock().await = None;
            guard = self.loaded().await?;
        }
        let keys = guard.get_or_insert_with(HashMap::new);
        if let Some(entry) = Inner::active(keys, &self.account).filter(|entry| openpgp::has_secret(&entry.cert)) {
            return Ok(Response::new(entry.to_pb()));
        }
        let account = self.account.clone();
        let cert = blocking(move || openpgp::generate(&account, algorithm)).await?.map_err(pgp_status)?;
        let result = self.import_one(keys, cert, Origin::of(KeySource::Generated, ""), Some(&self.account)).await?;
        tracing::info!(fingerprint = %result.fingerprint, "generated the account key");
        let entry = keys.get(&result.fingerprint).ok_or_else(|| Status::internal("the new key is gone"))?;
        Ok(Response::new(entry.to_pb()))
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        let request = request.into_inner();
        let address = request.address.to_lowercase();
        let guard = self.loaded().await?;
        let mut keys: Vec<pb::Key> = guard
            .iter()
            .flat_map(|keys| keys.values())
            .filter(|entry| address.is_empty() || entry.stored.addresses.contains(&address))
            .filter(|entry| !request.only_secret || openpgp::has_secret(&entry.cert))
            .map(Entry::to_pb)
            .collect();
        keys.sort_by(|a, b| (a.addresses.first(), &a.fingerprint).cmp(&(b.addresses.first(), &b.fingerprint)));
        Ok(Response::new(pb::ListKeysResponse { keys }))
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Result<Response<pb::Key>, Status> {
        let request = request.into_inner();
        if let (true, Some(pb::get_key_request::Selector::Address(address))) = (request.fetch, &request.selector) {
            let address = address.to_lowercase();
            let known = self.loaded().await?.as_ref().is_some_and(|keys| Inner::active(keys, &address).is_some());
            if !known {
                let fetched = self.fetch(&address).await?;
                return fetched
                    .key
                    .map(Response::new)
                    .ok_or_else(|| Status::not_found(format!("no key for {address}: {}", fetched.tried.join("; "))));
            }
        }
        let guard = self.loaded().await?;
        let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
        let entry = match request.selector {
            Some(pb::get_key_request::Selector::Address(address)) => Inner::active(keys, &address.to_lowercase()),
            Some(pb::get_key_request::Selector::Fingerprint(fingerprint)) => keys.get(&fingerprint.to_uppercase()),
            None => return Err(Status::invalid_argument("give an address or a fingerprint")),
        };
        entry.map(|entry| Response::new(entry.to_pb())).ok_or_else(|| Status::not_found("no such key"))
    }

    async fn import_key(
        &self,
        request: Request<pb::ImportKeyRequest>,
    ) -> Result<Response<pb::ImportKeyResponse>, Status> {
        let request = request.into_inner();
        let source = source_from_pb(request.source);
        let validation = level_from_pb(request.validation).unwrap_or(source.default_level());
        let data = request.data;
        let certs = blocking(move || openpgp::parse_certs(&data)).await?.map_err(pgp_status)?;
        let mut guard = self.loaded().await?;
        let keys = guard.get_or_insert_with(HashMap::new);
        let only = (!request.address.is_empty()).then_some(request.address.as_str());
        let mut results = Vec::new();
        for cert in certs {
            let origin = Origin { source, validation, detail: "" };
            results.push(self.import_one(keys, cert, origin, only).await?);
        }
        Ok(Response::new(pb::ImportKeyResponse { results }))
    }

    async fn export_key(
        &self,
        request: Request<pb::ExportKeyRequest>,
    ) -> Result<Response<pb::ExportKeyResponse>, Status> {
        let request = request.into_inner();
        let guard = self.loaded().await?;
        let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
        let entry = match &request.selector {
            Some(pb::export_key_request::Selector::Address(address)) => Inner::active(keys, &address.to_lowercase()),
            Some(pb::export_key_request::Selector::Fingerprint(fingerprint)) => keys.get(&fingerprint.to_uppercase()),
            None => return Err(Status::invalid_argument("give an address or a fingerprint")),
        };
        let entry = entry.ok_or_else(|| Status::not_found("no such key"))?;
        let data = if request.include_secret {
            if !openpgp::has_secret(&entry.cert) {
                return Err(Status::failed_precondition("this key has no secret part here"));
            }
            tracing::warn!(fingerprint = %entry.stored.fingerprint, "exporting a secret key on request");
            openpgp::export_secret(&entry.cert, request.armor).map_err(pgp_status)?.to_vec()
        } else {
            openpgp::export_public(&entry.cert, request.armor).map_err(pgp_status)?
        };
        Ok(Response::new(pb::ExportKeyResponse { data }))
    }

    async fn delete_key(
        &self,
        request: Request<pb::DeleteKeyRequest>,
    ) -> Result<Response<pb::DeleteKeyResponse>, Status> {
        let fingerprint = request.into_inner().fingerprint.to_uppercase();
        let mut guard = self.loaded().await?;
        let keys = guard.get_or_insert_with(HashMap::new);
        let entry = keys.get(&fingerprint).ok_or_else(|| Status::not_found("no such key"))?;
        if openpgp::has_secret(&entry.cert) && entry.stored.active_for.contains(&self.account) {
            return Err(Status::failed_precondition("this is the account's own active key; it cannot be deleted"));
        }
        self.remove(&fingerprint).await?;
        keys.remove(&fingerprint);
        Ok(Response::new(pb::DeleteKeyResponse {}))
    }

    async fn fetch_key(&self, request: Request<pb::FetchKeyRequest>) -> Result<Response<pb::FetchKeyResponse>, Status> {
        let address = request.into_inner().address.to_lowercase();
        bitmask_keys::wkd::urls(&address).map_err(|error| Status::invalid_argument(error.to_string()))?;
        Ok(Response::new(self.fetch(&address).await?))
    }

    async fn learn_from_message(
        &self,
        request: Request<pb::LearnFromMessageRequest>,
    ) -> Result<Response<pb::LearnFromMessageResponse>, Status> {
        let request = request.into_inner();
        let message = request.message;
        let offered = blocking(move || bitmask_keys::learn::offered(&message)).await?;
        let Some(sender) = offered.sender else {
            return Ok(Response::new(pb::LearnFromMessageResponse::default()));
        };
        let mut found = Vec::new();
        if let Some(data) = offered.autocrypt {
            found.push(Found { data, source: KeySource::Autocrypt, detail: "Autocrypt header".into() });
        }
        for data in offered.attachments {
            found.push(Found { data, source: KeySource::Attachment, detail: "attached key".into() });
        }
        let mut results = Vec::new();
        if let Some(url) = offered.openpgp_header.and_then(|header| header.url) {
            match self.http.get(&url).await {
                Ok(Some(data)) => found.push(Found { data, source: KeySource::OpenPgpHeader, detail: url }),
                Ok(None) => {
                    results.push(pb::ImportResult { reason: format!("{url}: not found"), ..Default::default() })
                }
                Err(error) => results.push(pb::ImportResult { reason: error.to_string(), ..Default::default() }),
            }
        }
        let mut guard = self.loaded().await?;
        let keys = guard.get_or_insert_with(HashMap::new);
        for found in &found {
            results.extend(self.import_found(keys, &sender, found).await?);
        }
        Ok(Response::new(pb::LearnFromMessageResponse { results }))
    }

    async fn refresh(&self, _request: Request<pb::RefreshRequest>) -> Result<Response<pb::RefreshResponse>, Status> {
        Ok(Response::new(Inner::refresh(self, true).await))
    }

    async fn encrypt(
        &self,
        request: Request<tonic::Streaming<pb::EncryptRequest>>,
    ) -> Result<Response<ByteStream<pb::EncryptResponse>>, Status> {
        let mut stream = request.into_inner();
        let options = match stream.message().await?.and_then(|first| first.item) {
            Some(pb::encrypt_request::Item::Options(options)) => options,
            _ => return Err(Status::invalid_argument("the first message carries the options")),
        };
        if options.recipients.is_empty() {
            return Err(Status::invalid_argument("name at least one recipient"));
        }
        let addresses: Vec<String> = options.recipients.iter().map(|address| address.to_lowercase()).collect();
        if options.fetch_missing {
            let missing: Vec<&String> = {
                let guard = self.loaded().await?;
                let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
                addresses.iter().filter(|address| Inner::active(keys, address).is_none()).collect()
            };
            for address in missing {
                self.fetch(address).await?;
            }
        }
        let mut guard = self.loaded().await?;
        let keys = guard.get_or_insert_with(HashMap::new);
        let mut recipients = Vec::new();
        for address in &addresses {
            let entry = Inner::active(keys, address)
                .ok_or_else(|| Status::failed_precondition(format!("no key is known for {address}")))?;
            recipients.push(entry.stored.fingerprint.clone());
        }
        let certs: Vec<Certificate> =
            recipients.iter().filter_map(|fingerprint| keys.get(fingerprint)).map(|entry| entry.cert.clone()).collect();
        let signer = if options.sign {
            Some(
                Inner::account_key(keys, &self.account)
                    .ok_or_else(|| Status::failed_precondition("the account has no key yet"))?,
            )
        } else {
            None
        };
        // Checked before anything streams, so a refusal is a clear status.
        for cert in &certs {
            openpgp::usable(cert).map_err(pgp_status)?;
        }
        // The replacement rules need to know which keys were ever used.
        for fingerprint in &recipients {
            if let Some(entry) = keys.get_mut(fingerprint).filter(|entry| !entry.stored.used) {
                entry.stored.used = true;
                let entry = &*entry;
                self.save(entry).await?;
            }
        }
        drop(guard);
        let input = streaming::reader(
            stream,
            |message| match message.item {
                Some(pb::encrypt_request::Item::Data(data)) => Some(data),
                _ => None,
            },
            MAX_MESSAGE_BYTES,
        );
        let armor = options.armor;
        let wrap = |data| pb::EncryptResponse { data, recipient_fingerprints: Vec::new() };
        Ok(Response::new(streaming::pipe(input, wrap, move |mut input, output| {
            openpgp::encrypt_stream(&mut input, output, &certs, signer.as_ref(), armor).map_err(pgp_status)?;
            Ok(pb::EncryptResponse { data: Vec::new(), recipient_fingerprints: recipients })
        })))
    }

    async fn decrypt(
        &self,
        request: Request<tonic::Streaming<pb::DecryptRequest>>,
    ) -> Result<Response<ByteStream<pb::DecryptResponse>>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.and_then(|first| first.item);
        let (_options, pending) = match first {
            Some(pb::decrypt_request::Item::Options(options)) => (options, Vec::new()),
            // Options are optional here: the data may come at once.
            Some(pb::decrypt_request::Item::Data(data)) => (pb::DecryptOptions { verify: true }, data),
            None => return Err(Status::invalid_argument("an empty message")),
        };
        let (secret, known, addresses) = {
            let guard = self.loaded().await?;
            let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
            let secret: Vec<Certificate> = keys
                .values()
                .filter(|entry| openpgp::has_secret(&entry.cert))
                .map(|entry| entry.cert.clone())
                .collect();
            let known: Vec<Certificate> = keys.values().map(|entry| entry.cert.clone()).collect();
            let addresses: HashMap<String, Vec<String>> =
                keys.values().map(|entry| (entry.stored.fingerprint.clone(), entry.stored.addresses.clone())).collect();
            (secret, known, addresses)
        };
        let input = streaming::reader(
            stream,
            |message| match message.item {
                Some(pb::decrypt_request::Item::Data(data)) => Some(data),
                _ => None,
            },
            MAX_MESSAGE_BYTES,
        );
        let wrap = |data| pb::DecryptResponse { data, signature: None, decrypted_with: String::new() };
        Ok(Response::new(streaming::pipe(input, wrap, move |input, output| {
            let input = std::io::Read::chain(std::io::Cursor::new(pending), input);
            let outcome = openpgp::decrypt_stream(input, output, &secret, &known).map_err(pgp_status)?;
            Ok(pb::DecryptResponse {
                data: Vec::new(),
                signature: Some(signature_to_pb(&outcome.signature, &addresses)),
                decrypted_with: outcome.decrypted_with,
            })
        })))
    }

    async fn sign(
        &self,
        request: Request<tonic::Streaming<pb::SignRequest>>,
    ) -> Result<Response<ByteStream<pb::SignResponse>>, Status> {
        let (options, data) = read_stream(request.into_inner(), |message| match message.item {
            Some(pb::sign_request::Item::Options(options)) => (Some(options), Vec::new()),
            Some(pb::sign_request::Item::Data(data)) => (None, data),
            None => (None, Vec::new()),
        })
        .await?;
        if !options.detached {
            return Err(Status::unimplemented("only detached signatures are made here (as multipart/signed needs)"));
        }
        let guard = self.loaded().await?;
        let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
        let signer = Inner::account_key(keys, &self.account)
            .ok_or_else(|| Status::failed_precondition("the account has no key yet"))?;
        let armor = options.armor;
        let signature = blocking(move || openpgp::sign_detached(&data, &signer, armor)).await?.map_err(pgp_status)?;
        let messages = vec![Ok(pb::SignResponse { data: signature, micalg: "pgp-sha512".into() })];
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn verify(
        &self,
        request: Request<tonic::Streaming<pb::VerifyRequest>>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let (options, data) = read_stream(request.into_inner(), |message| match message.item {
            Some(pb::verify_request::Item::Options(options)) => (Some(options), Vec::new()),
            Some(pb::verify_request::Item::Data(data)) => (None, data),
            None => (None, Vec::new()),
        })
        .await?;
        let guard = self.loaded().await?;
        let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
        let known: Vec<Certificate> = keys.values().map(|entry| entry.cert.clone()).collect();
        let detached = options.detached_signature;
        let (content, status) = blocking(move || {
            if detached.is_empty() {
                openpgp::verify_inline(&data, &known)
            } else {
                openpgp::verify_detached(&data, &detached, &known).map(|status| (Vec::new(), status))
            }
        })
        .await?
        .map_err(pgp_status)?;
        let addresses =
            keys.values().map(|entry| (entry.stored.fingerprint.clone(), entry.stored.addresses.clone())).collect();
        Ok(Response::new(pb::VerifyResponse { signature: Some(signature_to_pb(&status, &addresses)), content }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_decrypting_to_too_much_is_refused_as_data() {
        // INVALID_ARGUMENT: the incoming processor files an explanation
        // instead of retrying the item forever.
        let status = pgp_status(openpgp::PgpError::TooLarge);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("larger than"), "{}", status.message());
    }
}
