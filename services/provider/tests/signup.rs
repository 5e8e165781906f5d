//! Sign-up policies through the real binary: `init --signup
//! open|invite|closed` (invite by default) and `bitmask-provider invite`.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod common;

use bitmask_testkit::text;
use common::{Provider, provider_command};
use tonic::Code;

/// `bitmask-provider invite --dir DIR`: the code it prints.
fn invite(provider: &Provider) -> String {
    let output = provider_command(&["invite", "--dir", provider.dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let code = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(code.len() >= 20 && !code.contains(char::is_whitespace), "{code:?}");
    code
}

/// Issue 14: a new provider signs up by invitation only; each code once.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_provider_signs_up_by_invite_only() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("provider");
    let init = provider_command(&["init", "--domain", "example.org", "--dir", dir.to_str().unwrap()]);
    assert!(init.status.success(), "{}", text(&init));
    let settings = std::fs::read_to_string(dir.join("provider.toml")).unwrap();
    assert!(settings.contains("signup = \"invite\""), "{settings}");

    let provider = Provider::start(&["--signup", "invite"]);
    let refused = provider.sign_up("alice@example.org", "pw").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("invite code"), "{refused:?}");
    let bogus = provider.sign_up_invited("alice@example.org", "pw", "not-a-code").await.unwrap_err();
    assert_eq!(bogus.code(), Code::PermissionDenied, "{bogus:?}");

    let code = invite(&provider);
    provider.sign_up_invited("alice@example.org", "pw", &code).await.unwrap();
    provider.login("alice@example.org", "pw").await.unwrap();
    let again = provider.sign_up_invited("bob@example.org", "pw", &code).await.unwrap_err();
    assert_eq!(again.code(), Code::PermissionDenied, "each code once: {again:?}");

    // A code spent on an address that is taken is not used up; nor is a
    // stranger told an address is taken without a code.
    let second = invite(&provider);
    let taken = provider.sign_up_invited("alice@example.org", "other", &second).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let strange = provider.sign_up("alice@example.org", "other").await.unwrap_err();
    assert_eq!(strange.code(), Code::PermissionDenied, "{strange:?}");
    provider.sign_up_invited("bob@example.org", "pw", &second).await.unwrap();
    // Codes are compared without case, spaces or dashes: as people copy them.
    let third = invite(&provider);
    provider.sign_up_invited("carol@example.org", "pw", &format!(" {} ", third.to_uppercase())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_and_open_sign_up() {
    let closed = Provider::start(&["--signup", "closed"]);
    let code = invite(&closed);
    let refused = closed.sign_up_invited("alice@example.org", "pw", &code).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("no new accounts"), "{refused:?}");

    let open = Provider::start(&["--signup", "open"]);
    open.sign_up("alice@example.org", "pw").await.unwrap();
    let bad = provider_command(&["init", "--domain", "example.org", "--dir", "/tmp/x", "--signup", "sometimes"]);
    assert!(!bad.status.success());
}
