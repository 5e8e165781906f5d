//! The `bitmask.provider.v1.KeyDirectory` gRPC edge over a [`KeyStorage`].

use std::sync::Arc;

use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::key_directory_server::KeyDirectory;
use bitmask_sync_endpoint::Sessions;
use bitmask_sync_endpoint::sessions::SessionError;
use tonic::{Request, Response, Status};

use crate::directory::{self, PublishError};
use crate::storage::{KeyStorage, StorageError, normalize_address};

#[derive(Clone)]
pub struct KeyDirectoryService {
    storage: Arc<dyn KeyStorage>,
    sessions: Arc<Sessions>,
}

impl std::fmt::Debug for KeyDirectoryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDirectoryService").finish_non_exhaustive()
    }
}

fn status_of_storage(error: StorageError) -> Status {
    match error {
        StorageError::NotAnAddress(_) => Status::invalid_argument(error.to_string()),
        StorageError::Damaged | StorageError::Sled(_) => Status::internal(error.to_string()),
    }
}

fn status_of(error: PublishError) -> Status {
    match error {
        PublishError::TooLarge
        | PublishError::NotAKey(_)
        | PublishError::CertificateCount(_)
        | PublishError::SecretKey
        | PublishError::Unusable { .. } => Status::invalid_argument(error.to_string()),
        PublishError::NotTheUsersAddress { .. } => Status::permission_denied(error.to_string()),
        PublishError::Storage(error) => status_of_storage(error),
    }
}

impl KeyDirectoryService {
    /// `sessions` is the provider's one session table (the sync endpoint's);
    /// a session's user is the account's full address.
    pub fn new(storage: Arc<dyn KeyStorage>, sessions: Arc<Sessions>) -> Self {
        Self { storage, sessions }
    }

    /// The user whose session token the request carries.
    fn user<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.sessions.user(token).map_err(|error| match error {
            SessionError::Missing | SessionError::Unknown | SessionError::Expired => {
                Status::unauthenticated(error.to_string())
            }
        })
    }

    async fn blocking<T: Send + 'static, E: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn KeyStorage) -> Result<T, E> + Send + 'static,
    ) -> Result<Result<T, E>, Status> {
        let storage = Arc::clone(&self.storage);
        tokio::task::spawn_blocking(move || work(storage.as_ref()))
            .await
            .map_err(|error| Status::internal(format!("key directory task failed: {error}")))
    }
}

#[tonic::async_trait]
impl KeyDirectory for KeyDirectoryService {
    async fn lookup_key(
        &self,
        request: Request<pb::LookupKeyRequest>,
    ) -> Result<Response<pb::LookupKeyResponse>, Status> {
        let address = normalize_address(&request.into_inner().address)
            .map_err(|error| status_of_storage(StorageError::NotAnAddress(error)))?;
        let lookup = address.clone();
        let key = self.blocking(move |storage| storage.get(&lookup)).await?.map_err(status_of_storage)?;
        let key = key.ok_or_else(|| Status::not_found(format!("no key is published for {address}")))?;
        tracing::debug!(%address, fingerprint = %key.fingerprint, "key looked up");
        Ok(Response::new(pb::LookupKeyResponse { armored_key: key.armored, fingerprint: key.fingerprint }))
    }

    async fn publish_key(
        &self,
        request: Request<pb::PublishKeyRequest>,
    ) -> Result<Response<pb::PublishKeyResponse>, Status> {
        let user = self.user(&request)?;
        // A caller may send its secret key by mistake: wiped when dropped.
        let armored = zeroize::Zeroizing::new(request.into_inner().armored_key);
        let publisher = user.clone();
        let published =
            self.blocking(move |storage| directory::publish(storage, &publisher, armored.as_bytes())).await?;
        match published {
            Ok(key) => {
                tracing::info!(address = %key.address, fingerprint = %key.fingerprint, "key published");
                Ok(Response::new(pb::PublishKeyResponse { fingerprint: key.fingerprint }))
            }
            Err(error) => {
                tracing::info!(%user, %error, "key publication refused");
                Err(status_of(error))
            }
        }
    }
}
