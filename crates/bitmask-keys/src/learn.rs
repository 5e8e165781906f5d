//! What a received message offers as keys of its sender, for the key
//! service's `LearnFromMessage`: the Autocrypt header (Autocrypt Level 1),
//! attached `application/pgp-keys` parts, and the `OpenPGP:` header
//! (draft-josefsson-openpgp-mailnews-header). Also the two headers the SMTP
//! gateway adds to outgoing mail.
//!
//! Pure: bytes in, offers out. Nothing here parses OpenPGP or fetches a URL;
//! the key service decides what to import and at which validation level.
//! Malformed messages yield fewer offers, never a panic.

use std::borrow::Cow;

use data_encoding::{BASE64, BASE64_NOPAD};
use mail_parser::{Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders as _, PartType};

/// Base64 characters per line of a folded Autocrypt `keydata`.
const KEYDATA_LINE: usize = 76;

/// What a message offers as its sender's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offered {
    /// The From address, lowercased; `None` when the message has no From
    /// header, more than one, or a From that is not exactly one address.
    pub sender: Option<String>,
    /// The key data (binary OpenPGP) of the one valid Autocrypt header, whose
    /// `addr` is the sender's.
    pub autocrypt: Option<Vec<u8>>,
    /// The decoded bodies of the `application/pgp-keys` parts (armored or
    /// binary, as sent), in message order. Parts of attached messages do not
    /// count: their keys are not the sender's.
    pub attachments: Vec<Vec<u8>>,
    /// The `OpenPGP:` header, if there is exactly one and it says anything.
    pub openpgp_header: Option<OpenPgpHeader>,
}

/// The attributes of an `OpenPGP:` header that passed the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenPgpHeader {
    /// A key id or fingerprint, upper-case hex.
    pub id: Option<String>,
    /// Where the key can be fetched: only an `https` URL whose host is the
    /// sender's domain or a subdomain of it.
    pub url: Option<String>,
    /// `sign`, `encrypt`, `signencrypt` or `unprotected`.
    pub preference: Option<String>,
}

/// What `message` offers as keys of its sender.
pub fn offered(message: &[u8]) -> Offered {
    let parser = MessageParser::new().with_mime_headers().header_address(HeaderName::From);
    let Some(message) = bitmask_mime::parse_with(&parser, message) else {
        return Offered::default();
    };
    let sender = sender(&message);
    Offered {
        autocrypt: sender.as_deref().and_then(|sender| autocrypt(&message, sender)),
        attachments: attachments(&message),
        openpgp_header: openpgp(&message, sender.as_deref()),
        sender,
    }
}

/// The value of an Autocrypt header for `address` with its public key
/// (binary OpenPGP): `addr=ADDRESS; [prefer-encrypt=mutual; ]keydata=`
/// followed by the base64 key in lines of 76 characters, each preceded by
/// `"\r\n "`, so that `"Autocrypt: " + value + "\r\n"` is a folded header
/// whose lines stay within 78 characters. Whitespace, control characters and
/// `;` in `address` are dropped: they cannot be in an address and would break
/// the header.
pub fn autocrypt_header(address: &str, public_key_binary: &[u8], prefer_mutual: bool) -> String {
    let address = header_safe(address);
    let keydata = BASE64.encode(public_key_binary);
    let mut value = format!("addr={address}; ");
    if prefer_mutual {
        value.push_str("prefer-encrypt=mutual; ");
    }
    value.push_str("keydata=");
    for line in keydata.as_bytes().chunks(KEYDATA_LINE) {
        value.push_str("\r\n ");
        // Base64 is ASCII.
        value.extend(line.iter().map(|byte| char::from(*byte)));
    }
    value
}

/// The value of an `OpenPGP:` header: `id=FINGERPRINT; url=URL;
/// preference=signencrypt` (without `url` when there is none). The
/// fingerprint loses its spaces and is upper-cased; whitespace, control
/// characters and `;` are dropped from both.
pub fn openpgp_header(fingerprint: &str, url: Option<&str>) -> String {
    let id = header_safe(fingerprint).to_ascii_uppercase();
    match url {
        Some(url) => format!("id={id}; url={}; preference=signencrypt", header_safe(url)),
        None => format!("id={id}; preference=signencrypt"),
    }
}

fn header_safe(text: &str) -> String {
    text.chars().filter(|char| !char.is_whitespace() && !char.is_control() && *char != ';').collect()
}

