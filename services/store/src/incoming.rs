//! Incoming mail, the store's half: the provider's MX keeps each message it
//! accepted, encrypted to the account's public key, as an "incoming item";
//! the store fetches the items this device has not taken yet into local
//! blobs, each announced by a local-only document `incoming/<item>` that the
//! IMAP gateway's incoming processor watches. The processor files the
//! message and, in the same batch, replaces that document by a marker
//! `incoming-done/<item>`; after the next push has taken the filed message to
//! the provider, the store deletes the item there and drops the marker. So
//! an item is removed from the provider only once the message is filed here
//! and synced, and a crash anywhere leaves it to be fetched or filed again
//! (filing is idempotent per item).

use std::sync::Arc;

use bitmask_proto::sync::v1 as sync_pb;
use bitmask_store::{Bound, Change, CollectionDef, ConflictPolicy, IndexDef, PutOp, Query, Store, StoreError, Write};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::sync::{EndpointClient, blocking};

pub const INCOMING: &str = "incoming";
pub const INCOMING_DONE: &str = "incoming-done";
/// Waiting items, oldest first (the processor's order).
pub const BY_RECEIVED: &str = "incoming-by-received";
const DONE_BY_ITEM: &str = "incoming-done-by-item";
/// The largest item taken (the provider's MX takes 60 MiB messages; its
/// encryption adds a little).
const MAX_ITEM: u64 = 72 << 20;
/// Bytes of an item gathered before they are written into its blob.
const WRITE_BYTES: usize = 1 << 20;

/// What `incoming/<item>` holds.
#[derive(Debug, Serialize, Deserialize)]
struct IncomingDoc {
    item: String,
    blob: String,
    size: u64,
    received_ms: u64,
}

/// What `incoming-done/<item>` holds: the item, and its local blob (gone
/// already unless the processor stopped between filing and deleting it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Filed {
    item: String,
    #[serde(default)]
    blob: String,
}

/// The collections and indexes of incoming mail (the processor declares the
/// same; identical declarations are no-ops).
pub fn declare(store: &Store) -> Result<(), StoreError> {
    for name in [INCOMING, INCOMING_DONE] {
        store.declare_collection(CollectionDef {
            name: name.into(),
            policy: ConflictPolicy::LastWriterWins,
            local_only: true,
        })?;
    }
    store.declare_index(IndexDef {
        name: BY_RECEIVED.into(),
        collection: INCOMING.into(),
        fields: vec!["/received_ms".into()],
        unique: false,
    })?;
    store.declare_index(IndexDef {
        name: DONE_BY_ITEM.into(),
        collection: INCOMING_DONE.into(),
        fields: vec!["/item".into()],
        unique: true,
    })
}

/// An item id as the provider makes them (hex); anything else is refused
/// rather than turned into a document id.
fn valid_item(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

/// How [`fetch`] tells the items it has to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Look {
    /// Items this process saw taken (or taken before) are passed over
    /// without reading the store: under a burst, the provider lists every
    /// item until a sync acknowledges it, and each notice would otherwise
    /// read two documents per listed item (quadratic in the backlog).
    New,
    /// Every listed item is looked up in the store (what a sync does: an
    /// item whose local document was dropped is taken again).
    All,
}

