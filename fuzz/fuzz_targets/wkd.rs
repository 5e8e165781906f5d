//! Web Key Directory paths: the URLs the key service fetches for an address
//! (`bitmask_keys::wkd::urls`) and the key directory's side, the address
//! normalized and its WKD location (`bitmask_keydir::wkd_location`), and the
//! lookup the provider's `hu/<hash>` routes make (`wkd_key`) over an
//! in-memory directory. The input is an address; its last byte chooses a
//! domain and hash to look up as the HTTP path would give them.
//!
//! Checked: no panic; each URL, as an HTTP client reads it, goes to the
//! address's own domain (`openpgpkey.<domain>` for the advanced method),
//! with the path and `?l=` query of the draft, the hash being 32 z-base-32
//! characters; the directory's location is the hash of the URLs and its
//! lookup finds the address published there, and only there.

#![no_main]

use std::collections::BTreeMap;
use std::sync::Mutex;

use bitmask_keydir::{KeyStorage, PublishedKey, StorageError, normalize_address, wkd_key, wkd_location};
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct MemKeys {
    keys: Mutex<BTreeMap<String, PublishedKey>>,
    wkd: Mutex<BTreeMap<(String, String), String>>,
}

impl KeyStorage for MemKeys {
    fn get(&self, address: &str) -> Result<Option<PublishedKey>, StorageError> {
        Ok(self.keys.lock().unwrap().get(&normalize_address(address)?).cloned())
    }

    fn put(&self, key: &PublishedKey) -> Result<(), StorageError> {
        let address = normalize_address(&key.address)?;
        let location = wkd_location(&address)?;
        self.keys.lock().unwrap().insert(address.clone(), PublishedKey { address: address.clone(), ..key.clone() });
        self.wkd.lock().unwrap().insert(location, address);
        Ok(())
    }

    fn by_wkd_hash(&self, domain: &str, hash: &str) -> Result<Option<PublishedKey>, StorageError> {
        let location = (domain.to_ascii_lowercase(), hash.to_ascii_lowercase());
        let Some(address) = self.wkd.lock().unwrap().get(&location).cloned() else { return Ok(None) };
        self.get(&address)
    }
}

const ZBASE32: &str = "ybndrfg8ejkmcpqxot1uwisza345h769";

fn check_urls(address: &str) {
    let Ok(urls) = bitmask_keys::wkd::urls(address) else { return };
    let (local, domain) = address.rsplit_once('@').expect("an address WKD takes has an @");
    let domain = domain.to_ascii_lowercase();
    for (url, host, path_prefix) in [
        (&urls.advanced, format!("openpgpkey.{domain}"), format!("/.well-known/openpgpkey/{domain}/hu/")),
        (&urls.direct, domain.clone(), "/.well-known/openpgpkey/hu/".to_owned()),
    ] {
        // What the domain is as a host on its own: it must be only a host.
        let Ok(alone) = url::Url::parse(&format!("https://{host}/")) else {
            // Not a host an HTTP client takes (an invalid IDN): then the URL
            // is not taken either, and nothing is fetched.
            assert!(url::Url::parse(url).is_err(), "{url:?} is taken for {address:?}, whose domain is not a host");
            continue;
        };
        assert!(
            alone.path() == "/"
                && alone.query().is_none()
                && alone.fragment().is_none()
                && alone.port().is_none()
                && alone.username().is_empty(),
            "WKD URLs for {address:?}, whose domain is more than a host name: {alone}"
        );
        let parsed = url::Url::parse(url).unwrap_or_else(|error| panic!("{url:?} is not a URL: {error}"));
        assert_eq!(parsed.scheme(), "https", "{url:?}");
        assert!(parsed.username().is_empty() && parsed.password().is_none(), "{url:?} carries credentials");
        assert_eq!(parsed.host_str(), alone.host_str(), "{url:?} for {address:?} goes to another host");
        assert_eq!(parsed.port(), None, "{url:?} for {address:?} names a port");
        // (The path as the client sends it: non-ASCII percent-encoded.)
        let path_prefix = url::Url::parse(&format!("https://host{path_prefix}")).expect("a path").path().to_owned();
        let path = parsed.path();
        let hash = path.strip_prefix(&path_prefix).unwrap_or_else(|| panic!("{url:?}: path {path:?}"));
        assert_eq!(hash.len(), 32, "{url:?}");
        assert!(hash.chars().all(|character| ZBASE32.contains(character)), "{url:?}");
        let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        assert_eq!(query, vec![("l".to_owned(), local.to_owned())], "{url:?}: query of {local:?}");
        assert_eq!(parsed.fragment(), None, "{url:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 1024 {
        return;
    }
    let (choice, text) = data.split_last().map_or((0, &[][..]), |(last, rest)| (*last, rest));
    let address = String::from_utf8_lossy(text);
    check_urls(&address);

    let keys = MemKeys::default();
    let Ok(normalized) = normalize_address(&address) else { return };
    assert_eq!(normalize_address(&normalized).as_deref(), Ok(normalized.as_str()), "normalizing twice");
    let Ok((domain, hash)) = wkd_location(&address) else { return };
    let urls = bitmask_keys::wkd::urls(&normalized).expect("a location implies URLs");
    assert!(urls.direct.contains(&format!("/hu/{hash}?")), "{urls:?} vs {hash}");
    let key = PublishedKey { address: normalized.clone(), fingerprint: "AB".into(), armored: "not a key".into() };
    keys.put(&key).expect("an address with a location is published");
    // What the HTTP route hands over: the provider's domain (any case) and the path's hash.
    let (lookup_domain, lookup_hash) = match choice % 4 {
        0 => (domain.clone(), hash.clone()),
        1 => (domain.to_ascii_uppercase(), hash.to_ascii_uppercase()),
        2 => (domain.clone(), format!("{hash}x")),
        _ => (format!("{domain}."), hash.clone()),
    };
    let found = keys.by_wkd_hash(&lookup_domain, &lookup_hash).expect("a lookup");
    let should_find = choice % 4 < 2;
    assert_eq!(
        found.map(|key| key.address),
        should_find.then(|| normalized.clone()),
        "lookup of {lookup_domain}/{lookup_hash}"
    );
    // The stored "key" is not OpenPGP: serving it is an error, not a panic.
    let _ = wkd_key(&keys, &lookup_domain, &lookup_hash);
});
