//! The protocol-agnostic `bitmask.mail.v1.Mail` API over the mail model:
//! what a web mail UI would use instead of IMAP. Prost types stop here.

use std::sync::Arc;

use bitmask_mail::{Entry, FlagOperation, Flags, MailError, MailEvent, MailModel, MailboxInfo, SpecialUse};
use bitmask_proto::mail::v1 as pb;
use bitmask_proto::mail::v1::mail_server::Mail;
use mail_parser::MimeHeaders as _;
use tonic::{Request, Response, Status};

/// Messages per ListMessages page when the caller does not say.
const PAGE: usize = 100;
/// Text of a part returned inline by GetMessage, at most.
const MAX_TEXT: usize = 1 << 20;

#[derive(Debug)]
pub struct MailApi {
    model: Arc<MailModel>,
    /// The store, for the incoming-mail counts of `GetMailStatus`.
    store: bitmask_runtime::client::TracedChannel,
}

impl MailApi {
    pub fn new(model: Arc<MailModel>, store: bitmask_runtime::client::TracedChannel) -> Self {
        Self { model, store }
    }
}

/// A new mailbox name within the limits, or why not.
fn within_limits(name: &str) -> Result<(), Status> {
    if bitmask_mail::types::name_within_limits(name) {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "a mailbox name has at most {} levels and {} bytes",
        bitmask_mail::types::MAX_MAILBOX_LEVELS,
        bitmask_mail::types::MAX_MAILBOX_NAME_BYTES
    )))
}

fn status(error: MailError) -> Status {
    match error {
        MailError::NoMailbox(_) => Status::not_found(error.to_string()),
        MailError::MailboxExists(_) => Status::already_exists(error.to_string()),
        MailError::Refused(_) => Status::failed_precondition(error.to_string()),
        MailError::Store(_) | MailError::Unavailable(_) => Status::unavailable(error.to_string()),
        MailError::NoSpace(_) => Status::resource_exhausted(error.to_string()),
        MailError::Damaged(_) => Status::data_loss(error.to_string()),
    }
}

fn special_use_to_pb(special_use: SpecialUse) -> pb::SpecialUse {
    match special_use {
        SpecialUse::None => pb::SpecialUse::None,
        SpecialUse::Sent => pb::SpecialUse::Sent,
        SpecialUse::Drafts => pb::SpecialUse::Drafts,
        SpecialUse::Trash => pb::SpecialUse::Trash,
        SpecialUse::Junk => pb::SpecialUse::Junk,
        SpecialUse::Archive => pb::SpecialUse::Archive,
    }
}

fn special_use_from_pb(special_use: i32) -> SpecialUse {
    match pb::SpecialUse::try_from(special_use).unwrap_or_default() {
        pb::SpecialUse::Sent => SpecialUse::Sent,
        pb::SpecialUse::Drafts => SpecialUse::Drafts,
        pb::SpecialUse::Trash => SpecialUse::Trash,
        pb::SpecialUse::Junk => SpecialUse::Junk,
        pb::SpecialUse::Archive => SpecialUse::Archive,
        pb::SpecialUse::None | pb::SpecialUse::Unspecified => SpecialUse::None,
    }
}

fn mailbox_to_pb(info: MailboxInfo) -> pb::Mailbox {
    pb::Mailbox {
        name: info.name,
        uid_validity: info.uid_validity,
        uid_next: info.uid_next,
        subscribed: info.subscribed,
        special_use: special_use_to_pb(info.special_use).into(),
        messages: info.messages,
        unseen: info.unseen,
        recent: info.recent,
        highest_modseq: info.highest_modseq,
    }
}

fn flags_to_pb(flags: &Flags) -> pb::Flags {
    pb::Flags {
        seen: flags.seen,
        answered: flags.answered,
        flagged: flags.flagged,
        deleted: flags.deleted,
        draft: flags.draft,
        keywords: flags.keywords.iter().cloned().collect(),
    }
}

fn flags_from_pb(flags: Option<pb::Flags>) -> Flags {
    let flags = flags.unwrap_or_default();
    Flags {
        seen: flags.seen,
        answered: flags.answered,
        flagged: flags.flagged,
        deleted: flags.deleted,
        draft: flags.draft,
        keywords: flags.keywords.into_iter().collect(),
    }
}

