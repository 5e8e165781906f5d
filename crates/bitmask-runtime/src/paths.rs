//! Where a bitmask installation keeps its data and its sockets.
//!
//! ```text
//! <home>/config.toml                      the account list (bitmaskd)
//! <home>/accounts/<address>/<service>/    each service's data
//! <home>/accounts/<address>/logs/<service>.log
//! <runtime-dir>/core.sock                 bitmaskd's Core API
//! <runtime-dir>/<address>/<service>.sock  one socket per service (dir 0700)
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

/// The longest path a Unix socket address can hold (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("neither --home, BITMASK_HOME, XDG_DATA_HOME nor HOME is set")]
    NoHome,
    #[error("invalid account address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: &'static str },
}

/// The four services every started account runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceKind {
    Store,
    Keys,
    Imap,
    Smtp,
}

impl ServiceKind {
    /// In start order: every service may rely on those before it.
    pub const ALL: [ServiceKind; 4] = [Self::Store, Self::Keys, Self::Imap, Self::Smtp];

    pub fn name(self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::Keys => "keys",
            Self::Imap => "imap",
            Self::Smtp => "smtp",
        }
    }

    /// The executable that runs this service.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Store => "bitmask-store",
            Self::Keys => "bitmask-keys",
            Self::Imap => "bitmask-imap",
            Self::Smtp => "bitmask-smtp",
        }
    }

    /// The fully qualified name of the gRPC service this binary serves.
    pub fn grpc_service(self) -> &'static str {
        match self {
            Self::Store => "bitmask.store.v1.Store",
            Self::Keys => "bitmask.keys.v1.Keys",
            Self::Imap => "bitmask.mail.v1.Mail",
            Self::Smtp => "bitmask.smtp.v1.Smtp",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The two roots: data (`--home`) and sockets (`--runtime-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub home: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Paths {
    /// Resolves the roots from explicit values (flags or `BITMASK_*`, already
    /// merged by clap) and otherwise the XDG defaults.
    pub fn resolve(home: Option<PathBuf>, runtime_dir: Option<PathBuf>) -> Result<Self, PathError> {
        let env_path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = match home {
            Some(home) => home,
            None => match (env_path("XDG_DATA_HOME"), env_path("HOME")) {
                (Some(data), _) => data.join("bitmask"),
                (None, Some(home)) => home.join(".local/share/bitmask"),
                (None, None) => return Err(PathError::NoHome),
            },
        };
        let runtime_dir = match runtime_dir {
            Some(dir) => dir,
            None => match env_path("XDG_RUNTIME_DIR") {
                Some(dir) => dir.join("bitmask"),
                None => std::env::temp_dir().join(format!("bitmask-{}", nix::unistd::getuid())),
            },
        };
        Ok(Self { home: absolute(home), runtime_dir: absolute(runtime_dir) })
    }

    pub fn config_file(&self) -> PathBuf {
        self.home.join("config.toml")
    }

    pub fn core_socket(&self) -> PathBuf {
        self.runtime_dir.join("core.sock")
    }

    pub fn account(&self, address: &str) -> Result<AccountPaths, PathError> {
        validate_address(address)?;
        Ok(AccountPaths {
            socket_dir: self.runtime_dir.join(address),
            data_dir: self.home.join("accounts").join(address),
        })
    }
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// The places of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPaths {
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
}

impl AccountPaths {
    pub fn socket(&self, kind: ServiceKind) -> PathBuf {
        self.socket_dir.join(format!("{}.sock", kind.name()))
    }

    pub fn service_data_dir(&self, kind: ServiceKind) -> PathBuf {
        self.data_dir.join(kind.name())
    }

    pub fn log_file(&self, kind: ServiceKind) -> PathBuf {
        self.data_dir.join("logs").join(format!("{}.log", kind.name()))
    }
}

/// Checks that `address` is a plausible mail address that is also safe as a
/// single directory name: `local@domain`, printable ASCII, no `/`, no space.
pub fn validate_address(address: &str) -> Result<(), PathError> {
    let invalid = |reason| Err(PathError::InvalidAddress { address: address.to_owned(), reason });
    if address.is_empty() || address.len() > 254 {
        return invalid("must be 1 to 254 characters long");
    }
    if !address.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid("must be printable ASCII without spaces");
    }
    if address.contains('/') || address.contains('\\') {
        return invalid("must not contain a slash");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return invalid("must have the form local@domain");
    };
    if local.is_empty() || domain.is_empty() || local.contains('@') {
        return invalid("must have the form local@domain");
    }
    if local.starts_with('.') || domain.starts_with('.') || domain.ends_with('.') || domain.contains("..") {
        return invalid("has a misplaced dot");
    }
    Ok(())
}

/// True if `path` is short enough to be a Unix socket address.
pub fn fits_socket_address(path: &Path) -> bool {
    path.as_os_str().len() <= MAX_SOCKET_PATH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for good in ["alice@example.org", "a.b+tag@mail.example.org", "x@y"] {
            assert!(validate_address(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "alice",
            "@example.org",
            "alice@",
            "a b@example.org",
            "../x@y",
            "a/b@example.org",
            "a@@b",
            "a@b..c",
            ".a@b",
            "ä@b",
        ] {
            assert!(validate_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn layout() {
        let paths = Paths::resolve(Some("/h".into()), Some("/r".into())).unwrap();
        let account = paths.account("alice@example.org").unwrap();
        assert_eq!(paths.core_socket(), Path::new("/r/core.sock"));
        assert_eq!(paths.config_file(), Path::new("/h/config.toml"));
        assert_eq!(account.socket(ServiceKind::Keys), Path::new("/r/alice@example.org/keys.sock"));
        assert_eq!(account.service_data_dir(ServiceKind::Store), Path::new("/h/accounts/alice@example.org/store"));
        assert_eq!(account.log_file(ServiceKind::Imap), Path::new("/h/accounts/alice@example.org/logs/imap.log"));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in ServiceKind::ALL {
            assert_eq!(ServiceKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ServiceKind::from_name("web"), None);
    }
}
