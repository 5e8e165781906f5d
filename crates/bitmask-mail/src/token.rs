//! The account's mail token: what the user's mail client presents to the
//! IMAP and SMTP gateways instead of the passphrase. Made at the first
//! unlock, kept in the store (local to the device, sealed like everything
//! else), shown by `bitmaskctl mail token`.

use bitmask_proto::store::v1 as pb;
use bitmask_proto::store::v1::store_client::StoreClient;
use bitmask_runtime::client::TracedChannel;
use tonic::Status;

const COLLECTION: &str = "local-settings";
const DOCUMENT: &str = "local-settings/mail-token";

#[derive(serde::Serialize, serde::Deserialize)]
struct TokenDoc {
    token: String,
}

fn read(document: &pb::Document) -> Result<String, Status> {
    serde_json::from_slice::<TokenDoc>(&document.content)
        .map(|doc| doc.token)
        .map_err(|_| Status::data_loss("the stored mail token is damaged"))
}

/// The token, made on first use. Fails while the store is locked.
pub async fn mail_token(store: &mut StoreClient<TracedChannel>) -> Result<String, Status> {
    let definition = pb::CollectionDefinition {
        name: COLLECTION.into(),
        conflict_policy: pb::ConflictPolicy::LastWriterWins.into(),
        local_only: true,
    };
    store.declare_collection(definition).await?;
    match store.get(pb::GetRequest { id: DOCUMENT.into(), include_deleted: false }).await {
        Ok(document) => return read(&document.into_inner()),
        Err(status) if status.code() == tonic::Code::NotFound => {}
        Err(status) => return Err(status),
    }
    let bytes: [u8; 15] = rand::random();
    let token = data_encoding::BASE32_NOPAD.encode(&bytes).to_lowercase();
    let content = serde_json::to_vec(&TokenDoc { token: token.clone() }).unwrap_or_default();
    let put = pb::PutRequest {
        id: DOCUMENT.into(),
        collection: COLLECTION.into(),
        content,
        expected_rev: String::new(),
        create_only: true,
    };
    match store.put(put).await {
        Ok(_) => Ok(token),
        // Another process made it first: theirs is the token.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            let document = store.get(pb::GetRequest { id: DOCUMENT.into(), include_deleted: false }).await?;
            read(&document.into_inner())
        }
        Err(status) => Err(status),
    }
}
