//! GnuPG, which this project did not write, as the other side of OpenPGP
//! tests: a throw-away home per instance, its agent stopped when dropped.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

#[derive(Debug)]
pub struct Gpg {
    _dir: tempfile::TempDir,
    pub home: PathBuf,
}

impl Default for Gpg {
    fn default() -> Self {
        Self::new()
    }
}

impl Gpg {
    /// An empty keyring.
    pub fn new() -> Self {
        // gpg-agent's socket must fit a short path.
        let dir = tempfile::Builder::new().prefix("g").tempdir_in("/tmp").unwrap();
        let home = dir.path().to_owned();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Self { _dir: dir, home }
    }

    /// `gpg --batch` (no passphrases, every key trusted) with `args`, `input`
    /// on its standard input.
    pub fn run(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new("gpg")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", "--trust-model", "always"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Written from another thread: gpg writes as it reads, and a full
        // stdout pipe would stop it reading.
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        output
    }

    /// Like [`Gpg::run`], and it must succeed.
    pub fn ok(&self, args: &[&str], input: &[u8]) -> Output {
        let output = self.run(args, input);
        assert!(output.status.success(), "gpg {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output
    }

    /// The fingerprint of the first key of `address`.
    pub fn fingerprint(&self, address: &str) -> String {
        let listing = String::from_utf8(self.ok(&["--with-colons", "--list-keys", address], b"").stdout).unwrap();
        listing.lines().find(|line| line.starts_with("fpr:")).unwrap().split(':').nth(9).unwrap().to_owned()
    }

    /// Writes `data` to a file in the home directory; its path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.home.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        // The agent this keyring started; not anyone else's.
        let _ = Command::new("gpgconf").arg("--homedir").arg(&self.home).args(["--kill", "gpg-agent"]).status();
    }
}