/// The one address of the one From header, lowercased.
fn sender(message: &Message<'_>) -> Option<String> {
    let mut froms = message.headers().iter().filter(|header| header.name == HeaderName::From);
    let (Some(from), None) = (froms.next(), froms.next()) else {
        return None;
    };
    let mut addresses: Vec<&str> = match from.value() {
        HeaderValue::Address(Address::List(list)) => list.iter().filter_map(|addr| addr.address.as_deref()).collect(),
        HeaderValue::Address(Address::Group(groups)) => {
            groups.iter().flat_map(|group| group.addresses.iter()).filter_map(|addr| addr.address.as_deref()).collect()
        }
        _ => return None,
    };
    let address = addresses.pop().filter(|_| addresses.is_empty())?.to_lowercase();
    let (local, domain) = address.rsplit_once('@')?;
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !address.chars().any(|char| char.is_whitespace() || char.is_control() || "<>()[],;:\\\"".contains(char));
    plausible.then_some(address)
}

/// The top-level headers called `name` (case-insensitive), as text.
fn header_texts<'m>(message: &'m Message<'_>, name: &'m str) -> impl Iterator<Item = Cow<'m, str>> + 'm {
    message.headers().iter().filter(move |header| header.name.as_str().eq_ignore_ascii_case(name)).map(|header| {
        match header.value() {
            HeaderValue::Text(text) => Cow::Borrowed(text.as_ref()),
            HeaderValue::TextList(list) => Cow::Owned(list.join(",")),
            _ => Cow::Borrowed(""),
        }
    })
}

/// The `name=value` attributes of a header, split at `;`; `None` when one has
/// no `=` or its name appears twice.
fn attributes(value: &str) -> Option<Vec<(String, &str)>> {
    let mut attributes: Vec<(String, &str)> = Vec::new();
    for attribute in value.split(';').map(str::trim).filter(|attribute| !attribute.is_empty()) {
        let (name, value) = attribute.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        if attributes.iter().any(|(seen, _)| *seen == name) {
            return None;
        }
        attributes.push((name, value.trim()));
    }
    Some(attributes)
}

/// The key data of the one valid Autocrypt header. Valid (Autocrypt Level 1,
/// section 2.1): `addr` and `keydata` present, `addr` is the sender
/// (case-insensitive), no critical attribute other than `addr`,
/// `prefer-encrypt` and `keydata` (non-critical ones start with `_`), and
/// `keydata` is base64 (whitespace ignored). More than one valid header
/// counts as none.
fn autocrypt(message: &Message<'_>, sender: &str) -> Option<Vec<u8>> {
    let mut valid = header_texts(message, "Autocrypt").filter_map(|value| autocrypt_keydata(&value, sender));
    match (valid.next(), valid.next()) {
        (Some(keydata), None) => Some(keydata),
        _ => None,
    }
}

fn autocrypt_keydata(value: &str, sender: &str) -> Option<Vec<u8>> {
    let (mut addr, mut keydata) = (None, None);
    for (name, value) in attributes(value)? {
        match name.as_str() {
            "addr" => addr = Some(value),
            "keydata" => keydata = Some(value),
            "prefer-encrypt" => {}
            non_critical if non_critical.starts_with('_') => {}
            _critical => return None,
        }
    }
    if addr?.to_lowercase() != sender {
        return None;
    }
    let base64: Vec<u8> = keydata?.bytes().filter(|byte| !byte.is_ascii_whitespace()).collect();
    let key = BASE64.decode(&base64).or_else(|_| BASE64_NOPAD.decode(&base64)).ok()?;
    (!key.is_empty()).then_some(key)
}

/// The decoded bodies of the message's own `application/pgp-keys` parts.
fn attachments(message: &Message<'_>) -> Vec<Vec<u8>> {
    message
        .parts
        .iter()
        .filter(|part| !matches!(part.body, PartType::Multipart(_) | PartType::Message(_)))
        .filter(|part| part.is_content_type("application", "pgp-keys"))
        .map(|part| part.contents().to_vec())
        .filter(|body| !body.is_empty())
        .collect()
}

