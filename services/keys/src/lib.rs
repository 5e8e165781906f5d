//! The `bitmask.keys.v1.Keys` gRPC edge over `bitmask-keys`, keeping the
//! keys as documents of the account's store (collection `keys`, sealed there
//! and synced, so another device of the account has the account key too).
//!
//! **Architecture invariant:** private key material lives only in this
//! process's memory and, sealed, in the store; a reply carries it only for an
//! explicit `ExportKey` with `include_secret`.

use std::collections::HashMap;
use std::time::SystemTime;

use bitmask_keys::openpgp::{self, Algorithm, Certificate, SignatureStatus};
use bitmask_keys::validation::{KeyFacts, KeySource, ValidationLevel, may_replace};
use bitmask_proto::keys::v1 as pb;
use bitmask_proto::keys::v1::keys_server::Keys;
use bitmask_proto::store::v1 as store_pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::TracedChannel;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

const COLLECTION: &str = "keys";
const ALL_KEYS_INDEX: &str = "keys-all";
/// The largest message encrypted or decrypted in one call.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

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

#[derive(Debug)]
pub struct KeysService {
    account: String,
    store: StoreClient<TracedChannel>,
    /// Loaded from the store on first use (the store may still be locked at start).
    keys: Mutex<Option<HashMap<String, Entry>>>,
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
        PgpError::NotAKey(_) | PgpError::Malformed(_) => Status::invalid_argument(message),
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
            refreshed: None,
            algorithm: pb::KeyAlgorithm::Unspecified.into(),
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
    pub fn new(account: String, store: TracedChannel) -> Self {
        let store = StoreClient::new(store).max_decoding_message_size(64 << 20);
        Self { account, store, keys: Mutex::new(None) }
    }

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
        source: KeySource,
        validation: ValidationLevel,
        only_address: Option<&str>,
    ) -> Result<pb::ImportResult, Status> {
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
                source_detail: String::new(),
                validation,
                active_for: Vec::new(),
                used: false,
                certificate: encode(&cert)?,
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
            }
            candidate.stored.used |= existing.stored.used;
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

fn chunks<T: Send + 'static>(data: &[u8], wrap: impl Fn(Vec<u8>) -> T) -> Vec<Result<T, Status>> {
    data.chunks(CHUNK).map(|chunk| Ok(wrap(chunk.to_vec()))).collect()
}

fn signature_to_pb(status: &SignatureStatus, keys: &HashMap<String, Entry>) -> pb::SignatureOutcome {
    match status {
        SignatureStatus::None => {
            pb::SignatureOutcome { status: pb::SignatureStatus::None.into(), ..Default::default() }
        }
        SignatureStatus::Valid { fingerprint } => pb::SignatureOutcome {
            status: pb::SignatureStatus::Valid.into(),
            fingerprint: fingerprint.clone(),
            signer_addresses: keys.get(fingerprint).map(|entry| entry.stored.addresses.clone()).unwrap_or_default(),
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
        let keys = guard.get_or_insert_with(HashMap::new);
        if let Some(entry) = Self::active(keys, &self.account).filter(|entry| openpgp::has_secret(&entry.cert)) {
            return Ok(Response::new(entry.to_pb()));
        }
        let account = self.account.clone();
        let cert = blocking(move || openpgp::generate(&account, algorithm)).await?.map_err(pgp_status)?;
        let result = self
            .import_one(keys, cert, KeySource::Generated, ValidationLevel::Fingerprint, Some(&self.account))
            .await?;
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
        let guard = self.loaded().await?;
        let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
        let entry = match request.into_inner().selector {
            Some(pb::get_key_request::Selector::Address(address)) => Self::active(keys, &address.to_lowercase()),
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
            results.push(self.import_one(keys, cert, source, validation, only).await?);
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
            Some(pb::export_key_request::Selector::Address(address)) => Self::active(keys, &address.to_lowercase()),
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

    async fn encrypt(
        &self,
        request: Request<tonic::Streaming<pb::EncryptRequest>>,
    ) -> Result<Response<ByteStream<pb::EncryptResponse>>, Status> {
        let (options, data) = read_stream(request.into_inner(), |message| match message.item {
            Some(pb::encrypt_request::Item::Options(options)) => (Some(options), Vec::new()),
            Some(pb::encrypt_request::Item::Data(data)) => (None, data),
            None => (None, Vec::new()),
        })
        .await?;
        if options.recipients.is_empty() {
            return Err(Status::invalid_argument("name at least one recipient"));
        }
        let mut guard = self.loaded().await?;
        let keys = guard.get_or_insert_with(HashMap::new);
        let mut recipients = Vec::new();
        for address in &options.recipients {
            let entry = Self::active(keys, &address.to_lowercase())
                .ok_or_else(|| Status::failed_precondition(format!("no key is known for {address}")))?;
            recipients.push(entry.stored.fingerprint.clone());
        }
        let certs: Vec<Certificate> =
            recipients.iter().filter_map(|fingerprint| keys.get(fingerprint)).map(|entry| entry.cert.clone()).collect();
        let signer = if options.sign {
            Some(
                Self::account_key(keys, &self.account)
                    .ok_or_else(|| Status::failed_precondition("the account has no key yet"))?,
            )
        } else {
            None
        };
        let armor = options.armor;
        let encrypted =
            blocking(move || openpgp::encrypt(&data, &certs, signer.as_ref(), armor)).await?.map_err(pgp_status)?;
        for fingerprint in &recipients {
            if let Some(entry) = keys.get_mut(fingerprint).filter(|entry| !entry.stored.used) {
                entry.stored.used = true;
                let entry = &*entry;
                self.save(entry).await?;
            }
        }
        let mut messages = chunks(&encrypted, |data| pb::EncryptResponse { data, recipient_fingerprints: Vec::new() });
        messages.push(Ok(pb::EncryptResponse { data: Vec::new(), recipient_fingerprints: recipients }));
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn decrypt(
        &self,
        request: Request<tonic::Streaming<pb::DecryptRequest>>,
    ) -> Result<Response<ByteStream<pb::DecryptResponse>>, Status> {
        let (_options, data) = read_stream(request.into_inner(), |message| match message.item {
            Some(pb::decrypt_request::Item::Options(options)) => (Some(options), Vec::new()),
            Some(pb::decrypt_request::Item::Data(data)) => (None, data),
            None => (None, Vec::new()),
        })
        .await?;
        let guard = self.loaded().await?;
        let keys = guard.as_ref().ok_or_else(|| Status::internal("keys not loaded"))?;
        let secret: Vec<Certificate> =
            keys.values().filter(|entry| openpgp::has_secret(&entry.cert)).map(|entry| entry.cert.clone()).collect();
        let known: Vec<Certificate> = keys.values().map(|entry| entry.cert.clone()).collect();
        let decrypted = blocking(move || openpgp::decrypt(&data, &secret, &known)).await?.map_err(pgp_status)?;
        let signature = signature_to_pb(&decrypted.signature, keys);
        let mut messages = chunks(&decrypted.plaintext, |data| pb::DecryptResponse {
            data,
            signature: None,
            decrypted_with: String::new(),
        });
        messages.push(Ok(pb::DecryptResponse {
            data: Vec::new(),
            signature: Some(signature),
            decrypted_with: decrypted.decrypted_with,
        }));
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
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
        let signer = Self::account_key(keys, &self.account)
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
        Ok(Response::new(pb::VerifyResponse { signature: Some(signature_to_pb(&status, keys)), content }))
    }
}
