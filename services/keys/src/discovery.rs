//! Fetching keys over HTTPS: Web Key Directory (advanced method, then
//! direct) and the URL of an `OpenPGP:` header. The provider's own key
//! directory is gRPC and lives in `lib.rs`.
//!
//! Two environment variables point the fetcher at servers the public DNS
//! and web PKI do not know (tests, split-horizon set-ups), like curl's
//! `--resolve` and `--cacert`:
//! - `BITMASK_KEYS_RESOLVE=HOST=IP:PORT[,HOST=IP:PORT…]`: connect to IP:PORT
//!   for HOST (TLS still checks HOST's name);
//! - `BITMASK_KEYS_CA_FILE=FILE`: PEM certificates trusted beside the web PKI.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A key is small; anything larger than this is not one.
pub const MAX_KEY_BYTES: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: cannot connect: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message}")]
    Failed { url: String, message: String },
}

#[derive(Debug, thiserror::Error)]
#[error("key discovery settings: {0}")]
pub struct SettingsError(String);

#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    overrides: HashMap<String, SocketAddr>,
}

fn parse_overrides(value: &str) -> Result<HashMap<String, SocketAddr>, SettingsError> {
    let mut overrides = HashMap::new();
    for entry in value.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let (host, address) = entry
            .split_once('=')
            .ok_or_else(|| SettingsError(format!("{entry:?} is not HOST=IP:PORT (BITMASK_KEYS_RESOLVE)")))?;
        let address: SocketAddr =
            address.parse().map_err(|_| SettingsError(format!("{address:?} is not IP:PORT (BITMASK_KEYS_RESOLVE)")))?;
        overrides.insert(host.to_lowercase(), address);
    }
    Ok(overrides)
}

impl Http {
    /// The fetcher, with the overrides of the environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        let overrides = parse_overrides(&std::env::var("BITMASK_KEYS_RESOLVE").unwrap_or_default())?;
        let ca_file = std::env::var_os("BITMASK_KEYS_CA_FILE");
        let ca = match &ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|error| SettingsError(format!("BITMASK_KEYS_CA_FILE {path:?}: {error}")))?,
            ),
            None => None,
        };
        Self::new(overrides, ca.as_deref())
    }

    pub fn new(overrides: HashMap<String, SocketAddr>, extra_ca_pem: Option<&[u8]>) -> Result<Self, SettingsError> {
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .https_only(true)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("bitmask-keys/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = extra_ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|error| SettingsError(format!("the extra CA certificates: {error}")))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        for (host, address) in &overrides {
            builder = builder.resolve(host, *address);
        }
        let client = builder.build().map_err(|error| SettingsError(error.to_string()))?;
        Ok(Self { client, overrides })
    }

    /// GETs `url`: its body, `None` on 404 (or 410), an error otherwise.
    pub async fn get(&self, url: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let failed = |message: String| FetchError::Failed { url: url.to_owned(), message };
        let mut target = reqwest::Url::parse(url).map_err(|error| failed(error.to_string()))?;
        if target.scheme() != "https" {
            return Err(failed("only https URLs are fetched".into()));
        }
        // The resolver override keeps the URL's port: put the override's in.
        if let Some(address) = target.host_str().and_then(|host| self.overrides.get(&host.to_lowercase())) {
            target.set_port(Some(address.port())).map_err(|()| failed("cannot set the port".into()))?;
        }
        let mut response = self.client.get(target).send().await.map_err(|error| {
            if error.is_connect() || error.is_timeout() {
                FetchError::Unreachable { url: url.to_owned(), message: error_chain(&error) }
            } else {
                failed(error_chain(&error))
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| failed(error_chain(&error)))? {
            if body.len() + chunk.len() > MAX_KEY_BYTES {
                return Err(failed(format!("larger than {MAX_KEY_BYTES} bytes: not a key")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// What a Web Key Directory lookup found, and where it asked.
#[derive(Debug, Default)]
pub struct WkdOutcome {
    /// The key data and the URL it came from.
    pub found: Option<(Vec<u8>, String)>,
    pub tried: Vec<String>,
}

/// Looks `address` up by the advanced method, and by the direct one when the
/// advanced host fails (no such host, no TLS for it, an error): a domain that
/// set up `openpgpkey.` answers there, so a 404 there is final.
pub async fn wkd(http: &Http, address: &str) -> WkdOutcome {
    let mut outcome = WkdOutcome::default();
    let urls = match bitmask_keys::wkd::urls(address) {
        Ok(urls) => urls,
        Err(error) => {
            outcome.tried.push(format!("WKD: {error}"));
            return outcome;
        }
    };
    for url in [urls.advanced, urls.direct] {
        match http.get(&url).await {
            Ok(Some(body)) => {
                outcome.tried.push(format!("WKD {url}: found"));
                outcome.found = Some((body, url));
                return outcome;
            }
            Ok(None) => {
                outcome.tried.push(format!("WKD {url}: not found"));
                return outcome;
            }
            Err(error) => outcome.tried.push(format!("WKD {error}")),
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_refuse_nonsense() {
        let parsed = parse_overrides("openpgpkey.example.org=127.0.0.1:4443, Example.org=[::1]:8443").unwrap();
        assert_eq!(parsed["openpgpkey.example.org"], "127.0.0.1:4443".parse().unwrap());
        assert_eq!(parsed["example.org"], "[::1]:8443".parse().unwrap());
        assert!(parse_overrides("").unwrap().is_empty());
        assert!(parse_overrides("example.org").is_err());
        assert!(parse_overrides("example.org=localhost:1").is_err());
    }
}