/// The one `OpenPGP:` header; its `url` only if it is on the sender's domain.
fn openpgp(message: &Message<'_>, sender: Option<&str>) -> Option<OpenPgpHeader> {
    let mut headers = header_texts(message, "OpenPGP");
    let (Some(value), None) = (headers.next(), headers.next()) else {
        return None;
    };
    let mut header = OpenPgpHeader::default();
    for (name, value) in attributes(&value)? {
        match name.as_str() {
            "id" => {
                let id = value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")).unwrap_or(value);
                if !id.is_empty() && id.len() <= 64 && id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                    header.id = Some(id.to_ascii_uppercase());
                }
            }
            "url" => {
                let url = unquote(value);
                let domain = sender.and_then(|sender| sender.rsplit_once('@')).map(|(_, domain)| domain);
                if domain.is_some_and(|domain| url_on_domain(url, domain)) {
                    header.url = Some(url.to_owned());
                }
            }
            "preference" => {
                let preference = value.to_ascii_lowercase();
                if ["sign", "encrypt", "signencrypt", "unprotected"].contains(&preference.as_str()) {
                    header.preference = Some(preference);
                }
            }
            _extension => {}
        }
    }
    (header != OpenPgpHeader::default()).then_some(header)
}

/// `"…"` or `<…>` around a URL, as some mailers write it, taken off.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .or_else(|| value.strip_prefix('<').and_then(|rest| rest.strip_suffix('>')))
        .unwrap_or(value)
        .trim()
}

/// Whether `url` is `https` on `domain` or one of its subdomains. Strict
/// where URL parsers differ: only printable ASCII without `\`, no user info,
/// a host of letters, digits, `-` and `.`, an optional numeric port. A URL
/// passing this check means the same host to every parser.
fn url_on_domain(url: &str, domain: &str) -> bool {
    if !url.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'\\') {
        return false;
    }
    let Some(scheme) = url.get(..8) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("https://") {
        return false;
    }
    let rest = &url[8..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return false;
    }
    let host = match authority.split_once(':') {
        Some((host, port)) => {
            if port.is_empty() || port.len() > 5 || !port.bytes().all(|byte| byte.is_ascii_digit()) {
                return false;
            }
            host
        }
        None => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let domain = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    if !dns_name(&host) || !dns_name(&domain) {
        return false;
    }
    host == domain || host.strip_suffix(domain.as_str()).is_some_and(|subdomain| subdomain.ends_with('.'))
}

