//! The IMAP message view (`bitmask_imap::message`): ENVELOPE, BODY,
//! BODYSTRUCTURE and BODY[section] of arbitrary bytes, on a thread with a
//! Tokio worker's 2 MiB stack. The sections asked for are every part the
//! structure has (down to a few levels) with HEADER, TEXT, MIME and
//! HEADER.FIELDS (.NOT), plus part numbers taken from the input's last bytes.
//!
//! Checked: no panic, no stack overflow; each section is a stretch of the
//! message (or a selection of its header lines); the FETCH response, as
//! encoded for the client, decodes to the same items (imap-codec's decoder
//! follows seven levels of body structure: deeper ones are only encoded).

#![no_main]

use std::num::NonZeroU32;

use bitmask_fuzz::Choices;
use bitmask_imap::imap_types::body::{BodyStructure, SpecificFields};
use bitmask_imap::imap_types::core::{AString, Vec1};
use bitmask_imap::imap_types::fetch::{MessageDataItem, Part, Section};
use bitmask_imap::imap_types::response::{Data, Response};
use bitmask_imap::message::{MessageView, partial, section_data};
use imap_codec::ResponseCodec;
use imap_codec::decode::Decoder as _;
use imap_codec::encode::Encoder as _;
use libfuzzer_sys::fuzz_target;

const STACK: usize = 2 * 1024 * 1024;

fn depth(structure: &BodyStructure<'_>) -> usize {
    match structure {
        BodyStructure::Single { body, .. } => match &body.specific {
            SpecificFields::Message { body_structure, .. } => 1 + depth(body_structure),
            _ => 1,
        },
        BodyStructure::Multi { bodies, .. } => 1 + bodies.as_ref().iter().map(depth).max().unwrap_or(0),
    }
}

/// Part paths of `structure`, down to `levels` numbers.
fn paths(structure: &BodyStructure<'_>, prefix: &mut Vec<u32>, levels: usize, out: &mut Vec<Vec<u32>>) {
    if prefix.len() >= levels || out.len() >= 64 {
        return;
    }
    let children: Vec<&BodyStructure<'_>> = match structure {
        BodyStructure::Multi { bodies, .. } => bodies.as_ref().iter().collect(),
        BodyStructure::Single { body, .. } => match &body.specific {
            SpecificFields::Message { body_structure, .. } => vec![body_structure.as_ref()],
            _ => Vec::new(),
        },
    };
    for (index, child) in children.into_iter().enumerate() {
        prefix.push(u32::try_from(index + 1).unwrap());
        out.push(prefix.clone());
        paths(child, prefix, levels, out);
        prefix.pop();
    }
}

fn part(path: &[u32]) -> Option<Part> {
    let numbers: Vec<NonZeroU32> = path.iter().filter_map(|number| NonZeroU32::new(*number)).collect();
    Vec1::try_from(numbers).ok().map(Part)
}

fn is_within(raw: &[u8], bytes: &[u8]) -> bool {
    bytes.is_empty() || raw.as_ptr_range().contains(&bytes.as_ptr()) && bytes.len() <= raw.len()
}

fn view_all(raw: &[u8], mut choices: Choices<'_>) {
    let view = MessageView::parse(raw);
    let structure = view.body_structure(true);
    let body = view.body_structure(false);
    let envelope = view.envelope();
    assert!(is_within(raw, view.header_bytes()) && is_within(raw, view.text_bytes()));

    let mut found = Vec::new();
    paths(&structure, &mut Vec::new(), 4, &mut found);
    for _ in 0..2 {
        let count = 1 + choices.below(4);
        found.push((0..count).map(|_| u32::from(choices.byte() % 5)).collect());
    }
    let names = Vec1::try_from(vec![AString::try_from("Subject").unwrap(), AString::try_from("content-type").unwrap()])
        .unwrap();
    let mut sections: Vec<Section<'static>> =
        vec![Section::Header(None), Section::Text(None), Section::HeaderFields(None, names.clone())];
    for path in &found {
        let Some(part) = part(path) else { continue };
        sections.push(Section::Part(part.clone()));
        sections.push(Section::Mime(part.clone()));
        sections.push(Section::Header(Some(part.clone())));
        sections.push(Section::Text(Some(part.clone())));
        sections.push(Section::HeaderFieldsNot(Some(part), names.clone()));
    }
    let mut items = vec![
        MessageDataItem::Envelope(envelope),
        MessageDataItem::Body(body),
        MessageDataItem::BodyStructure(structure),
    ];
    let origin = u32::from(choices.byte());
    for section in sections {
        let bytes = view.section(Some(&section));
        if let Some(bytes) = &bytes
            && !matches!(section, Section::HeaderFields(..) | Section::HeaderFieldsNot(..))
        {
            assert!(is_within(raw, bytes), "section {section:?} is not a stretch of the message");
        }
        let data = match &bytes {
            Some(bytes) => section_data(partial(bytes, origin, 1 << 20)),
            None => section_data(b""),
        };
        if items.len() < 40 {
            items.push(MessageDataItem::BodyExt { section: Some(section), origin: Some(origin), data });
        }
    }
    let deep = items.iter().any(|item| match item {
        MessageDataItem::Body(structure) | MessageDataItem::BodyStructure(structure) => depth(structure) > 7,
        _ => false,
    });
    let response = Response::Data(Data::Fetch { seq: NonZeroU32::MIN, items: Vec1::try_from(items).unwrap() });
    let encoded = ResponseCodec::default().encode(&response).dump();
    if deep {
        return;
    }
    let (rest, decoded) = ResponseCodec::default().decode_static(&encoded).unwrap_or_else(|error| {
        panic!("the client cannot read our FETCH: {error:?}: {}", String::from_utf8_lossy(&encoded))
    });
    assert!(rest.is_empty(), "bytes after the FETCH response");
    assert!(decoded == response, "the FETCH response reads back differently: {}", String::from_utf8_lossy(&encoded));
}

fuzz_target!(|raw: &[u8]| {
    if raw.len() > 256 * 1024 {
        return;
    }
    let raw = raw.to_vec();
    let worker = std::thread::Builder::new().stack_size(STACK).spawn(move || view_all(&raw, Choices::new(&raw)));
    if let Err(panic) = worker.expect("a thread starts").join() {
        std::panic::resume_unwind(panic);
    }
});
