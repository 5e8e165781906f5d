//! bitmaskd, its four services per account and bitmaskctl, as real processes.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::collections::{BTreeSet, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bitmask_testkit::{World, free_port, grpcurl, process_alive, text, wait_until};
use serde_json::Value;

const SERVICES: [(&str, &str, &str); 4] = [
    ("store", "bitmask-store", "bitmask.store.v1.Store"),
    ("keys", "bitmask-keys", "bitmask.keys.v1.Keys"),
    ("imap", "bitmask-imap", "bitmask.mail.v1.Mail"),
    ("smtp", "bitmask-smtp", "bitmask.smtp.v1.Smtp"),
];

fn add_account(world: &World, address: &str) {
    let (imap, smtp) = (free_port().to_string(), free_port().to_string());
    let added = world.ctl_json(&["account", "add", address, "--imap-port", &imap, "--smtp-port", &smtp]);
    assert_eq!(added["address"], address);
    assert_eq!(added["imap_port"].to_string(), imap);
}

fn start(world: &World, address: &str) -> Value {
    let status = world.ctl_json(&["account", "start", "--locked", address]);
    assert_eq!(status["state"], "running", "{status:#}");
    status
}

fn pids(status: &Value) -> Vec<u32> {
    status["services"].as_array().unwrap().iter().map(|service| service["pid"].as_u64().unwrap() as u32).collect()
}

fn all_pids(world: &World) -> Vec<u32> {
    world.ctl_json(&["status"]).as_array().unwrap().iter().flat_map(pids).collect()
}

#[test]
fn two_accounts_run_eight_services_that_answer_grpcurl() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    for address in ["alice@example.org", "bob@example.org"] {
        add_account(&world, address);
        start(&world, address);
    }

    let status = world.ctl_json(&["status"]);
    let accounts = status.as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    let mut seen_pids = HashSet::new();
    for account in accounts {
        assert_eq!(account["state"], "running");
        let address = account["address"].as_str().unwrap();
        for (service, (name, binary, grpc_service)) in account["services"].as_array().unwrap().iter().zip(SERVICES) {
            assert_eq!(service["service"], name);
            assert_eq!(service["state"], "serving");
            assert_eq!(service["restarts"], 0);
            let pid = service["pid"].as_u64().unwrap() as u32;
            assert!(seen_pids.insert(pid), "pid {pid} appears twice");
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            assert_eq!(comm.trim(), binary);
            let socket = world.socket(address, name);
            assert_eq!(service["socket"], socket.display().to_string());

            let listed = grpcurl(&socket, &["list"]);
            assert!(listed.status.success(), "{}", text(&listed));
            let listed: BTreeSet<&str> = std::str::from_utf8(&listed.stdout).unwrap().lines().collect();
            let expected: BTreeSet<&str> = [
                grpc_service,
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            .into();
            assert_eq!(listed, expected, "services listed on {}", socket.display());

            let health = grpcurl(&socket, &["grpc.health.v1.Health/Check"]);
            assert!(text(&health).contains("\"SERVING\""), "{}", text(&health));
            let described = grpcurl(&socket, &["describe", grpc_service]);
            assert!(text(&described).contains("is a service"), "{}", text(&described));
        }
    }
    assert_eq!(seen_pids.len(), 8);

    // The core socket serves the Core API the same way.
    let listed = grpcurl(&world.core_socket(), &["list"]);
    assert!(text(&listed).contains("bitmask.core.v1.Core"), "{}", text(&listed));
    // A call that cannot be answered yet (the store has no secrets) fails
    // with the reason, never with a fake success (an empty queue).
    let smtp = world.socket("alice@example.org", "smtp");
    let queue = grpcurl(&smtp, &["bitmask.smtp.v1.Smtp/ListQueue"]);
    assert!(!queue.status.success());
    assert!(text(&queue).contains("FailedPrecondition"), "{}", text(&queue));
}

