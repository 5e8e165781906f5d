//! The provider's directory and its settings.
//!
//! Everything a provider is lives in one directory, made by
//! `bitmask-provider init`:
//!
//! ```text
//! DIR/                 0700
//!   provider.toml      the settings (below); written last, it marks a complete init
//!   ca.pem  ca.key     the provider's CA (key 0600)
//!   tls.pem tls.key    the TLS certificate of every port, signed by the CA (key 0600)
//!   secret.key         32 random bytes, hex (0600): the key of the provider's keyed hashes
//!   invites/           0700: one file per unused invite code, named by its SHA-256
//!   data/sync/         sled: the sync endpoint's per-user data and incoming mail (ciphertext)
//!   data/provider/     sled: accounts (SRP verifiers), issued client certificates,
//!                      the key directory, delivery deduplication (keyed hashes)
//! ```
//!
//! `provider.toml`:
//!
//! ```toml
//! domain = "example.org"          # the mail domain: accounts are local@domain
//! hostname = "localhost"          # how clients reach this provider (ProviderInfo)
//! bind = "127.0.0.1"              # the address every port listens on
//! https_port = 8443               # gRPC (Accounts, KeyDirectory, SyncEndpoint), /ca.crt, WKD
//! mx_port = 2525                  # incoming mail from anyone (SMTP, STARTTLS offered)
//! relay_port = 4650               # submission by users (implicit TLS, client certificate)
//! smarthost = "127.0.0.1:25"      # optional: where mail for other domains goes (plain SMTP)
//! session_lifetime_seconds = 86400
//! signup = "invite"               # open | invite (codes from `bitmask-provider invite`) | closed
//!
//! [limits]                        # optional, each with the default shown
//! mx_max_connections = 100        # concurrent MX connections in all...
//! mx_max_connections_per_ip = 10  # ...and from one client (IPv4 address, IPv6 /64)
//! relay_max_connections = 100     # the relay's own pool
//! relay_max_connections_per_ip = 20
//! ```
//!
//! Beyond a limit the MX answers `421 4.7.0 too many connections from your
//! address` (or `... try again later` when it is full) and closes; the
//! relay, whose clients speak TLS first, closes.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const CONFIG_FILE: &str = "provider.toml";

/// The longest a login session may last.
pub const MAX_SESSION_LIFETIME_SECONDS: u64 = 30 * 24 * 3600;

/// The settings in `provider.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The mail domain, lowercase.
    pub domain: String,
    /// The host name clients use to reach the ports (in `ProviderInfo`, and
    /// a name of the TLS certificate).
    pub hostname: String,
    pub bind: IpAddr,
    pub https_port: u16,
    pub mx_port: u16,
    pub relay_port: u16,
    /// `HOST:PORT` of the SMTP server that takes mail for other domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<String>,
    pub session_lifetime_seconds: u64,
    /// Who may sign up (a file without it: invite).
    #[serde(default)]
    pub signup: SignupPolicy,
    #[serde(default)]
    pub limits: Limits,
}

/// Who may create an account.
///
/// `invite` is the default: an open provider with a smarthost is an open
/// spam relay and a free disk for anyone, and SignUp's ALREADY_EXISTS tells
/// strangers which addresses exist. A provider for a known group hands out
/// codes; `open` is for a provider that means to take anyone (and should
/// then watch its quotas); `closed` takes no one new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SignupPolicy {
    Open,
    #[default]
    Invite,
    Closed,
}

impl std::fmt::Display for SignupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Open => "open",
            Self::Invite => "invite",
            Self::Closed => "closed",
        })
    }
}

/// What one client or account may hold (`[limits]` in `provider.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub mx_max_connections: usize,
    pub mx_max_connections_per_ip: usize,
    pub relay_max_connections: usize,
    pub relay_max_connections_per_ip: usize,
}

