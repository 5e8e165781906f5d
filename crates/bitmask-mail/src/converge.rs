//! How what several devices made apart comes together, beyond what the
//! store's merge rules do for any document.
//!
//! Mailboxes:
//! - A new mailbox's id is derived from its name ([`id_for_new`]), so two
//!   devices that create the same name before they sync (two clients that
//!   each make "Archives") make one mailbox: the same document, written
//!   twice. If a live mailbox holds that id already (it was renamed since),
//!   the next id in a fixed sequence is taken, the same on every device that
//!   knows the same mailboxes.
//! - Two live mailboxes can still end with one name (one device renames a
//!   mailbox to "Work" while another creates "Work"). Each device that sees
//!   this renames all but one of them ([`duplicates`]): the one to keep is a
//!   default mailbox if there is one, else the smallest id; the others get
//!   the name followed by a short tag of their id, so every device writes
//!   the same new name and nothing is hidden behind another mailbox.
//!
//! Incoming mail ([`incoming_copy_id`]): an item is filed under a copy id
//! derived from the item, so a device that files an item another device
//! filed already files nothing. A decrypted copy and an explanation ("could
//! not be decrypted") have different ids: one device may fail where another
//! succeeds (a key not yet synced). A decrypted copy beats the explanation:
//! an explanation is not filed where the decrypted copy is or was known, and
//! a device that sees both deletes the explanation, so all end with the
//! decrypted message once one of them could read it.

use sha2::{Digest as _, Sha256};

/// The ids of the mailboxes every account has (see `DEFAULT_MAILBOXES`).
fn is_default(id: &str) -> bool {
    crate::model::DEFAULT_MAILBOXES.iter().any(|(default, _, _)| *default == id)
}

fn tag(text: &str, bytes: usize) -> String {
    let digest = Sha256::digest(text.as_bytes());
    data_encoding::HEXLOWER.encode(digest.get(..bytes).unwrap_or_default())
}

/// The id of a new mailbox named `name`: the first of the name's sequence
/// of ids that `live` does not hold.
pub(crate) fn id_for_new(name: &str, live: impl Fn(&str) -> bool) -> String {
    let base = format!("mailbox/n-{}", tag(name, 16));
    if !live(&base) {
        return base;
    }
    (2u32..).map(|n| format!("{base}-{n}")).find(|id| !live(id)).unwrap_or(base)
}

/// Mailboxes (id, name) that share a name with another: the renames that
/// settle it, as (id, new name).
pub(crate) fn duplicates<'a>(mailboxes: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, String)> {
    let mut by_name: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (id, name) in mailboxes {
        by_name.entry(name).or_default().push(id);
    }
    let mut renames = Vec::new();
    for (name, mut ids) in by_name {
        if ids.len() < 2 {
            continue;
        }
        ids.sort_by_key(|id| (!is_default(id), *id));
        for id in ids.into_iter().skip(1) {
            renames.push((id.to_owned(), format!("{name} ({})", tag(id, 3))));
        }
    }
    renames
}

const EXPLAINED: &str = "-explained";
const INCOMING: &str = "copy/in-";

/// The copy id of incoming item `item`, filed decrypted or as an
/// explanation.
pub fn incoming_copy_id(item: &str, explained: bool) -> String {
    if explained { format!("{INCOMING}{item}{EXPLAINED}") } else { format!("{INCOMING}{item}") }
}

/// The other copy id of the same item, and whether `copy` is the
/// explanation; `None` for a copy that is not incoming mail.
pub(crate) fn incoming_twin(copy: &str) -> Option<(String, bool)> {
    let item = copy.strip_prefix(INCOMING)?;
    Some(match item.strip_suffix(EXPLAINED) {
        Some(item) => (incoming_copy_id(item, false), true),
        None => (incoming_copy_id(item, true), false),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_same_name_gives_the_same_id_and_a_taken_id_the_next_one() {
        let first = id_for_new("Archive", |_| false);
        assert_eq!(first, id_for_new("Archive", |_| false));
        assert_ne!(first, id_for_new("Archives", |_| false));
        let second = id_for_new("Archive", |id| id == first);
        assert_eq!(second, format!("{first}-2"));
        assert_eq!(id_for_new("Archive", |id| id == first || id == second), format!("{first}-3"));
    }

    #[test]
    fn an_incoming_copy_knows_its_twin() {
        assert_eq!(incoming_copy_id("abc", false), "copy/in-abc");
        assert_eq!(incoming_twin("copy/in-abc"), Some(("copy/in-abc-explained".to_owned(), false)));
        assert_eq!(incoming_twin("copy/in-abc-explained"), Some(("copy/in-abc".to_owned(), true)));
        assert_eq!(incoming_twin("copy/0123"), None);
    }

    #[test]
    fn duplicates_keep_a_default_or_the_smallest_id_and_rename_the_rest_alike() {
        assert!(duplicates([("mailbox/a", "Work"), ("mailbox/b", "Home")]).is_empty());
        let renames = duplicates([("mailbox/c", "Work"), ("mailbox/b", "Work"), ("mailbox/a", "Home")]);
        assert_eq!(renames, [("mailbox/c".to_owned(), format!("Work ({})", tag("mailbox/c", 3)))]);
        // Whatever the order they are seen in.
        assert_eq!(renames, duplicates([("mailbox/b", "Work"), ("mailbox/c", "Work")]));
        // A default mailbox keeps its name over a smaller id.
        let renames = duplicates([("mailbox/0", "Sent"), ("mailbox/sent", "Sent")]);
        assert_eq!(renames.len(), 1);
        assert_eq!(renames[0].0, "mailbox/0");
    }
}
