//! Unlocking an account's store through bitmaskctl and bitmaskd.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::time::Duration;

use bitmask_testkit::{World, free_port, grpcurl, text, wait_until};

fn add(world: &World) {
    let (imap, smtp) = (free_port().to_string(), free_port().to_string());
    world.ctl_json(&["account", "add", "alice@example.org", "--imap-port", &imap, "--smtp-port", &smtp]);
}

fn store_state(world: &World) -> String {
    let output = grpcurl(&world.socket("alice@example.org", "store"), &["bitmask.store.v1.Store/GetState"]);
    text(&output)
}

#[test]
fn the_first_start_creates_the_store_and_a_wrong_passphrase_changes_nothing() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add(&world);
    let passphrase_file = world.path().join("passphrase");
    std::fs::write(&passphrase_file, "correct horse battery\n").unwrap();
    let file = passphrase_file.to_str().unwrap();

    let started = world.ctl_json(&["account", "start", "alice@example.org", "--passphrase-file", file]);
    let code = started["recovery_code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 39, "{code}");
    assert_eq!(started["locked"], false);
    assert!(store_state(&world).contains("STATE_UNLOCKED"), "{}", store_state(&world));
    // The first unlock made the account key.
    let keys = grpcurl(&world.socket("alice@example.org", "keys"), &["bitmask.keys.v1.Keys/ListKeys"]);
    assert!(
        text(&keys).contains("\"hasSecret\": true") && text(&keys).contains("alice@example.org"),
        "{}",
        text(&keys)
    );
    // The table says so too, and a second start changes nothing.
    let table = String::from_utf8(world.ctl(&["status"]).stdout).unwrap();
    assert!(table.contains("store unlocked"), "{table}");
    world.ctl_json(&["account", "stop", "alice@example.org"]);

    // A wrong passphrase: a clear error, and the account is stopped again.
    let wrong = world.ctl_with_input(&["account", "start", "alice@example.org"], "wrong passphrase\n");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("wrong passphrase"), "{}", text(&wrong));
    assert_eq!(world.ctl_json(&["status", "alice@example.org"])[0]["state"], "stopped");

    // The right one on standard input: no new recovery code.
    let started = world.ctl_with_input(&["--json", "account", "start", "alice@example.org"], "correct horse battery\n");
    assert!(started.status.success(), "{}", text(&started));
    let started: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    assert_eq!(started["state"], "running");
    assert!(started.get("recovery_code").is_none());

    // No passphrase at all is a usage error, and nothing starts.
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let none = world.ctl_with_input(&["account", "start", "alice@example.org"], "");
    assert_eq!(none.status.code(), Some(64), "{}", text(&none));
    assert!(text(&none).contains("no passphrase given"), "{}", text(&none));
    assert_eq!(world.ctl_json(&["status", "alice@example.org"])[0]["state"], "stopped");
    // The passphrase never reached a log.
    for entry in walk(&world.home) {
        let content = std::fs::read(&entry).unwrap();
        assert!(!content.windows(15).any(|w| w == b"correct horse b"), "{} holds the passphrase", entry.display());
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn a_store_restarted_after_a_crash_is_unlocked_again() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add(&world);
    world.ctl_with_input(&["account", "start", "alice@example.org"], "correct horse battery\n");
    assert!(store_state(&world).contains("STATE_UNLOCKED"));
    let store = world.service_status("alice@example.org", "store");
    let pid = store["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_until(Duration::from_secs(5), "the store is serving again", || {
        let store = world.service_status("alice@example.org", "store");
        store["state"] == "serving" && store["pid"].as_u64() != Some(pid as u64)
    });
    assert!(store_state(&world).contains("STATE_UNLOCKED"), "{}", store_state(&world));
}