impl Default for Limits {
    /// An MTA's usual numbers: Postfix allows 100 smtpd processes and, by
    /// default, half of them to one client; one client here gets a tenth
    /// of the MX (a real MTA opens a handful) and a fifth of the relay
    /// (the devices of a household or an office behind one address).
    fn default() -> Self {
        Self {
            mx_max_connections: 100,
            mx_max_connections_per_ip: 10,
            relay_max_connections: 100,
            relay_max_connections_per_ip: 20,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), String> {
        for (name, total, per_ip) in [
            ("mx", self.mx_max_connections, self.mx_max_connections_per_ip),
            ("relay", self.relay_max_connections, self.relay_max_connections_per_ip),
        ] {
            if total == 0 || per_ip == 0 {
                return Err(format!(
                    "limits: {name}_max_connections and {name}_max_connections_per_ip must be at least 1"
                ));
            }
            if per_ip > total {
                return Err(format!(
                    "limits: {name}_max_connections_per_ip ({per_ip}) must not exceed {name}_max_connections ({total})"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0} holds a provider already (or the remains of a failed init): not overwriting it")]
    Exists(PathBuf),
    #[error("{0} is not a provider directory: run `bitmask-provider init` first")]
    NotAProvider(PathBuf),
}

/// Whether `domain` is a DNS name a mail domain can be: dot-separated
/// labels of letters, digits and inner hyphens, lowercase.
pub fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        })
}

/// `HOST:PORT` split, the port a number.
pub fn host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

impl Settings {
    /// Checks what serving needs; `path` names the file in messages.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid { path: path.to_owned(), message });
        if !valid_domain(&self.domain) {
            return invalid(format!("domain {:?} is not a lowercase DNS name", self.domain));
        }
        if self.hostname.is_empty() || self.hostname.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
            return invalid(format!("hostname {:?} is not a host name", self.hostname));
        }
        for (name, port) in
            [("https_port", self.https_port), ("mx_port", self.mx_port), ("relay_port", self.relay_port)]
        {
            if port == 0 {
                return invalid(format!("{name} must be a port number, not 0"));
            }
        }
        let ports = [self.https_port, self.mx_port, self.relay_port];
        if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
            return invalid("https_port, mx_port and relay_port must differ".into());
        }
        if let Some(smarthost) = &self.smarthost
            && host_port(smarthost).is_none()
        {
            return invalid(format!("smarthost {smarthost:?} is not HOST:PORT"));
        }
        if let Err(message) = self.limits.validate() {
            return invalid(message);
        }
        if self.session_lifetime_seconds == 0 || self.session_lifetime_seconds > MAX_SESSION_LIFETIME_SECONDS {
            return invalid(format!(
                "session_lifetime_seconds must be from 1 to {MAX_SESSION_LIFETIME_SECONDS} (30 days), not {}",
                self.session_lifetime_seconds
            ));
        }
        Ok(())
    }

    /// Reads and checks `provider.toml` of `layout`.
    pub fn load(layout: &Layout) -> Result<Self, ConfigError> {
        let path = layout.config();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::NotAProvider(layout.dir.clone()));
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let settings: Self = toml::from_str(&text)
            .map_err(|error| ConfigError::Parse { path: path.clone(), message: error.to_string() })?;
        settings.validate(&path)?;
        Ok(settings)
    }

    /// The file's text, with a header saying what it is.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        let body = toml::to_string(self)
            .map_err(|error| ConfigError::Parse { path: CONFIG_FILE.into(), message: error.to_string() })?;
        Ok(format!("# bitmask-provider settings (see `bitmask-provider init --help`)\n{body}"))
    }
}

/// Where each part of a provider lives under its directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    pub fn ca_certificate(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn tls_certificate(&self) -> PathBuf {
        self.dir.join("tls.pem")
    }

    pub fn tls_key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }

    pub fn secret(&self) -> PathBuf {
        self.dir.join("secret.key")
    }

    pub fn sync_data(&self) -> PathBuf {
        self.dir.join("data").join("sync")
    }

    /// Unused invite codes (see [`crate::invites`]).
    pub fn invites(&self) -> PathBuf {
        self.dir.join("invites")
    }

    pub fn provider_data(&self) -> PathBuf {
        self.dir.join("data").join("provider")
    }

    /// Reads a file of the provider as text.
    pub fn read(&self, path: &Path) -> Result<Zeroizing<String>, ConfigError> {
        std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(|source| ConfigError::Io { path: path.to_owned(), source })
    }
}

/// Creates `path` (which must not exist) with `contents`, readable by us only
/// when `private`, and syncs it.
pub fn write_new(path: &Path, contents: &[u8], private: bool) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(io)
}

/// The key of the provider's keyed hashes (HMAC-SHA256). Its `Debug` shows
/// nothing; zeroized on drop.
#[derive(Clone)]
pub struct ProviderSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ProviderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProviderSecret(..)")
    }
}

