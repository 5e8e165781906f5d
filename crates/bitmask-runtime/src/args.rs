//! The command-line arguments every binary shares.

use std::path::PathBuf;

use crate::paths::{AccountPaths, PathError, Paths};

/// `--home` and `--runtime-dir`, taken by every binary.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Data directory [default: $XDG_DATA_HOME/bitmask]
    #[arg(long, env = "BITMASK_HOME", value_name = "DIR", global = true)]
    pub home: Option<PathBuf>,
    /// Socket directory [default: $XDG_RUNTIME_DIR/bitmask]
    #[arg(long, env = "BITMASK_RUNTIME_DIR", value_name = "DIR", global = true)]
    pub runtime_dir: Option<PathBuf>,
}

impl CommonArgs {
    pub fn paths(&self) -> Result<Paths, PathError> {
        Paths::resolve(self.home.clone(), self.runtime_dir.clone())
    }
}

/// What bitmaskd passes to each service it starts.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The account this service instance serves
    #[arg(long, value_name = "ADDRESS")]
    pub account: String,
}

impl ServiceArgs {
    pub fn account_paths(&self) -> Result<AccountPaths, PathError> {
        self.common.paths()?.account(&self.account)
    }
}