#[test]
fn the_passphrase_changes_with_the_old_one_or_the_recovery_code() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    add(&world);
    let started = world.ctl_with_input(&["--json", "account", "start", "alice@example.org"], "first passphrase\n");
    let started: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    let code = started["recovery_code"].as_str().unwrap().to_owned();

    let wrong = world.ctl_with_input(&["account", "passphrase", "alice@example.org"], "not it\nsecond passphrase\n");
    assert_eq!(wrong.status.code(), Some(1), "{}", text(&wrong));
    assert!(text(&wrong).contains("wrong passphrase"), "{}", text(&wrong));
    let changed =
        world.ctl_with_input(&["account", "passphrase", "alice@example.org"], "first passphrase\nsecond passphrase\n");
    assert!(changed.status.success(), "{}", text(&changed));
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let old = world.ctl_with_input(&["account", "start", "alice@example.org"], "first passphrase\n");
    assert!(text(&old).contains("wrong passphrase"), "{}", text(&old));
    let new = world.ctl_with_input(&["account", "start", "alice@example.org"], "second passphrase\n");
    assert!(new.status.success(), "{}", text(&new));

    // Lost the passphrase: the recovery code sets a new one.
    let input = format!("{code}\nthird passphrase\n");
    let recovered = world.ctl_with_input(&["account", "passphrase", "alice@example.org", "--recovery-code"], &input);
    assert!(recovered.status.success(), "{}", text(&recovered));
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let third = world.ctl_with_input(&["account", "start", "alice@example.org"], "third passphrase\n");
    assert!(third.status.success(), "{}", text(&third));
    // A stopped account's passphrase cannot change: its store is not running.
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let stopped = world.ctl_with_input(&["account", "passphrase", "alice@example.org"], "third passphrase\nfourth\n");
    assert!(text(&stopped).contains("start it first"), "{}", text(&stopped));
}

#[test]
fn bitmaskctl_keys_lists_exports_and_refuses_bad_imports() {
    let mut world = World::new();
    // WKD for example.org goes to a closed port, not to the Internet.
    let closed = bitmask_testkit::free_port();
    let resolve = format!("openpgpkey.example.org=127.0.0.1:{closed},example.org=127.0.0.1:{closed}");
    world.env.push(("BITMASK_KEYS_RESOLVE".into(), resolve));
    let _daemon = world.bitmaskd(&[]);
    add(&world);
    let started = world.ctl_with_input(&["account", "start", "alice@example.org"], "correct horse battery\n");
    assert!(started.status.success(), "{}", text(&started));

    let listed = world.ctl_json(&["keys", "list", "alice@example.org"]);
    assert_eq!(listed[0]["addresses"][0], "alice@example.org");
    assert_eq!(listed[0]["source"], "generated");
    assert_eq!(listed[0]["validation"], "fingerprint");
    assert_eq!(listed[0]["has_secret"], true);
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap().to_owned();
    let table = String::from_utf8(world.ctl(&["keys", "list", "alice@example.org"]).stdout).unwrap();
    assert!(table.contains(&fingerprint) && table.contains(" days") && table.contains("generated"), "{table}");

    let public = world.ctl(&["keys", "export", "alice@example.org"]);
    let public = String::from_utf8(public.stdout).unwrap();
    assert!(public.contains("BEGIN PGP PUBLIC KEY BLOCK") && !public.contains("PRIVATE"), "{public}");
    let secret = String::from_utf8(world.ctl(&["keys", "export", "alice@example.org", "--secret"]).stdout).unwrap();
    assert!(secret.contains("BEGIN PGP PRIVATE KEY BLOCK"));

    // Its own public key again: the same key, nothing changes.
    let file = world.path().join("alice.asc");
    std::fs::write(&file, &public).unwrap();
    let again = world.ctl(&["keys", "import", "alice@example.org", file.to_str().unwrap()]);
    assert!(again.status.success() && text(&again).contains(&format!("imported {fingerprint}")), "{}", text(&again));
    std::fs::write(&file, "garbage").unwrap();
    let garbage = world.ctl(&["keys", "import", "alice@example.org", file.to_str().unwrap()]);
    assert_eq!(garbage.status.code(), Some(64), "{}", text(&garbage));
    assert!(text(&garbage).contains("not an OpenPGP key"), "{}", text(&garbage));
    let own = world.ctl(&["keys", "delete", "alice@example.org", &fingerprint]);
    assert!(text(&own).contains("cannot be deleted"), "{}", text(&own));
    let fetch = world.ctl(&["keys", "fetch", "alice@example.org", "bob@example.org"]);
    assert_eq!(fetch.status.code(), Some(1), "{}", text(&fetch));
    assert!(text(&fetch).contains("no key found for bob@example.org; asked: provider directory"), "{}", text(&fetch));
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    let stopped = world.ctl(&["keys", "list", "alice@example.org"]);
    assert!(text(&stopped).contains("start the account first"), "{}", text(&stopped));
}