impl ProviderSecret {
    pub fn generate() -> Self {
        use rand::RngCore as _;
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// The file's form: hex and a newline.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{}\n", data_encoding::HEXLOWER.encode(self.0.as_ref())))
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(data_encoding::HEXLOWER_PERMISSIVE.decode(text.trim().as_bytes()).ok()?);
        let array: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings() -> Settings {
        Settings {
            domain: "example.org".into(),
            hostname: "localhost".into(),
            bind: "127.0.0.1".parse().unwrap(),
            https_port: 1,
            mx_port: 2,
            relay_port: 3,
            smarthost: Some("127.0.0.1:25".into()),
            session_lifetime_seconds: 60,
            signup: SignupPolicy::Invite,
            limits: Limits::default(),
        }
    }

    #[test]
    fn settings_round_trip_through_toml() {
        let text = settings().to_toml().unwrap();
        assert!(text.contains("domain = \"example.org\""), "{text}");
        assert_eq!(toml::from_str::<Settings>(&text).unwrap(), settings());
        let without = Settings { smarthost: None, ..settings() };
        let text = without.to_toml().unwrap();
        assert!(!text.contains("smarthost"), "{text}");
        assert_eq!(toml::from_str::<Settings>(&text).unwrap(), without);
    }

    #[test]
    fn bad_settings_are_named() {
        let path = Path::new("provider.toml");
        let check = |settings: Settings| settings.validate(path).map_err(|error| error.to_string());
        assert!(check(settings()).is_ok());
        assert!(check(Settings { domain: "Example.org".into(), ..settings() }).unwrap_err().contains("domain"));
        assert!(check(Settings { domain: "a..b".into(), ..settings() }).is_err());
        assert!(check(Settings { mx_port: 0, ..settings() }).unwrap_err().contains("mx_port"));
        assert!(check(Settings { relay_port: 1, ..settings() }).unwrap_err().contains("differ"));
        assert!(check(Settings { smarthost: Some("nowhere".into()), ..settings() }).unwrap_err().contains("smarthost"));
        assert!(check(Settings { session_lifetime_seconds: 0, ..settings() }).is_err());
        // A huge lifetime would overflow the clock at the first login.
        assert!(check(Settings { session_lifetime_seconds: u64::MAX, ..settings() }).unwrap_err().contains("30 days"));
        assert!(toml::from_str::<Settings>("domain = \"x\"\nunknown = 1\n").is_err());
        let limits = |limits: Limits| Settings { limits, ..settings() };
        let zero = Limits { mx_max_connections_per_ip: 0, ..Limits::default() };
        assert!(check(limits(zero)).unwrap_err().contains("at least 1"));
        let over = Limits { relay_max_connections: 5, ..Limits::default() };
        assert!(check(limits(over)).unwrap_err().contains("relay_max_connections_per_ip (20)"));
        // Files written before [limits] and signup existed load with the defaults.
        let mut old = settings().to_toml().unwrap();
        old.truncate(old.find("[limits]").unwrap());
        old = old.replace("signup = \"invite\"\n", "");
        assert_eq!(toml::from_str::<Settings>(&old).unwrap().signup, SignupPolicy::Invite);
        assert!(toml::from_str::<Settings>(&format!("{old}signup = \"open\"\n")).unwrap().signup == SignupPolicy::Open);
        assert!(toml::from_str::<Settings>(&format!("{old}signup = \"sometimes\"\n")).is_err());
        assert_eq!(toml::from_str::<Settings>(&old).unwrap().limits, Limits::default());
        let partial = format!("{old}[limits]\nmx_max_connections_per_ip = 3\n");
        let partial = toml::from_str::<Settings>(&partial).unwrap().limits;
        assert_eq!(partial, Limits { mx_max_connections_per_ip: 3, ..Limits::default() });
    }

    #[test]
    fn domains_and_host_ports() {
        assert!(valid_domain("example.org"));
        assert!(valid_domain("localhost"));
        assert!(!valid_domain("-a.org"));
        assert!(!valid_domain("a_b.org"));
        assert!(!valid_domain(""));
        assert_eq!(host_port("127.0.0.1:25"), Some(("127.0.0.1".into(), 25)));
        assert_eq!(host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(host_port("host:port"), None);
        assert_eq!(host_port(":25"), None);
    }

    #[test]
    fn the_secret_round_trips_and_hides() {
        let secret = ProviderSecret::generate();
        let again = ProviderSecret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(again.as_bytes(), secret.as_bytes());
        assert_eq!(format!("{secret:?}"), "ProviderSecret(..)");
        assert!(ProviderSecret::from_hex("abcd").is_none());
    }
}
