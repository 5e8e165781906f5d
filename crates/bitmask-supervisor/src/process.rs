//! Starting and ending one service process.
//!
//! **Architecture invariant:** no service outlives bitmaskd. Every child gets
//! `PR_SET_PDEATHSIG = SIGKILL`, so it is killed when bitmaskd dies, even by
//! SIGKILL. The kernel sends that signal when the *thread* that forked the
//! child exits, so bitmaskd spawns children only from its main thread (it runs
//! a current-thread Tokio runtime). Children get their own process group, so a
//! Ctrl-C in bitmaskd's terminal reaches bitmaskd alone, which then stops them
//! in order.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::OpenOptionsExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// A log file above this size is moved to `<name>.1` before the next start.
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;

/// Spawns `program` with `args`, its stdout and stderr appended to `log`.
pub fn spawn(program: &Path, args: &[&std::ffi::OsStr], log: &Path) -> io::Result<Child> {
    let log_file = open_log(log)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .kill_on_drop(true);
    // glibc gives each thread that allocates an arena of its own (up to
    // 8 per core); with Tokio's worker and blocking threads that made a
    // store with 100,000 messages a third larger (314 MiB with 2 arenas,
    // 443 MiB without, measured). The user's own setting wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        command.env("MALLOC_ARENA_MAX", "2");
    }
    // A buffer of a big message (over 256 KiB) is mapped on its own and
    // given back when freed. glibc would otherwise raise this threshold
    // after the first big free (up to 32 MiB), and every later message
    // buffer would stay in the heap: a service that once carried a 25 MiB
    // attachment kept ~50 MiB more at rest (scripts/bench-big).
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        command.env("MALLOC_MMAP_THRESHOLD_", "262144");
    }
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and makes
    // only async-signal-safe system calls (prctl, getppid).
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died before prctl: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::other("bitmaskd exited while starting the service"));
            }
            Ok(())
        });
    }
    command.spawn()
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(path).is_ok_and(|meta| meta.len() > LOG_ROTATE_BYTES) {
        std::fs::rename(path, path.with_extension("log.1"))?;
    }
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// "exit status 1", "killed by signal 9 (SIGKILL)".
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("killed by signal {signal} ({name})"),
            Err(_) => format!("killed by signal {signal}"),
        },
        (None, None) => status.to_string(),
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
pub async fn terminate(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // ESRCH: it exited already; wait() below collects it.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!(pid = child.id(), "service ignored SIGTERM; killing it");
            child.start_kill()?;
            child.wait().await
        }
    }
}

/// The last few non-empty lines of a log file, for a failure message.
pub fn log_tail(path: &Path, lines: usize) -> Option<String> {
    const WINDOW: u64 = 4096;
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let tail: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let tail = &tail[tail.len().saturating_sub(lines)..];
    (!tail.is_empty()).then(|| tail.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exit_descriptions() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/x.log");
        let sh = Path::new("/bin/sh");
        let mut child = spawn(sh, &["-c".as_ref(), "echo one; echo; echo two >&2; exit 3".as_ref()], &log).unwrap();
        assert_eq!(describe_exit(child.wait().await.unwrap()), "exit status 3");
        assert_eq!(log_tail(&log, 5).as_deref(), Some("one\ntwo"));
        assert_eq!(log_tail(&log, 1).as_deref(), Some("two"));

        let mut child = spawn(sh, &["-c".as_ref(), "sleep 30".as_ref()], &log).unwrap();
        let status = terminate(&mut child, Duration::from_secs(5)).await.unwrap();
        assert_eq!(describe_exit(status), "killed by signal 15 (SIGTERM)");

        let script = "trap '' TERM; echo ready; exec sleep 30";
        let mut child = spawn(sh, &["-c".as_ref(), script.as_ref()], &log).unwrap();
        // Signal only once the trap is installed.
        while log_tail(&log, 1).as_deref() != Some("ready") {
            tokio::task::yield_now().await;
        }
        let status = terminate(&mut child, Duration::from_millis(300)).await.unwrap();
        assert_eq!(describe_exit(status), "killed by signal 9 (SIGKILL)");
    }
}
