//! Web Key Directory addresses (draft-koch-openpgp-webkey-service): where a
//! recipient's key is published, by the advanced method first, then the
//! direct one. Pure: the key service does the fetching.

use sha1::{Digest as _, Sha1};

/// The z-base-32 alphabet of the WKD draft.
const ZBASE32: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

fn zbase32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ZBASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ZBASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WkdUrls {
    pub advanced: String,
    pub direct: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an address WKD can look up")]
pub struct NotAnAddress(pub String);

/// Whether `domain` is a host name and nothing more: dot-separated labels of
/// letters (an internationalized name's too), digits and hyphens. Anything
/// else (`#`, `?`, `\\`, `:`, a space) would make the URLs point elsewhere.
fn is_host_name(domain: &str) -> bool {
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.chars().all(|character| {
                character.is_ascii_alphanumeric()
                    || character == '-'
                    || (!character.is_ascii() && character.is_alphanumeric())
            })
    })
}

/// The two URLs to try for `address`, advanced method first.
pub fn urls(address: &str) -> Result<WkdUrls, NotAnAddress> {
    let (local, domain) = address.rsplit_once('@').ok_or_else(|| NotAnAddress(address.to_owned()))?;
    if local.is_empty() || local.contains('/') || !is_host_name(domain) {
        return Err(NotAnAddress(address.to_owned()));
    }
    let domain = domain.to_ascii_lowercase();
    let hash = zbase32(&Sha1::digest(local.to_lowercase().as_bytes()));
    let local_query: String = local
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    Ok(WkdUrls {
        advanced: format!("https://openpgpkey.{domain}/.well-known/openpgpkey/{domain}/hu/{hash}?l={local_query}"),
        direct: format!("https://{domain}/.well-known/openpgpkey/hu/{hash}?l={local_query}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the WKD draft (section 3.1).
    #[test]
    fn the_drafts_example() {
        let urls = urls("Joe.Doe@Example.ORG").unwrap();
        assert_eq!(
            urls.advanced,
            "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
        assert_eq!(
            urls.direct,
            "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"
        );
    }

    #[test]
    fn a_domain_that_is_more_than_a_host_name_is_refused() {
        // Found by scripts/fuzz (wkd): the domain went into the URLs as it
        // was, so `#`, `?`, `\\`, `:` or a space in it made them point at
        // another path, another port or nothing (`a@evil.example#` fetched
        // the root of openpgpkey.evil.example).
        for address in [
            "a@evil.example#",
            "a@evil.example?x=",
            "a@evil.example\\x",
            "a@127.0.0.1:8080",
            "a@evil example",
            "a@.example",
            "a@example..org",
            "a@example.org.",
            "a@b\u{fffd}d.example",
        ] {
            assert!(urls(address).is_err(), "{address:?}: {:?}", urls(address));
        }
        assert!(urls("a@xn--bcher-kva.example").is_ok());
        assert!(urls("a@b\u{fc}cher.example").is_ok());
        assert!(urls("a@mail-1.example.org").is_ok());
    }

    #[test]
    fn odd_addresses() {
        assert!(urls("no-at-sign").is_err());
        assert!(urls("@example.org").is_err());
        assert!(urls("a@b/c").is_err());
        assert!(urls("a b+c@example.org").unwrap().advanced.ends_with("?l=a%20b%2Bc"));
        assert_eq!(zbase32(&[]), "");
        assert_eq!(zbase32(&[0]), "yy");
    }
}