fn timestamp(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn addresses(address: Option<&mail_parser::Address<'_>>) -> Vec<pb::Address> {
    address
        .map(|address| {
            address
                .iter()
                .map(|addr| pb::Address {
                    name: addr.name().unwrap_or_default().to_owned(),
                    address: addr.address().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A message's summary: the entry, and what its headers say when `raw` is given.
fn summary(mailbox: &str, entry: &Entry, raw: Option<&[u8]>) -> pb::MessageSummary {
    let mut summary = pb::MessageSummary {
        uid: entry.uid,
        mailbox: mailbox.to_owned(),
        flags: Some(flags_to_pb(&entry.flags)),
        internal_date: timestamp(entry.internal_date),
        size: entry.size,
        modseq: entry.modseq,
        ..Default::default()
    };
    if let Some(message) = raw.and_then(bitmask_mime::parse_headers) {
        summary.subject = message.subject().unwrap_or_default().to_owned();
        summary.from = addresses(message.from());
        summary.to = addresses(message.to());
        summary.date = message.date().and_then(|date| timestamp(date.to_timestamp()));
        summary.message_id = message.message_id().unwrap_or_default().to_owned();
    }
    if let Some(message) = raw.and_then(bitmask_mime::parse) {
        summary.has_attachments = message.attachment_count() > 0;
    }
    summary
}

fn reference(message: Option<pb::MessageRef>) -> Result<pb::MessageRef, Status> {
    message.ok_or_else(|| Status::invalid_argument("name the message: mailbox and uid"))
}

impl MailApi {
    /// The entry a reference names, checking its UIDVALIDITY when given.
    async fn find(&self, message: &pb::MessageRef) -> Result<Entry, Status> {
        let info = self.model.mailbox(&message.mailbox).await.map_err(status)?;
        if message.uid_validity != 0 && message.uid_validity != info.uid_validity {
            return Err(Status::failed_precondition("the mailbox's UIDVALIDITY changed: list it again"));
        }
        self.model
            .entry(&message.mailbox, message.uid)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("no message {} in {}", message.uid, message.mailbox)))
    }
}

type Stream<T> = tonic::codegen::BoxStream<T>;

#[tonic::async_trait]
impl Mail for MailApi {
    async fn list_mailboxes(
        &self,
        request: Request<pb::ListMailboxesRequest>,
    ) -> Result<Response<pb::ListMailboxesResponse>, Status> {
        let subscribed_only = request.into_inner().subscribed_only;
        let mailboxes = self.model.mailboxes().await.map_err(status)?;
        let mailboxes =
            mailboxes.into_iter().filter(|mailbox| !subscribed_only || mailbox.subscribed).map(mailbox_to_pb).collect();
        Ok(Response::new(pb::ListMailboxesResponse { mailboxes }))
    }

    async fn create_mailbox(
        &self,
        request: Request<pb::CreateMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let request = request.into_inner();
        within_limits(&request.name)?;
        let info = self.model.create_mailbox(&request.name, special_use_from_pb(request.special_use)).await;
        Ok(Response::new(mailbox_to_pb(info.map_err(status)?)))
    }

    async fn rename_mailbox(
        &self,
        request: Request<pb::RenameMailboxRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let request = request.into_inner();
        within_limits(&request.new_name)?;
        self.model.rename_mailbox(&request.name, &request.new_name).await.map_err(status)?;
        Ok(Response::new(mailbox_to_pb(self.model.mailbox(&request.new_name).await.map_err(status)?)))
    }

    async fn delete_mailbox(
        &self,
        request: Request<pb::DeleteMailboxRequest>,
    ) -> Result<Response<pb::DeleteMailboxResponse>, Status> {
        self.model.delete_mailbox(&request.into_inner().name).await.map_err(status)?;
        Ok(Response::new(pb::DeleteMailboxResponse {}))
    }

    async fn set_subscribed(
        &self,
        request: Request<pb::SetSubscribedRequest>,
    ) -> Result<Response<pb::Mailbox>, Status> {
        let request = request.into_inner();
        self.model.set_subscribed(&request.name, request.subscribed).await.map_err(status)?;
        Ok(Response::new(mailbox_to_pb(self.model.mailbox(&request.name).await.map_err(status)?)))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let request = request.into_inner();
        let (info, mut entries) = self.model.snapshot(&request.mailbox).await.map_err(status)?;
        if request.descending {
            entries.reverse();
        }
        let limit = if request.limit == 0 { PAGE } else { request.limit as usize };
        let after = request.after_uid;
        let page: Vec<Entry> = entries
            .into_iter()
            .filter(|entry| after == 0 || if request.descending { entry.uid < after } else { entry.uid > after })
            .take(limit + 1)
            .collect();
        let more = page.len() > limit;
        let mut messages = Vec::with_capacity(limit);
        for entry in page.iter().take(limit) {
            let raw = self.model.raw(&entry.message).await.ok();
            messages.push(summary(&info.name, entry, raw.as_deref()));
        }
        let next_after_uid = if more { messages.last().map_or(0, |last| last.uid) } else { 0 };
        Ok(Response::new(pb::ListMessagesResponse { messages, next_after_uid }))
    }

    async fn get_message(
        &self,
        request: Request<pb::GetMessageRequest>,
    ) -> Result<Response<pb::GetMessageResponse>, Status> {
        let request = request.into_inner();
        let reference = reference(request.message)?;
        let mut entry = self.find(&reference).await?;
        if request.mark_seen && !entry.flags.seen {
            let seen = Flags { seen: true, ..Flags::default() };
            let changed = self.model.set_flags(&reference.mailbox, &[entry.uid], FlagOperation::Add, &seen).await;
            if let Some(updated) = changed.map_err(status)?.pop() {
                entry = updated;
            }
        }
        let raw = self.model.raw(&entry.message).await.map_err(status)?;
        let mailbox = self.model.mailbox(&reference.mailbox).await.map_err(status)?.name;
        let mut response =
            pb::GetMessageResponse { summary: Some(summary(&mailbox, &entry, Some(&raw))), ..Default::default() };
        if let Some(message) = bitmask_mime::parse(&raw) {
            response.headers = message
                .headers_raw()
                .map(|(name, value)| pb::Header { name: name.to_owned(), value: value.trim().to_owned() })
                .collect();
            response.cc = addresses(message.cc());
            response.reply_to = addresses(message.reply_to());
            response.in_reply_to = message.in_reply_to().as_text().unwrap_or_default().to_owned();
            response.references = message
                .references()
                .as_text_list()
                .map(|list| list.iter().map(|item| item.to_string()).collect())
                .unwrap_or_default();
            response.parts = parts(&message);
        }
        Ok(Response::new(response))
    }

    async fn get_raw_message(
        &self,
        request: Request<pb::GetRawMessageRequest>,
    ) -> Result<Response<Stream<pb::RawChunk>>, Status> {
        let request = request.into_inner();
        let reference = reference(request.message)?;
        let entry = self.find(&reference).await?;
        let raw = self.model.raw(&entry.message).await.map_err(status)?;
        let bytes =
            if request.section.is_empty() { raw } else { section_bytes(&raw, &request.section, request.decode)? };
        let chunks: Vec<Result<pb::RawChunk, Status>> =
            bytes.chunks(1 << 20).map(|chunk| Ok(pb::RawChunk { data: chunk.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn add_message(&self, request: Request<pb::AddMessageRequest>) -> Result<Response<pb::MessageRef>, Status> {
        let request = request.into_inner();
        if request.raw.is_empty() {
            return Err(Status::invalid_argument("an empty message"));
        }
        let date = request.internal_date.map(|date| (date.seconds, 0));
        let flags = flags_from_pb(request.flags);
        let (uid_validity, uid) =
            self.model.append(&request.mailbox, &request.raw, &flags, date).await.map_err(status)?;
        let mailbox = self.model.mailbox(&request.mailbox).await.map_err(status)?.name;
        Ok(Response::new(pb::MessageRef { mailbox, uid, uid_validity }))
    }

    async fn set_flags(&self, request: Request<pb::SetFlagsRequest>) -> Result<Response<pb::SetFlagsResponse>, Status> {
        let request = request.into_inner();
        let operation = match pb::FlagOperation::try_from(request.operation).unwrap_or_default() {
            pb::FlagOperation::Add => FlagOperation::Add,
            pb::FlagOperation::Remove => FlagOperation::Remove,
            pb::FlagOperation::Replace => FlagOperation::Replace,
            pb::FlagOperation::Unspecified => return Err(Status::invalid_argument("say add, remove or replace")),
        };
        let (info, entries) = self.model.snapshot(&request.mailbox).await.map_err(status)?;
        let (mut uids, mut modified) = (Vec::new(), Vec::new());
        for uid in &request.uids {
            match entries.iter().find(|entry| entry.uid == *uid) {
                Some(entry) if request.unchanged_since != 0 && entry.modseq > request.unchanged_since => {
                    modified.push(*uid)
                }
                Some(_) => uids.push(*uid),
                None => {}
            }
        }
        let flags = flags_from_pb(request.flags);
        let changed = self.model.set_flags(&request.mailbox, &uids, operation, &flags).await.map_err(status)?;
        let updated = changed.iter().map(|entry| summary(&info.name, entry, None)).collect();
        Ok(Response::new(pb::SetFlagsResponse { updated, modified }))
    }

    async fn copy_messages(
        &self,
        request: Request<pb::CopyMessagesRequest>,
    ) -> Result<Response<pb::CopyMessagesResponse>, Status> {
        let request = request.into_inner();
        let result = self.model.copy(&request.mailbox, &request.uids, &request.destination, false).await;
        Ok(Response::new(copied(result.map_err(status)?)))
    }

    async fn move_messages(
        &self,
        request: Request<pb::MoveMessagesRequest>,
    ) -> Result<Response<pb::CopyMessagesResponse>, Status> {
        let request = request.into_inner();
        let result = self.model.copy(&request.mailbox, &request.uids, &request.destination, true).await;
        Ok(Response::new(copied(result.map_err(status)?)))
    }

    async fn delete_messages(
        &self,
        request: Request<pb::DeleteMessagesRequest>,
    ) -> Result<Response<pb::DeleteMessagesResponse>, Status> {
        let request = request.into_inner();
        let deleted = Flags { deleted: true, ..Flags::default() };
        self.model.set_flags(&request.mailbox, &request.uids, FlagOperation::Add, &deleted).await.map_err(status)?;
        let expunged = self.model.expunge(&request.mailbox, Some(&request.uids)).await.map_err(status)?;
        Ok(Response::new(pb::DeleteMessagesResponse { expunged }))
    }

    async fn search(&self, request: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let request = request.into_inner();
        let (_, entries) = self.model.snapshot(&request.mailbox).await.map_err(status)?;
        let uids = crate::search::uids(&self.model, &entries, &request.criteria).await?;
        Ok(Response::new(pb::SearchResponse { uids }))
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<Stream<pb::MailEvent>>, Status> {
        let only = request.into_inner().mailbox;
        if !only.is_empty() {
            self.model.mailbox(&only).await.map_err(status)?;
        }
        let only = bitmask_mail::types::normalize_name(&only);
        let events = tokio_stream::wrappers::BroadcastStream::new(self.model.subscribe());
        let model = self.model.clone();
        let stream = futures::StreamExt::filter_map(events, move |event| {
            let model = model.clone();
            let only = only.clone();
            async move {
                let event = match event {
                    Ok(event) => event,
                    Err(_) => return Some(Err(Status::data_loss("fell behind the changes: watch again"))),
                };
                if !only.is_empty() && event.mailbox().is_some_and(|mailbox| mailbox != only) {
                    return None;
                }
                let converted = match event {
                    MailEvent::Added { mailbox, uid } => {
                        let entry = model.entry(&mailbox, uid).await.ok().flatten()?;
                        let raw = model.raw(&entry.message).await.ok();
                        pb::mail_event::Event::Added(summary(&mailbox, &entry, raw.as_deref()))
                    }
                    MailEvent::Expunged { mailbox, uid } => {
                        let uid_validity = model.mailbox(&mailbox).await.map(|info| info.uid_validity).unwrap_or(0);
                        pb::mail_event::Event::Expunged(pb::MessageRef { mailbox, uid, uid_validity })
                    }
                    MailEvent::FlagsChanged { mailbox, uid } => {
                        let entry = model.entry(&mailbox, uid).await.ok().flatten()?;
                        pb::mail_event::Event::FlagsChanged(summary(&mailbox, &entry, None))
                    }
                    MailEvent::Mailboxes => {
                        if !only.is_empty() {
                            return None;
                        }
                        pb::mail_event::Event::MailboxChanged(pb::Mailbox::default())
                    }
                };
                Some(Ok(pb::MailEvent { event: Some(converted) }))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_mail_status(
        &self,
        _request: Request<pb::GetMailStatusRequest>,
    ) -> Result<Response<pb::GetMailStatusResponse>, Status> {
        let mailboxes = self.model.mailboxes().await.map_err(status)?.into_iter().map(mailbox_to_pb).collect();
        let (incoming_pending, undecryptable) = crate::incoming::Processor::counts(&self.store).await?;
        let incoming_problems = crate::incoming::Processor::problems(&self.store)
            .await?
            .into_iter()
            .map(|(item, attempts)| pb::IncomingProblem {
                item,
                attempts: attempts.attempts,
                last_error: attempts.last_error,
            })
            .collect();
        Ok(Response::new(pb::GetMailStatusResponse { mailboxes, incoming_pending, undecryptable, incoming_problems }))
    }
}

fn copied((uid_validity, pairs): (u32, Vec<(u32, u32)>)) -> pb::CopyMessagesResponse {
    pb::CopyMessagesResponse {
        destination_uid_validity: uid_validity,
        source_uids: pairs.iter().map(|(source, _)| *source).collect(),
        destination_uids: pairs.iter().map(|(_, target)| *target).collect(),
    }
}

/// The leaf parts with IMAP section numbers.
fn parts(message: &mail_parser::Message<'_>) -> Vec<pb::Part> {
    let mut out = Vec::new();
    walk(message, 0, String::new(), &mut out);
    out
}

fn walk(message: &mail_parser::Message<'_>, id: usize, section: String, out: &mut Vec<pb::Part>) {
    let Some(part) = message.parts.get(id) else { return };
    match &part.body {
        mail_parser::PartType::Multipart(children) => {
            for (index, child) in children.iter().enumerate() {
                let number =
                    if section.is_empty() { format!("{}", index + 1) } else { format!("{section}.{}", index + 1) };
                walk(message, *child as usize, number, out);
            }
        }
        body => {
            let section = if section.is_empty() { "1".to_owned() } else { section };
            let content_type = part
                .content_type()
                .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("plain")))
                .unwrap_or_else(|| "text/plain".into())
                .to_lowercase();
            let text = match body {
                mail_parser::PartType::Text(text) | mail_parser::PartType::Html(text) => {
                    text.chars().take(MAX_TEXT).collect()
                }
                _ => String::new(),
            };
            out.push(pb::Part {
                section,
                content_type,
                charset: part.content_type().and_then(|ct| ct.attribute("charset")).unwrap_or_default().to_owned(),
                disposition: part.content_disposition().map(|cd| cd.ctype().to_owned()).unwrap_or_default(),
                filename: part.attachment_name().unwrap_or_default().to_owned(),
                size: (part.offset_end.saturating_sub(part.offset_body)) as u64,
                text,
                content_id: part.content_id().unwrap_or_default().to_owned(),
            });
        }
    }
}

/// One part's bytes by its IMAP section number, raw or decoded.
fn section_bytes(raw: &[u8], section: &str, decode: bool) -> Result<Vec<u8>, Status> {
    if let Err(refusal) = bitmask_mime::check(raw) {
        return Err(Status::failed_precondition(format!("{refusal}: it is served whole, not taken apart")));
    }
    let message = bitmask_mime::parse(raw).ok_or_else(|| Status::data_loss("the message cannot be parsed"))?;
    let mut id = 0usize;
    for number in section.split('.') {
        let index: usize =
            number.parse().ok().filter(|n| *n > 0).ok_or_else(|| Status::invalid_argument("a section is like 1.2"))?;
        let part = message.parts.get(id).ok_or_else(|| Status::not_found("no such part"))?;
        id = match &part.body {
            mail_parser::PartType::Multipart(children) => {
                *children.get(index - 1).ok_or_else(|| Status::not_found("no such part"))? as usize
            }
            _ if index == 1 => id,
            _ => return Err(Status::not_found("no such part")),
        };
    }
    let part = message.parts.get(id).ok_or_else(|| Status::not_found("no such part"))?;
    if decode {
        Ok(part.contents().to_vec())
    } else {
        let (start, end) = (part.offset_body as usize, part.offset_end as usize);
        Ok(raw.get(start..end.min(raw.len())).unwrap_or_default().to_vec())
    }
}