#[test]
fn a_killed_service_is_back_within_two_seconds_and_status_shows_the_restart() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");
    start(&world, "alice@example.org");
    let keys = world.service_status("alice@example.org", "keys");
    let old_pid = keys["pid"].as_u64().unwrap() as u32;

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old_pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let mut restarted = Value::Null;
    wait_until(Duration::from_secs(2), "keys is SERVING again", || {
        restarted = world.service_status("alice@example.org", "keys");
        restarted["state"] == "serving" && restarted["pid"].as_u64() != Some(old_pid.into())
    });
    assert_eq!(restarted["restarts"], 1);
    assert_eq!(restarted["last_exit"], "killed by signal 9 (SIGKILL)");
    assert!(!process_alive(old_pid));
    // The new process answers on the same socket.
    let health = grpcurl(&world.socket("alice@example.org", "keys"), &["grpc.health.v1.Health/Check"]);
    assert!(text(&health).contains("\"SERVING\""), "{}", text(&health));
    // The table shows it too.
    let table = String::from_utf8(world.ctl(&["status"]).stdout).unwrap();
    let keys_row = table.lines().find(|line| line.trim_start().starts_with("keys")).unwrap();
    assert!(keys_row.contains("serving") && keys_row.contains("killed by signal 9"), "{table}");
    // The others were left alone.
    for service in ["store", "imap", "smtp"] {
        assert_eq!(world.service_status("alice@example.org", service)["restarts"], 0);
    }
}

/// A service dir where `bitmask-keys` fails at once and the others are real.
fn service_dir_with_broken_keys(world: &World) -> std::path::PathBuf {
    let dir = world.path().join("bin");
    std::fs::create_dir(&dir).unwrap();
    for (_, binary, _) in SERVICES {
        if binary == "bitmask-keys" {
            let script = dir.join(binary);
            std::fs::write(&script, "#!/bin/sh\necho \"keys: cannot open the key ring\" >&2\nexit 3\n").unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            std::os::unix::fs::symlink(bitmask_testkit::bin(binary), dir.join(binary)).unwrap();
        }
    }
    dir
}

