//! Changes from other devices: what sync brings in (copies and mailboxes written
//! elsewhere), applied to the mail state as the store holds it now, and the
//! rules by which devices that did things apart come to show the same
//! (`converge` holds the pure part of those rules).

use std::sync::Arc;

use bitmask_proto::store::v1 as pb;

use super::{
    COPIES, CopyDoc, MAILBOXES, MailModel, MailboxDoc, Result, State, UIDS, UidDoc, add_to_counter, delete, json,
    parse, put,
};
use crate::converge;
use crate::types::{Entry, Flags, MailError, MailEvent};

impl MailModel {
    /// Applies what sync brought in (copies and mailboxes changed on another
    /// device) as the store announces it, until the stream ends.
    pub async fn follow_sync(self: Arc<Self>) -> Result<()> {
        // Loaded first (fails while the store is locked; the caller retries).
        drop(self.state().await?);
        let request = pb::WatchRequest {
            collections: vec![COPIES.into(), MAILBOXES.into()],
            since_sequence: Some(self.applied.load(std::sync::atomic::Ordering::SeqCst)),
            include_content: true,
        };
        let mut changes = self.client().watch(request).await?.into_inner();
        while let Some(change) = changes.message().await? {
            // Our own writes are applied already; replayed changes (origin
            // unknown) are applied again, which is harmless.
            if change.origin() != pb::change::Origin::Local
                && let Some(document) = change.document
                && let Err(error) = self.apply_synced(document).await
            {
                if matches!(error, MailError::Unavailable(_) | MailError::NoSpace(_)) {
                    // Not applied for now (the store is starting again, or
                    // its disk is full): the caller watches again from the
                    // last change applied, this one included.
                    tracing::info!(%error, "a synced mail change waits for the store");
                    return Err(error);
                }
                // What is shown may now differ from the store: it is
                // loaded again before its next use.
                tracing::warn!(%error, "applying a synced mail change: loading the mail state again");
                self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.applied.fetch_max(change.sequence, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// The document as the store holds it now, `None` if it is gone: a
    /// change may be older than that (replayed after the store restarted,
    /// or overtaken by a local write while it waited), and what it adds
    /// must not come back after a local delete.
    async fn current(&self, id: &str) -> Result<Option<pb::Document>> {
        match self.client().get(pb::GetRequest { id: id.to_owned(), include_deleted: false }).await {
            Ok(document) => Ok(Some(document.into_inner()).filter(|document| !document.deleted)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    async fn apply_synced(&self, change: pb::Document) -> Result<()> {
        let mut guard = self.state.lock().await;
        let Some(state) = guard.as_mut() else { return Ok(()) };
        let document = match self.current(&change.id).await? {
            Some(document) => document,
            None => pb::Document { deleted: true, ..change },
        };
        if document.collection == MAILBOXES {
            if document.deleted {
                state.mailboxes.remove(&document.id);
            } else {
                let doc: MailboxDoc = parse(&document)?;
                match state.mailboxes.get_mut(&document.id) {
                    Some(mailbox) => mailbox.doc = doc,
                    None => {
                        let mailbox = self.load_mailbox(document.id.clone(), doc).await?;
                        state.mailboxes.insert(document.id.clone(), mailbox);
                    }
                }
                self.settle_names(state).await?;
            }
            self.emit(MailEvent::Mailboxes);
            return Ok(());
        }
        // A copy: where is it now, and where was it?
        let located = state.locate(&document.id);
        if document.deleted {
            if let Some((mailbox_id, uid)) = located {
                self.batch(vec![delete(&format!("uid/{}", document.id))]).await?;
                if let Some((mailbox, _)) = state.remove(&mailbox_id, uid) {
                    self.emit(MailEvent::Expunged { mailbox, uid });
                }
            }
            return Ok(());
        }
        let copy: CopyDoc = parse(&document)?;
        let twin = converge::incoming_twin(&document.id);
        if let Some((decrypted, true)) = &twin
            && located.is_none()
            && self.ever_known(decrypted).await?
        {
            // An explanation of an item whose decrypted copy is or was here.
            self.batch(vec![delete(&document.id)]).await?;
            return Ok(());
        }
        // The copy in another mailbox (two devices wrote it apart): it
        // leaves the one it is shown in and is numbered in its own below.
        let located = match located {
            Some((mailbox_id, uid)) if mailbox_id != copy.mailbox => {
                self.batch(vec![delete(&format!("uid/{}", document.id))]).await?;
                if let Some((mailbox, _)) = state.remove(&mailbox_id, uid) {
                    self.emit(MailEvent::Expunged { mailbox, uid });
                }
                None
            }
            located => located,
        };
        match located {
            Some((mailbox_id, uid)) => self.synced_change(state, &mailbox_id, uid, document.id, copy).await?,
            None => {
                if let Some((explanation, false)) = &twin
                    && let Some((mailbox_id, uid)) = state.locate(explanation)
                {
                    // The decrypted copy replaces the explanation shown here
                    // (whose deletion may have come in the same sync).
                    self.batch(self.deletes_of(explanation).await?).await?;
                    if let Some((mailbox, _)) = state.remove(&mailbox_id, uid) {
                        self.emit(MailEvent::Expunged { mailbox, uid });
                    }
                }
                let Some(mailbox) = state.mailboxes.get_mut(&copy.mailbox) else { return Ok(()) };
                self.assign(mailbox, vec![(document.id, copy)], true).await?;
            }
        }
        Ok(())
    }

    /// The writes that delete a copy shown here: its UID record, and the
    /// copy unless it is deleted already.
    pub(super) async fn deletes_of(&self, copy: &str) -> Result<Vec<pb::Write>> {
        let mut writes = vec![delete(&format!("uid/{copy}"))];
        if self.current(copy).await?.is_some() {
            writes.push(delete(copy));
        }
        Ok(writes)
    }

    /// A copy shown here changed on another device: its flags, or (two
    /// devices filed one incoming item with different bytes, and the merge
    /// kept the other's) its message, size or date, which clients see as
    /// another message under a new UID (a message never changes under its
    /// UID).
    async fn synced_change(
        &self,
        state: &mut State,
        mailbox_id: &str,
        uid: u32,
        copy_id: String,
        copy: CopyDoc,
    ) -> Result<()> {
        let Some(mailbox) = state.mailboxes.get_mut(mailbox_id) else { return Ok(()) };
        let Some(entry) = mailbox.entries.get(&uid) else { return Ok(()) };
        if *entry.message != copy.message || entry.size != copy.size || entry.internal_date != copy.internal_date {
            self.batch(vec![delete(&format!("uid/{copy_id}"))]).await?;
            mailbox.entries.remove(&uid);
            mailbox.by_copy.remove(copy_id.as_str());
            self.emit(MailEvent::Expunged { mailbox: mailbox.doc.name.clone(), uid });
            return self.assign(mailbox, vec![(copy_id, copy)], true).await;
        }
        let flags = Flags::from_list(&copy.flags);
        if entry.flags == flags {
            return Ok(());
        }
        let modseq = mailbox.highest_modseq + 1;
        let updated = Entry { flags, modseq, ..entry.clone() };
        let uid_doc = UidDoc { mailbox: mailbox_id.to_owned(), uid, modseq, copy: copy_id.clone() };
        self.batch(vec![
            put(&format!("uid/{copy_id}"), UIDS, json(&uid_doc)),
            add_to_counter(format!("modseq/{mailbox_id}"), 1),
        ])
        .await?;
        mailbox.highest_modseq = modseq;
        mailbox.entries.insert(uid, updated);
        self.emit(MailEvent::FlagsChanged { mailbox: mailbox.doc.name.clone(), uid });
        Ok(())
    }

    /// Renames all but one of the live mailboxes that share a name (see
    /// `converge`).
    async fn settle_names(&self, state: &mut State) -> Result<()> {
        let mailboxes = state.mailboxes.values().map(|mailbox| (mailbox.id.as_str(), mailbox.doc.name.as_str()));
        let renames = converge::duplicates(mailboxes);
        let mut writes = Vec::new();
        let mut renamed = Vec::new();
        for (id, name) in renames {
            if let Some(mailbox) = state.mailboxes.get(&id) {
                let doc = MailboxDoc { name, ..mailbox.doc.clone() };
                writes.push(put(&id, MAILBOXES, json(&doc)));
                renamed.push((id, doc));
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.batch(writes).await?;
        for (id, doc) in renamed {
            if let Some(mailbox) = state.mailboxes.get_mut(&id) {
                mailbox.doc = doc;
            }
        }
        Ok(())
    }
}
