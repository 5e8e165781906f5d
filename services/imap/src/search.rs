//! SEARCH for the Mail API: criteria in IMAP syntax, evaluated like the
//! IMAP gateway does.

use std::borrow::Cow;

use bitmask_imap::imap_types::command::CommandBody;
use bitmask_imap::search::{self, Candidate, Limits};
use bitmask_mail::{Entry, MailModel};
use imap_codec::CommandCodec;
use imap_codec::decode::Decoder as _;
use tonic::Status;

/// The UIDs of `entries` that match `criteria` (e.g. `UNSEEN FROM "alice"`).
pub async fn uids(model: &MailModel, entries: &[Entry], criteria: &str) -> Result<Vec<u32>, Status> {
    let criteria = if criteria.trim().is_empty() { "ALL" } else { criteria };
    if criteria.contains(['\r', '\n']) {
        return Err(Status::invalid_argument("search criteria are one line"));
    }
    let line = format!("S SEARCH CHARSET UTF-8 {criteria}\r\n");
    let (_, command) = CommandCodec::default()
        .decode(line.as_bytes())
        .map_err(|_| Status::invalid_argument(format!("{criteria:?} is not IMAP SEARCH syntax")))?;
    let CommandBody::Search { criteria, .. } = command.body else {
        return Err(Status::invalid_argument("not a search"));
    };
    let limits = Limits { max_seq: entries.len() as u32, max_uid: entries.last().map_or(0, |entry| entry.uid) };
    let needs_raw = criteria.as_ref().iter().any(search::needs_raw);
    let mut found = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let raw = if needs_raw { model.raw(&entry.message).await.ok() } else { None };
        let loader = move || raw.clone().map(Cow::Owned);
        let flags = search::Flags {
            seen: entry.flags.seen,
            answered: entry.flags.answered,
            flagged: entry.flags.flagged,
            deleted: entry.flags.deleted,
            draft: entry.flags.draft,
            recent: false,
            keywords: entry.flags.keywords.iter().cloned().collect(),
        };
        let zone = chrono::FixedOffset::east_opt(entry.zone_minutes * 60).unwrap_or_else(|| chrono::Utc.fix());
        let candidate = Candidate {
            seq: index as u32 + 1,
            uid: entry.uid,
            flags: &flags,
            internal_date: chrono::DateTime::from_timestamp(entry.internal_date, 0)
                .unwrap_or_default()
                .with_timezone(&zone),
            size: entry.size,
            raw: &loader,
        };
        if search::matches_all(criteria.as_ref(), &candidate, &limits) {
            found.push(entry.uid);
        }
    }
    Ok(found)
}

use chrono::Offset as _;