#[test]
fn a_service_that_crashes_at_once_is_retried_with_backoff_and_reported_failing() {
    let world = World::new();
    let service_dir = service_dir_with_broken_keys(&world);
    let _daemon = world.bitmaskd(&["--service-dir", service_dir.to_str().unwrap(), "--start-timeout", "1"]);
    add_account(&world, "alice@example.org");

    let started = Instant::now();
    let output = world.ctl(&["account", "start", "--locked", "alice@example.org"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let message = text(&output);
    assert!(message.contains("keys of alice@example.org did not become SERVING within 1s"), "{message}");
    assert!(message.contains("exit status 3") && message.contains("cannot open the key ring"), "{message}");

    // Failures in a row: 200 ms, 400 ms, 800 ms, 1.6 s... before each retry.
    let mut keys = Value::Null;
    wait_until(Duration::from_secs(10), "keys is reported failing", || {
        keys = world.service_status("alice@example.org", "keys");
        keys["state"] == "failing"
    });
    assert_eq!(keys["last_exit"], "exit status 3");
    assert!(keys["message"].as_str().unwrap().contains("cannot open the key ring"), "{keys:#}");
    let status = world.ctl_json(&["status", "alice@example.org"]);
    assert_eq!(status[0]["state"], "degraded");
    let table = String::from_utf8(world.ctl(&["status"]).stdout).unwrap();
    assert!(table.contains("failing") && table.contains("retry in"), "{table}");

    wait_until(Duration::from_secs(15), "keys was restarted four times", || {
        world.service_status("alice@example.org", "keys")["restarts"].as_u64().unwrap() >= 4
    });
    // Four restarts take at least 0.2 + 0.4 + 0.8 + 1.6 s of back-off: no busy loop.
    assert!(started.elapsed() >= Duration::from_millis(3000), "restarted 4 times in {:?}", started.elapsed());
    // The store is unaffected, and a failing account still stops at once.
    assert_eq!(world.service_status("alice@example.org", "store")["state"], "serving");
    let stopped = world.ctl_json(&["account", "stop", "alice@example.org"]);
    assert_eq!(stopped["state"], "stopped");
}

#[test]
fn stop_ends_the_processes_and_removes_the_sockets() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");
    add_account(&world, "bob@example.org");
    let alice = pids(&start(&world, "alice@example.org"));
    let bob = pids(&start(&world, "bob@example.org"));

    let stopped = world.ctl_json(&["account", "stop", "alice@example.org"]);
    assert_eq!(stopped["state"], "stopped");
    for pid in alice {
        assert!(!process_alive(pid), "pid {pid} survived the stop");
    }
    assert!(!world.runtime_dir.join("alice@example.org").exists(), "alice's socket directory is still there");
    // Bob is untouched.
    assert_eq!(pids(&world.ctl_json(&["status", "bob@example.org"])[0]), bob);
    for (service, _, _) in SERVICES {
        assert!(world.socket("bob@example.org", service).exists());
    }
    // A stopped account starts again.
    start(&world, "alice@example.org");
}

#[test]
fn no_service_survives_a_killed_bitmaskd() {
    let world = World::new();
    let mut daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");
    add_account(&world, "bob@example.org");
    start(&world, "alice@example.org");
    start(&world, "bob@example.org");
    let services = all_pids(&world);
    assert_eq!(services.len(), 8);

    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    wait_until(Duration::from_secs(5), "every service process is gone", || {
        services.iter().all(|&pid| !process_alive(pid))
    });

    // A new bitmaskd replaces the stale sockets and starts the accounts again.
    let _daemon = world.bitmaskd(&[]);
    start(&world, "alice@example.org");
}

#[test]
fn sigterm_stops_bitmaskd_and_its_services_cleanly() {
    let world = World::new();
    let mut daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");
    let services = pids(&start(&world, "alice@example.org"));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = daemon.0.wait().unwrap();
    assert!(status.success(), "bitmaskd exited with {status}");
    for pid in services {
        assert!(!process_alive(pid));
    }
    assert!(!world.core_socket().exists());
    assert!(!world.runtime_dir.join("alice@example.org").exists());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn sockets_are_private_and_other_users_are_refused() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");
    start(&world, "alice@example.org");

    assert_eq!(mode(&world.runtime_dir), 0o700);
    assert_eq!(mode(&world.core_socket()), 0o600);
    let account_dir = world.runtime_dir.join("alice@example.org");
    assert_eq!(mode(&account_dir), 0o700);
    for (service, _, _) in SERVICES {
        assert_eq!(mode(&world.socket("alice@example.org", service)), 0o600, "{service}");
    }

    // Another user cannot even reach the sockets. (That a peer of another
    // uid is refused by the server itself, should it get past the
    // permissions, is tested in bitmask-runtime.)
    if nix::unistd::geteuid().is_root() {
        std::fs::set_permissions(world.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for socket in [world.core_socket(), world.socket("alice@example.org", "store")] {
            let output = std::process::Command::new("/usr/bin/python3")
                .args(["-c", "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('refused')"])
                .arg(&socket)
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap();
            assert_eq!(text(&output).trim(), "refused", "{}", socket.display());
        }
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_a_non_zero_exit() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");

    let cases: [(&[&str], i32, &str); 7] = [
        (&["account", "start", "nobody@example.org"], 1, "no account nobody@example.org"),
        (&["account", "stop", "nobody@example.org"], 1, "no account nobody@example.org"),
        (&["account", "remove", "nobody@example.org"], 1, "no account nobody@example.org"),
        (&["account", "add", "alice@example.org"], 1, "account alice@example.org exists already"),
        (&["account", "add", "not-an-address"], 64, "must have the form local@domain"),
        (&["account", "add", "bob@example.org", "--relay", "nowhere"], 64, "must be HOST:PORT"),
        (&["status", "nobody@example.org"], 1, "no account nobody@example.org"),
    ];
    for (args, code, message) in cases {
        let output = world.ctl(args);
        assert_eq!(output.status.code(), Some(code), "bitmaskctl {args:?}: {}", text(&output));
        assert!(text(&output).contains(message), "bitmaskctl {args:?}: {}", text(&output));
    }

    // A port already in use, at add and at start.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let output = world.ctl(&["account", "add", "bob@example.org", "--imap-port", &port]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains(&format!("imap port {port} on 127.0.0.1 is already in use")), "{}", text(&output));
    let alice_imap = world.ctl_json(&["account", "list"])[0]["imap_port"].as_u64().unwrap();
    let output = world.ctl(&["account", "add", "bob@example.org", "--smtp-port", &alice_imap.to_string()]);
    assert!(text(&output).contains("already used by account alice@example.org"), "{}", text(&output));
    let held = std::net::TcpListener::bind(("127.0.0.1", alice_imap as u16)).unwrap();
    let output = world.ctl(&["account", "start", "--locked", "alice@example.org"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("already in use by another program"), "{}", text(&output));
    assert_eq!(world.ctl_json(&["status", "alice@example.org"])[0]["state"], "stopped");
    drop(held);

    // Removing a running account is refused; a stopped one goes.
    start(&world, "alice@example.org");
    let output = world.ctl(&["account", "remove", "alice@example.org"]);
    assert!(text(&output).contains("is running: stop it first"), "{}", text(&output));
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let removed = world.ctl_json(&["account", "remove", "alice@example.org"]);
    assert_eq!(removed["removed"], true);
    assert_eq!(world.ctl_json(&["account", "list"]), serde_json::json!([]));
}

#[test]
fn bitmaskctl_without_bitmaskd_exits_69() {
    let world = World::new();
    let output = world.ctl(&["status"]);
    assert_eq!(output.status.code(), Some(69));
    assert!(text(&output).contains("bitmaskd is not running"), "{}", text(&output));
}

#[test]
fn a_bad_config_file_stops_bitmaskd_with_exit_64() {
    let world = World::new();
    std::fs::create_dir_all(&world.home).unwrap();
    let config = world.home.join("config.toml");
    for (content, message) in [
        ("[[accounts]]\naddress = 'alice@example.org'\n", "missing field"),
        ("accounts = 3\n", "invalid type"),
        ("[[accounts]]\naddress = 'x'\nimap_port = 1\nsmtp_port = 2\n", "local@domain"),
    ] {
        std::fs::write(&config, content).unwrap();
        let mut daemon = world.spawn_bitmaskd(&[]);
        let status = daemon.0.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(daemon.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(64), "{content:?}: {stderr}");
        assert!(stderr.contains(message) && stderr.contains("config.toml"), "{content:?}: {stderr}");
        assert!(!world.core_socket().exists(), "no socket is bound before the config is checked");
    }
    // Unreadable: a directory where the file should be.
    std::fs::remove_file(&config).unwrap();
    std::fs::create_dir(&config).unwrap();
    let mut daemon = world.spawn_bitmaskd(&[]);
    assert_eq!(daemon.0.wait().unwrap().code(), Some(64));

    // A second bitmaskd on the same runtime dir is refused, and the first keeps working.
    std::fs::remove_dir(&config).unwrap();
    let _first = world.bitmaskd(&[]);
    let mut second = world.spawn_bitmaskd(&[]);
    assert_eq!(second.0.wait().unwrap().code(), Some(69));
    assert!(world.ctl(&["status"]).status.success());
}

#[test]
fn the_config_survives_a_restart_of_bitmaskd() {
    let world = World::new();
    let daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");
    let before = world.ctl_json(&["account", "list"]);
    drop(daemon);
    let _daemon = world.bitmaskd(&[]);
    assert_eq!(world.ctl_json(&["account", "list"]), before);
}

#[test]
fn status_watch_follows_the_account_through_start_and_stop() {
    use std::io::BufRead as _;
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add_account(&world, "alice@example.org");

    let mut command = std::process::Command::new(bitmask_testkit::bin("bitmaskctl"));
    command.arg("--home").arg(&world.home).arg("--runtime-dir").arg(&world.runtime_dir);
    command.args(["status", "--watch", "alice@example.org"]).stdout(std::process::Stdio::piped());
    let mut watch = bitmask_testkit::KillOnDrop(command.spawn().unwrap());
    let mut lines = std::io::BufReader::new(watch.0.stdout.take().unwrap()).lines();
    let mut wait_for_line = |wanted: &str| {
        for line in lines.by_ref() {
            if line.unwrap().starts_with(wanted) {
                return;
            }
        }
        panic!("bitmaskctl status --watch ended before printing {wanted:?}");
    };
    // The current state first, then each change.
    wait_for_line("alice@example.org  stopped");
    start(&world, "alice@example.org");
    wait_for_line("alice@example.org  running");
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    wait_for_line("alice@example.org  stopping");
    wait_for_line("alice@example.org  stopped");
}
