//! The account list, `<home>/config.toml`, owned by bitmaskd.
//!
//! ```toml
//! [[accounts]]
//! address = "alice@example.org"
//! imap_port = 1984
//! smtp_port = 2013
//! ```
//!
//! Loaded once at start and checked before any socket is bound; every change
//! is written atomically (temporary file, fsync, rename).

use std::collections::HashSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_IMAP_PORT: u16 = 1984;
pub const DEFAULT_SMTP_PORT: u16 = 2013;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid configuration: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{address} is not an account of {path}")]
    NoAccount { path: PathBuf, address: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptionPolicy {
    /// Encrypt when the recipient's key is known, sign only otherwise.
    #[default]
    Opportunistic,
    /// Refuse recipients whose key is not known.
    EncryptedOnly,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayTls {
    None,
    #[default]
    Starttls,
    Tls,
}

/// An explicitly named relay for outgoing mail (instead of the provider's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// host:port
    pub address: String,
    #[serde(default)]
    pub tls: RelayTls,
    /// A PEM file with the CA certificate to trust for the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM files with the client certificate and its key, presented to the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub address: String,
    pub imap_port: u16,
    pub smtp_port: u16,
    #[serde(default = "default_bind_address")]
    pub bind_address: IpAddr,
    /// https://HOST:PORT of the provider; unset for a local-only account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayConfig>,
    #[serde(default)]
    pub encryption_policy: EncryptionPolicy,
}

fn default_bind_address() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

impl AccountConfig {
    pub fn new(address: String, imap_port: u16, smtp_port: u16) -> Self {
        Self {
            address,
            imap_port,
            smtp_port,
            bind_address: default_bind_address(),
            provider_url: None,
            relay: None,
            encryption_policy: EncryptionPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
}

impl Config {
    /// Loads and checks the configuration; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        let config: Config = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Writes the configuration atomically: readers see the old or the new file.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let write_error = |source| ConfigError::Write { path: path.to_owned(), source };
        let text =
            toml::to_string_pretty(self).map_err(|error| write_error(std::io::Error::other(error.to_string())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_error)?;
        let temporary = path.with_extension("toml.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(write_error)?;
        file.write_all(
            b"# The account list of bitmaskd. Change it with bitmaskctl, or edit it while bitmaskd is stopped.\n",
        )
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
        std::fs::rename(&temporary, path).map_err(write_error)?;
        std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(write_error)?;
        Ok(())
    }

    pub fn account(&self, address: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|account| account.address == address)
    }

    /// One account of the configuration file at `path`: what a service
    /// started for that account reads.
    pub fn load_account(path: &Path, address: &str) -> Result<AccountConfig, ConfigError> {
        Self::load(path)?
            .account(address)
            .cloned()
            .ok_or_else(|| ConfigError::NoAccount { path: path.to_owned(), address: address.to_owned() })
    }

    /// Every rule a loaded or changed configuration must keep.
    pub fn validate(&self) -> Result<(), String> {
        let mut addresses = HashSet::new();
        let mut ports = HashSet::new();
        for account in &self.accounts {
            bitmask_runtime::paths::validate_address(&account.address).map_err(|error| error.to_string())?;
            if !addresses.insert(account.address.as_str()) {
                return Err(format!("account {} appears twice", account.address));
            }
            for (name, port) in [("imap_port", account.imap_port), ("smtp_port", account.smtp_port)] {
                if port == 0 {
                    return Err(format!("account {}: {name} must not be 0", account.address));
                }
                if !ports.insert((account.bind_address, port)) {
                    return Err(format!("account {}: port {port} is used twice", account.address));
                }
            }
        }
        Ok(())
    }

    /// The account using `port` on `bind_address`, if any.
    pub fn port_user(&self, bind_address: IpAddr, port: u16) -> Option<&AccountConfig> {
        self.accounts.iter().find(|account| {
            account.bind_address == bind_address && (account.imap_port == port || account.smtp_port == port)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let mut config = Config::default();
        config.accounts.push(AccountConfig::new("alice@example.org".into(), 1984, 2013));
        let mut bob = AccountConfig::new("bob@example.org".into(), 1985, 2014);
        bob.relay = Some(RelayConfig {
            address: "relay.example.org:465".into(),
            tls: RelayTls::Tls,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
        });
        bob.encryption_policy = EncryptionPolicy::EncryptedOnly;
        config.accounts.push(bob);
        config.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), config);
    }

    #[test]
    fn the_deployed_example_is_valid() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/config.toml");
        let config = Config::load(&example).unwrap();
        assert_eq!(config.accounts.len(), 2);
        assert_eq!(config.accounts[1].relay.as_ref().unwrap().tls, RelayTls::Tls);
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(&dir.path().join("none.toml")).unwrap(), Config::default());
    }

    #[test]
    fn refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let cases = [
            ("[[accounts]]\naddress = 'a@b'\n", "missing field"),
            ("[[accounts]]\naddress = 'a@b'\nimap_port = 1\nsmtp_port = 2\ncolour = 'red'\n", "unknown field"),
            ("[[accounts]]\naddress = 'nobody'\nimap_port = 1\nsmtp_port = 2\n", "local@domain"),
            ("[[accounts]]\naddress = 'a@b'\nimap_port = 1\nsmtp_port = 1\n", "used twice"),
            (
                "[[accounts]]\naddress = 'a@b'\nimap_port = 1\nsmtp_port = 2\n[[accounts]]\naddress = 'a@b'\nimap_port = 3\nsmtp_port = 4\n",
                "appears twice",
            ),
            ("not toml at all [", "line 1"),
        ];
        for (text, expected) in cases {
            std::fs::write(&path, text).unwrap();
            let error = Config::load(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?} gave {error:?}, expected {expected:?}");
        }
    }
}