/// Fetches the provider's waiting items that this device has neither taken
/// nor filed; returns how many it took.
pub async fn fetch(
    store: &Arc<Store>,
    client: &mut EndpointClient,
    publish: &(dyn Fn(Change) + Sync),
    look: Look,
) -> Result<usize, Status> {
    // One fetch at a time (the notice follower and a sync may both want
    // to): an item is downloaded once.
    static FETCHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    // Items known to be here (this process serves one account's store);
    // only those the provider still lists are kept.
    static HERE: std::sync::Mutex<Option<std::collections::HashSet<String>>> = std::sync::Mutex::new(None);
    let here = || HERE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let _fetching = FETCHING.lock().await;
    let items = client.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await?.into_inner().items;
    let listed: std::collections::HashSet<&str> = items.iter().map(|item| item.id.as_str()).collect();
    here().get_or_insert_default().retain(|id| listed.contains(id.as_str()));
    let mut taken = 0;
    for item in items {
        if look == Look::New && here().as_ref().is_some_and(|known| known.contains(&item.id)) {
            continue;
        }
        if !valid_item(&item.id) {
            tracing::warn!(item = %item.id, "the provider listed an incoming item with an invalid id");
            continue;
        }
        if item.size > MAX_ITEM {
            tracing::warn!(item = %item.id, size = item.size, "incoming item too large to take");
            continue;
        }
        let id = item.id.clone();
        let known = blocking(store, move |store| {
            Ok(store.get(&format!("incoming/{id}"), false)?.is_some()
                || store.get(&format!("incoming-done/{id}"), false)?.is_some())
        })
        .await?;
        if known {
            here().get_or_insert_default().insert(item.id.clone());
            continue;
        }
        let mut stream = match client.get_incoming(sync_pb::GetIncomingRequest { id: item.id.clone() }).await {
            Ok(stream) => stream.into_inner(),
            // Filed by another device meanwhile.
            Err(status) if status.code() == tonic::Code::NotFound => continue,
            Err(status) => return Err(status),
        };
        // Written into a blob as it comes (a megabyte at a time), never
        // held whole: a 60 MiB item costs this process a few megabytes.
        let mut upload = Some(blocking(store, |store| store.begin_blob("application/octet-stream", true)).await?);
        let (mut size, mut pending) = (0u64, Vec::new());
        let received = loop {
            let chunk = match stream.message().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            };
            size += chunk.data.len() as u64;
            if size > MAX_ITEM {
                break Err(Status::resource_exhausted("the provider sent a larger incoming item than it listed"));
            }
            pending.extend_from_slice(&chunk.data);
            if pending.len() >= WRITE_BYTES {
                let (taken, data) = (upload.take(), std::mem::take(&mut pending));
                let written = blocking(store, move |store| {
                    let Some(mut upload) = taken else { return Ok(None) };
                    match store.write_blob(&mut upload, &data) {
                        Ok(()) => Ok(Some(upload)),
                        Err(error) => {
                            store.abort_blob(upload)?;
                            Err(error)
                        }
                    }
                })
                .await;
                match written {
                    Ok(back) => upload = back,
                    Err(status) => break Err(status),
                }
            }
        };
        let mut upload = match (received, upload) {
            (Ok(()), Some(upload)) => upload,
            (Err(status), Some(upload)) => {
                blocking(store, move |store| store.abort_blob(upload)).await?;
                return Err(status);
            }
            // (Aborted where the write failed.)
            (Err(status), None) => return Err(status),
            (Ok(()), None) => return Err(Status::internal("an incoming item's upload was lost")),
        };
        let doc = IncomingDoc { item: item.id.clone(), blob: String::new(), size, received_ms: item.received_unix_ms };
        let change = blocking(store, move |store| {
            if let Err(error) = store.write_blob(&mut upload, &pending) {
                store.abort_blob(upload)?;
                return Err(error);
            }
            let blob = store.finish_blob(upload, Some(size))?;
            let doc = IncomingDoc { blob: blob.id.clone(), ..doc };
            let content = serde_json::to_string(&doc).map_err(|_| StoreError::Corrupt("incoming document"))?;
            let put = PutOp {
                id: format!("incoming/{}", doc.item),
                collection: INCOMING.into(),
                content,
                expected_rev: None,
                create_only: true,
            };
            match store.put(put) {
                Ok((_, change)) => Ok(Some(change)),
                // Taken meanwhile; blobs are named by their content, so the
                // blob just written is the very one that document names
                // (and must stay).
                Err(StoreError::AlreadyExists(_)) => Ok(None),
                Err(error) => Err(error),
            }
        })
        .await?;
        here().get_or_insert_default().insert(item.id.clone());
        if let Some(change) = change {
            tracing::info!(item = %item.id, size = item.size, "incoming mail fetched");
            publish(change);
            taken += 1;
        }
    }
    Ok(taken)
}

/// The items filed on this device so far (their markers).
pub async fn filed(store: &Arc<Store>) -> Result<Vec<Filed>, Status> {
    blocking(store, |store| {
        let query = Query {
            index: DONE_BY_ITEM.into(),
            equal: Vec::new(),
            lower: None::<Bound>,
            upper: None,
            descending: false,
            limit: 0,
            page_token: None,
        };
        let page = store.query(&query)?;
        Ok(page
            .documents
            .into_iter()
            .filter_map(|document| serde_json::from_str::<Filed>(&document.content).ok())
            .collect())
    })
    .await
}

/// Deletes `items` at the provider (their messages are filed and pushed),
/// then their markers here.
pub async fn acknowledge(store: &Arc<Store>, client: &mut EndpointClient, filed: Vec<Filed>) -> Result<(), Status> {
    if filed.is_empty() {
        return Ok(());
    }
    let ids = filed.iter().map(|done| done.item.clone()).collect();
    let reply = client.delete_incoming(sync_pb::DeleteIncomingRequest { ids }).await?.into_inner();
    tracing::info!(filed = filed.len(), deleted = reply.deleted, "incoming mail acknowledged to the provider");
    blocking(store, move |store| {
        for done in filed.iter().filter(|done| !done.blob.is_empty()) {
            store.delete_blob(&done.blob)?;
        }
        let deletes = filed
            .iter()
            .map(|done| Write::Delete { id: format!("incoming-done/{}", done.item), expected_rev: None })
            .collect();
        store.apply(deletes).map(drop)
    })
    .await
}
