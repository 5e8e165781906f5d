//! The Unix-socket server and client: permissions, stale sockets, peers of
//! another uid, health and reflection, graceful shutdown.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::Path;

use bitmask_runtime::client::{check_health, connect_unix};
use bitmask_runtime::server::{GrpcServer, ServerError, bind_unix};
use tokio::sync::oneshot;
use tonic_health::pb::health_check_response::ServingStatus;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn bind_makes_a_private_directory_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("run/alice@example.org");
    std::fs::create_dir_all(&sockets).unwrap();
    std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = bind_unix(&sockets.join("store.sock")).unwrap();
    assert_eq!(mode(&sockets), 0o700, "an existing directory is tightened");
    assert_eq!(mode(socket.path()), 0o600);
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s/keys.sock");
    std::fs::create_dir(dir.path().join("s")).unwrap();
    // A socket file left by a process that died: nobody listens.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let live = bind_unix(&path).unwrap();
    // Now someone listens: a second server must not steal the socket.
    assert!(matches!(bind_unix(&path), Err(ServerError::SocketInUse { .. })));
    assert!(path.exists());
    drop(live);

    let file = dir.path().join("s/not-a-socket");
    std::fs::write(&file, "data").unwrap();
    assert!(matches!(bind_unix(&file), Err(ServerError::NotASocket { .. })));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}

#[tokio::test]
async fn paths_that_cannot_be_a_socket_are_refused_clearly() {
    let long = Path::new("/tmp").join("x".repeat(120)).join("store.sock");
    let error = bind_unix(&long).unwrap_err();
    assert!(error.to_string().contains("at most 107 fit"), "{error}");

    if nix::unistd::geteuid().is_root() {
        let dir = tempfile::tempdir().unwrap();
        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
        let error = bind_unix(&foreign.join("s.sock")).unwrap_err();
        assert!(matches!(error, ServerError::SocketDirectoryNotOurs { owner: 65534, .. }), "{error}");
    }
}

/// Serves health and reflection only, until the returned sender fires.
async fn serve(path: &Path) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), ServerError>>) {
    let socket = bind_unix(path).unwrap();
    let server = GrpcServer::new(&[]).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(socket, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test]
async fn serves_health_until_shutdown_then_removes_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/core.sock");
    let (stop, task) = serve(&path).await;
    let channel = connect_unix(&path).await.unwrap();
    assert_eq!(check_health(channel.clone(), "").await.unwrap(), ServingStatus::Serving);
    let unknown = check_health(channel, "bitmask.nothing.v1.Nothing").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!path.exists(), "the socket is removed on shutdown");
    assert!(connect_unix(&path).await.is_err());
}

/// What a peer sees after sending the HTTP/2 preface: "answered", "closed"
/// or "refused" (no permission to connect at all).
fn probe_as(uid: u32, socket: &Path) -> String {
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused"); sys.exit()
s.settimeout(5)
try:
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    data = s.recv(64)
except (ConnectionResetError, BrokenPipeError, socket.timeout):
    data = b""
print("answered" if data else "closed")
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn a_peer_of_another_uid_is_refused_even_past_the_permissions() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run a peer under another uid");
        return;
    }
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("run/store.sock");
    let (stop, task) = serve(&path).await;
    let ours = nix::unistd::geteuid().as_raw();
    let probe = |uid: u32| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || probe_as(uid, &path))
    };

    // As deployed: the directory and socket keep other users out.
    assert_eq!(probe(65534).await.unwrap(), "refused");
    // Open the permissions wide: the server itself must still close the connection.
    std::fs::set_permissions(path.parent().unwrap(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(probe(65534).await.unwrap(), "closed");
    assert_eq!(probe(ours).await.unwrap(), "answered");
    // And the server goes on serving its own user.
    let channel = connect_unix(&path).await.unwrap();
    assert_eq!(check_health(channel, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(std::fs::metadata(&path).unwrap().uid(), ours);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
