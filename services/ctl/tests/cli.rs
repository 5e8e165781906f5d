#![allow(clippy::unwrap_used)] // a panic in a test is a failed test
use bitmask_testkit::{World, bin, text};

#[test]
fn version_and_usage_errors() {
    let version = std::process::Command::new(bin("bitmaskctl")).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(text(&version).starts_with("bitmaskctl "), "{}", text(&version));

    let world = World::new();
    for args in [
        &["account"][..],
        &["account", "frobnicate"],
        &["account", "add"],
        &["account", "add", "a@b", "--imap-port", "99999"],
    ] {
        let output = world.ctl(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let message = text(&output);
        assert!(message.contains("Usage:") || message.contains("try '--help'"), "{args:?}: {message}");
    }
}