/// One IMAP command on an open connection: the line of its tagged answer.
fn imap_command(connection: &mut std::io::BufReader<std::net::TcpStream>, tag: &str, command: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    connection.get_mut().write_all(format!("{tag} {command}\r\n").as_bytes()).unwrap();
    loop {
        let mut line = String::new();
        assert!(connection.read_line(&mut line).unwrap() > 0, "the gateway closed the connection");
        if line.starts_with(&format!("{tag} ")) {
            return line.trim_end().to_owned();
        }
    }
}

#[test]
fn a_locked_account_refuses_every_imap_login_and_accepts_the_token_once_unlocked() {
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let imap = free_port();
    let (imap_port, smtp) = (imap.to_string(), free_port().to_string());
    world.ctl_json(&["account", "add", "alice@example.org", "--imap-port", &imap_port, "--smtp-port", &smtp]);
    let passphrase_file = world.path().join("passphrase");
    std::fs::write(&passphrase_file, "correct horse battery\n").unwrap();
    let file = passphrase_file.to_str().unwrap();
    world.ctl_json(&["account", "start", "alice@example.org", "--passphrase-file", file]);
    let token = world.ctl_json(&["mail", "token", "alice@example.org"])["token"].as_str().unwrap().to_owned();
    world.ctl_json(&["account", "stop", "alice@example.org"]);
    world.ctl_json(&["account", "start", "--locked", "alice@example.org"]);
    assert!(store_state(&world).contains("STATE_LOCKED"), "{}", store_state(&world));

    // Python's imaplib: an empty password, a wrong one, the right one and an
    // empty AUTHENTICATE PLAIN are all refused as [UNAVAILABLE].
    let script = format!(
        "import imaplib\n\
         def attempt(login):\n    m = imaplib.IMAP4('127.0.0.1', {imap})\n    try:\n        login(m)\n        print('LOGGED IN')\n    except imaplib.IMAP4.error as error:\n        print(error)\n\
         attempt(lambda m: m.login('alice@example.org', ''))\n\
         attempt(lambda m: m.login('alice@example.org', 'wrong'))\n\
         attempt(lambda m: m.login('alice@example.org', '{token}'))\n\
         attempt(lambda m: m.authenticate('PLAIN', lambda _: b'\\x00alice@example.org\\x00'))\n"
    );
    let python = bitmask_testkit::workspace_root().join(".venv/bin/python");
    let output = std::process::Command::new(python).args(["-c", &script]).output().unwrap();
    let printed = text(&output);
    assert!(output.status.success(), "{printed}");
    assert!(!printed.contains("LOGGED IN"), "{printed}");
    assert_eq!(printed.matches("UNAVAILABLE").count(), 4, "{printed}");

    // A connection opened while locked logs in once the account is unlocked.
    let stream = std::net::TcpStream::connect(("127.0.0.1", imap)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut connection = std::io::BufReader::new(stream);
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut connection, &mut greeting).unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let refused = imap_command(&mut connection, "a1", &format!("LOGIN alice@example.org {token}"));
    assert!(refused.starts_with("a1 NO [UNAVAILABLE]"), "{refused}");
    world.ctl_json(&["account", "start", "alice@example.org", "--passphrase-file", file]);
    let empty = imap_command(&mut connection, "a2", "LOGIN alice@example.org \"\"");
    assert!(empty.starts_with("a2 NO [AUTHENTICATIONFAILED]"), "{empty}");
    let accepted = imap_command(&mut connection, "a3", &format!("LOGIN alice@example.org {token}"));
    assert!(accepted.starts_with("a3 OK"), "{accepted}");
}