/// Letters, digits and inner `-` in non-empty labels, with a top-level label
/// that is not all digits (so never an IPv4 address in any notation).
fn dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    };
    name.len() <= 253
        && labels.iter().all(label_ok)
        && labels.last().is_some_and(|top| top.bytes().any(|byte| byte.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openpgp::{self, Algorithm};

    fn bob_key() -> Vec<u8> {
        let cert = openpgp::generate("bob@example.org", Algorithm::Cv25519).unwrap();
        openpgp::export_public(&cert, false).unwrap()
    }

    /// A message from `from` with `headers` (already folded) and a text body.
    fn message(from: &str, headers: &[String]) -> Vec<u8> {
        let mut text = format!("From: Bob <{from}>\r\nTo: alice@example.net\r\nSubject: hi\r\n");
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("\r\nHello.\r\n");
        text.into_bytes()
    }

    fn autocrypt_line(address: &str, key: &[u8]) -> String {
        format!("Autocrypt: {}", autocrypt_header(address, key, true))
    }

    #[test]
    fn autocrypt_round_trip() {
        let key = bob_key();
        let value = autocrypt_header("bob@example.org", &key, false);
        assert!(value.starts_with("addr=bob@example.org; keydata=\r\n "));
        let line = format!("Autocrypt: {value}");
        for physical in line.split("\r\n") {
            assert!(physical.len() <= 78, "{physical:?}");
        }
        let offer = offered(&message("Bob@Example.ORG", &[line]));
        assert_eq!(offer.sender.as_deref(), Some("bob@example.org"));
        assert_eq!(offer.autocrypt.as_deref(), Some(key.as_slice()));
        assert!(offer.attachments.is_empty());
        assert_eq!(offer.openpgp_header, None);

        let mutual = autocrypt_header("bob@example.org", &key, true);
        assert!(mutual.starts_with("addr=bob@example.org; prefer-encrypt=mutual; keydata=\r\n "));
        let offer = offered(&message("bob@example.org", &[format!("Autocrypt: {mutual}")]));
        assert_eq!(offer.autocrypt.as_deref(), Some(key.as_slice()));
    }

    #[test]
    fn autocrypt_addr_is_case_insensitive() {
        let key = bob_key();
        let offer = offered(&message("bob@example.org", &[autocrypt_line("BOB@example.ORG", &key)]));
        assert_eq!(offer.autocrypt.as_deref(), Some(key.as_slice()));
    }

    #[test]
    fn autocrypt_for_another_address_is_ignored() {
        let key = bob_key();
        let offer = offered(&message("bob@example.org", &[autocrypt_line("mallory@example.org", &key)]));
        assert_eq!(offer.sender.as_deref(), Some("bob@example.org"));
        assert_eq!(offer.autocrypt, None);
    }

    #[test]
    fn two_valid_autocrypt_headers_are_both_ignored() {
        let key = bob_key();
        let line = autocrypt_line("bob@example.org", &key);
        assert_eq!(offered(&message("bob@example.org", &[line.clone(), line])).autocrypt, None);
    }

    #[test]
    fn an_invalid_autocrypt_header_does_not_hide_the_valid_one() {
        let key = bob_key();
        let headers = [autocrypt_line("bob@example.org", &key), autocrypt_line("mallory@example.org", &key)];
        assert_eq!(offered(&message("bob@example.org", &headers)).autocrypt.as_deref(), Some(key.as_slice()));
    }

    #[test]
    fn autocrypt_attributes() {
        let key = bob_key();
        let keydata = BASE64.encode(&key);
        let accepts = |value: String| offered(&message("bob@example.org", &[format!("Autocrypt: {value}")])).autocrypt;
        // Non-critical attributes are ignored; folding and whitespace in keydata too.
        let folded: Vec<&str> =
            keydata.as_bytes().chunks(10).map(|chunk| std::str::from_utf8(chunk).unwrap()).collect();
        let value = format!("_extra=1; addr=bob@example.org; keydata={}", folded.join("\r\n\t "));
        assert_eq!(accepts(value).as_deref(), Some(key.as_slice()));
        // Unpadded base64 is taken too.
        let value = format!("addr=bob@example.org; keydata={}", keydata.trim_end_matches('='));
        assert_eq!(accepts(value).as_deref(), Some(key.as_slice()));
        // Unknown critical attribute: invalid.
        assert_eq!(accepts(format!("addr=bob@example.org; type=2; keydata={keydata}")), None);
        // Missing attributes, repeated ones, bad base64, empty key.
        assert_eq!(accepts(format!("keydata={keydata}")), None);
        assert_eq!(accepts("addr=bob@example.org".into()), None);
        assert_eq!(accepts(format!("addr=bob@example.org; addr=bob@example.org; keydata={keydata}")), None);
        assert_eq!(accepts("addr=bob@example.org; keydata=!!!notbase64".into()), None);
        assert_eq!(accepts("addr=bob@example.org; keydata=".into()), None);
        assert_eq!(accepts(format!("addr=bob@example.org; nonsense; keydata={keydata}")), None);
    }

    #[test]
    fn no_single_sender_no_autocrypt() {
        let key = bob_key();
        let line = autocrypt_line("bob@example.org", &key);
        let two_froms = format!("From: bob@example.org\r\nFrom: bob@example.org\r\n{line}\r\n\r\nHello.\r\n",);
        let offer_two = offered(two_froms.as_bytes());
        assert_eq!((offer_two.sender, offer_two.autocrypt), (None, None));
        let two_addresses = format!("From: bob@example.org, carol@example.org\r\n{line}\r\n\r\nHello.\r\n");
        assert_eq!(offered(two_addresses.as_bytes()).sender, None);
        let no_from = format!("{line}\r\n\r\nHello.\r\n");
        assert_eq!(offered(no_from.as_bytes()), Offered::default());
    }

    #[test]
    fn pgp_keys_attachments_are_found_in_order() {
        let key = bob_key();
        let cert = openpgp::parse_certs(&key).unwrap().remove(0);
        let armored = openpgp::export_public(&cert, true).unwrap();
        let armored_base64: Vec<String> = BASE64
            .encode(&armored)
            .as_bytes()
            .chunks(76)
            .map(|chunk| String::from_utf8(chunk.to_vec()).unwrap())
            .collect();
        let binary_base64 = BASE64.encode(&key);
        let text = format!(
            "From: bob@example.org\r\n\
             To: alice@example.net\r\n\
             Subject: my key\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
             \r\n\
             --b1\r\n\
             Content-Type: text/plain\r\n\
             \r\n\
             Here is my key.\r\n\
             --b1\r\n\
             Content-Type: application/pgp-keys; name=\"bob.asc\"\r\n\
             Content-Disposition: attachment; filename=\"bob.asc\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             \r\n\
             {}\r\n\
             --b1\r\n\
             Content-Type: Application/PGP-Keys\r\n\
             Content-Transfer-Encoding: base64\r\n\
             \r\n\
             {binary_base64}\r\n\
             --b1\r\n\
             Content-Type: application/octet-stream\r\n\
             \r\n\
             not a key\r\n\
             --b1--\r\n",
            armored_base64.join("\r\n"),
        );
        let offer = offered(text.as_bytes());
        assert_eq!(offer.sender.as_deref(), Some("bob@example.org"));
        assert_eq!(offer.attachments, vec![armored, key]);
        assert_eq!(offer.autocrypt, None);
    }

    #[test]
    fn keys_of_forwarded_messages_are_not_the_senders() {
        let key = bob_key();
        let inner = format!(
            "From: carol@example.com\r\n\
             Autocrypt: {}\r\n\
             Content-Type: application/pgp-keys\r\n\
             Content-Transfer-Encoding: base64\r\n\
             \r\n\
             {}\r\n",
            autocrypt_header("carol@example.com", &key, false),
            BASE64.encode(&key),
        );
        let text = format!(
            "From: bob@example.org\r\n\
             Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
             \r\n\
             --b1\r\n\
             Content-Type: message/rfc822\r\n\
             \r\n\
             {inner}\r\n\
             --b1--\r\n",
        );
        let offer = offered(text.as_bytes());
        assert_eq!(offer.sender.as_deref(), Some("bob@example.org"));
        assert_eq!(offer.autocrypt, None);
        assert!(offer.attachments.is_empty());
    }

    #[test]
    fn openpgp_header_round_trip() {
        let value =
            openpgp_header("abcd 1234 ABCD 1234 abcd  1234 ABCD 1234 abcd 1234", Some("https://example.org/bob.asc"));
        assert_eq!(
            value,
            "id=ABCD1234ABCD1234ABCD1234ABCD1234ABCD1234; url=https://example.org/bob.asc; preference=signencrypt"
        );
        let offer = offered(&message("bob@example.org", &[format!("OpenPGP: {value}")]));
        assert_eq!(
            offer.openpgp_header,
            Some(OpenPgpHeader {
                id: Some("ABCD1234ABCD1234ABCD1234ABCD1234ABCD1234".into()),
                url: Some("https://example.org/bob.asc".into()),
                preference: Some("signencrypt".into()),
            })
        );
        assert_eq!(openpgp_header("ab12", None), "id=AB12; preference=signencrypt");
        assert_eq!(
            openpgp_header("ab\r\n12", Some("https://x.org/;a b")),
            "id=AB12; url=https://x.org/ab; preference=signencrypt"
        );
    }

    /// Which `url=` of an OpenPGP header from bob@example.org is kept.
    #[test]
    fn openpgp_header_url_must_be_https_on_the_senders_domain() {
        let kept = |url: &str| {
            let header = format!("OpenPGP: id=ABCD1234; url={url}");
            offered(&message("bob@example.org", &[header])).openpgp_header.and_then(|header| header.url)
        };
        for url in [
            "https://example.org/bob.asc",
            "https://EXAMPLE.org/bob.asc",
            "HTTPS://example.org",
            "https://keys.example.org/pks/lookup?op=get&search=bob%40example.org",
            "https://openpgpkey.example.org:8443/x",
            "https://example.org./bob.asc",
            "https://example.org#fragment",
            "<https://example.org/bob.asc>",
            "\"https://example.org/bob.asc\"",
        ] {
            assert!(kept(url).is_some(), "{url} should be kept");
        }
        assert_eq!(kept("<https://example.org/bob.asc>").as_deref(), Some("https://example.org/bob.asc"));
        for url in [
            "http://example.org/bob.asc",
            "ftp://example.org/bob.asc",
            "https://example.net/bob.asc",
            "https://evil.example.org.attacker.net/bob.asc",
            "https://notexample.org/bob.asc",
            "https://example.org@attacker.net/bob.asc",
            "https://attacker.net\\@example.org/",
            "https://attacker.net\\.example.org/",
            "https://example.org%2eattacker.net/",
            "https://example.org:abc/",
            "https://example.org:/",
            "https://[::1]/",
            "https:///example.org/",
            "https://",
            "https:example.org",
            "//example.org/bob.asc",
            "https://exa mple.org/",
            "https://ex\u{e4}mple.org/",
            "https://.example.org/",
            "https://-.example.org/",
            "example.org",
        ] {
            assert_eq!(kept(url), None, "{url} should be dropped");
        }
    }

    #[test]
    fn openpgp_header_without_sender_keeps_no_url() {
        let text = "OpenPGP: id=0xabcd1234; url=https://example.org/k; preference=Sign\r\n\r\nHello.\r\n";
        let offer = offered(text.as_bytes());
        assert_eq!(
            offer.openpgp_header,
            Some(OpenPgpHeader { id: Some("ABCD1234".into()), url: None, preference: Some("sign".into()) })
        );
    }

    #[test]
    fn openpgp_header_oddities() {
        let header = |values: &[&str]| {
            let headers: Vec<String> = values.iter().map(|value| format!("OpenPGP: {value}")).collect();
            offered(&message("bob@example.org", &headers)).openpgp_header
        };
        assert_eq!(header(&["id=XYZ; preference=maybe; x-ext=1"]), None);
        assert_eq!(header(&["id=AB12", "id=CD34"]), None);
        assert_eq!(header(&["id=AB12; id=CD34"]), None);
        assert_eq!(header(&["garbage"]), None);
        assert_eq!(
            header(&["id=ab12;\r\n url=https://www.example.org/k;\r\n preference=encrypt;"]),
            Some(OpenPgpHeader {
                id: Some("AB12".into()),
                url: Some("https://www.example.org/k".into()),
                preference: Some("encrypt".into())
            })
        );
    }

    /// A small deterministic generator for the fuzz-ish tests.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

    #[test]
    fn truncated_mutated_and_garbage_messages_do_not_panic() {
        let key = bob_key();
        let mut full = message(
            "bob@example.org",
            &[autocrypt_line("bob@example.org", &key), "OpenPGP: id=AB12; url=https://example.org/k".into()],
        );
        full.extend_from_slice(
            b"--b\r\nContent-Type: application/pgp-keys\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n",
        );
        for end in 0..=full.len() {
            let _ = offered(&full[..end]);
            let _ = offered(&full[end..]);
        }
        let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
        let alphabet: &[u8] = b"\r\n\t :;=@<>\"\\/-_.aAzZ09+=%\x00\xff\xc3";
        for _ in 0..2_000 {
            let mut mutated = full.clone();
            for _ in 0..1 + random.below(8) {
                let at = random.below(mutated.len());
                match random.below(3) {
                    0 => mutated[at] = alphabet[random.below(alphabet.len())],
                    1 => {
                        mutated.remove(at);
                    }
                    _ => mutated.insert(at, alphabet[random.below(alphabet.len())]),
                }
            }
            let _ = offered(&mutated);
            let garbage: Vec<u8> = (0..random.below(512)).map(|_| alphabet[random.below(alphabet.len())]).collect();
            let _ = offered(&garbage);
            let bytes: Vec<u8> = (0..random.below(512)).map(|_| random.next() as u8).collect();
            let _ = offered(&bytes);
        }
    }

    /// Every message of the shared MIME corpus (real-world, RFC examples,
    /// deliberately malformed) goes through without a panic.
    #[test]
    fn the_mime_corpus_does_not_panic() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/mime");
        assert!(corpus.is_dir(), "the MIME corpus is missing at {}", corpus.display());
        let mut directories = vec![corpus];
        let mut messages = 0;
        while let Some(directory) = directories.pop() {
            for entry in std::fs::read_dir(&directory).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    directories.push(path);
                } else if path.extension().is_some_and(|extension| extension == "eml") {
                    let message = std::fs::read(&path).unwrap();
                    let _ = offered(&message);
                    // Cut short at a few places too: a message that is truncated in transit.
                    for end in (0..message.len()).step_by(message.len().div_ceil(16).max(1)) {
                        let _ = offered(&message[..end]);
                    }
                    messages += 1;
                }
            }
        }
        assert!(messages >= 200, "only {messages} messages in the corpus");
    }
}
