//! Accounts through the real binary: SRP sign-up and login from a Rust
//! client (bitmask-auth), the session on the sync endpoint and the key
//! directory, client certificates, bad input, and WKD over HTTPS.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod common;

use bitmask_auth::{ClientLogin, LoginSecret};
use bitmask_proto::provider::v1 as pb;
use bitmask_proto::provider::v1::accounts_client::AccountsClient;
use bitmask_proto::sync::v1 as sync_pb;
use bitmask_testkit::text;
use common::Provider;
use tonic::Code;

const ALICE: &str = "alice@example.org";

#[tokio::test(flavor = "multi_thread")]
async fn sign_up_log_in_and_use_the_session() {
    let provider = Provider::start(&[]);

    provider.sign_up(ALICE, "correct horse").await.unwrap();
    let taken = provider.sign_up("Alice@Example.org", "other").await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert!(taken.message().contains("alice@example.org is taken"), "{taken:?}");
    let elsewhere = provider.sign_up("alice@example.net", "pw").await.unwrap_err();
    assert_eq!(elsewhere.code(), Code::InvalidArgument, "{elsewhere:?}");
    assert!(elsewhere.message().contains("not an address of this provider"), "{elsewhere:?}");

    // An address without an account is refused like a wrong passphrase.
    let unknown = provider.login("nobody@example.org", "pw").await.unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert_eq!(unknown.message(), "wrong passphrase");
    let wrong = provider.login(ALICE, "correct horse!").await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);
    assert_eq!(wrong.message(), "wrong passphrase");
    // The address's case does not matter; the passphrase's does.
    let token = provider.login("ALICE@example.org", "correct horse").await.unwrap();

    // The token opens the sync endpoint; an invalid one does not.
    let reply = provider.sync(&token).await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap();
    assert!(reply.into_inner().items.is_empty());
    let refused =
        provider.sync("not-a-token").await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = provider.sync("").await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Logout ends the session, and only that one.
    let second = provider.login(ALICE, "correct horse").await.unwrap();
    AccountsClient::new(provider.channel(&token).await).logout(pb::LogoutRequest {}).await.unwrap();
    let ended = provider.sync(&token).await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap_err();
    assert_eq!(ended.code(), Code::Unauthenticated);
    provider.sync(&second).await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap();
    let again = AccountsClient::new(provider.channel(&token).await).logout(pb::LogoutRequest {}).await.unwrap_err();
    assert_eq!(again.code(), Code::Unauthenticated);

    // Accounts survive a restart (sessions do not: they are in memory).
    let mut provider = provider;
    drop(provider.process.take());
    provider.serve();
    provider.login(ALICE, "correct horse").await.unwrap();
    let gone = provider.sync(&second).await.list_incoming(sync_pb::ListIncomingRequest { limit: 0 }).await.unwrap_err();
    assert_eq!(gone.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_srp_values_and_login_ids_are_refused() {
    let provider = Provider::start(&[]);
    provider.sign_up(ALICE, "pw").await.unwrap();
    let mut accounts = provider.accounts().await;

    let bad_salt = pb::SignUpRequest {
        address: "bob@example.org".into(),
        srp_salt: vec![1; 4],
        srp_verifier: vec![1; 256],
        ..Default::default()
    };
    assert_eq!(accounts.sign_up(bad_salt).await.unwrap_err().code(), Code::InvalidArgument);
    let zero = pb::SignUpRequest {
        address: "bob@example.org".into(),
        srp_salt: vec![1; 32],
        srp_verifier: vec![0; 256],
        ..Default::default()
    };
    assert_eq!(accounts.sign_up(zero).await.unwrap_err().code(), Code::InvalidArgument);
    let huge = pb::SignUpRequest {
        address: "bob@example.org".into(),
        srp_salt: vec![1; 32],
        srp_verifier: vec![1; 4096],
        ..Default::default()
    };
    assert_eq!(accounts.sign_up(huge).await.unwrap_err().code(), Code::InvalidArgument);
    let not_an_address = pb::SignUpRequest {
        address: "bob".into(),
        srp_salt: vec![1; 32],
        srp_verifier: vec![1; 256],
        ..Default::default()
    };
    assert_eq!(accounts.sign_up(not_an_address).await.unwrap_err().code(), Code::InvalidArgument);

    // A = 0 would let anyone in: refused.
    let zero_a = pb::LoginStartRequest { address: ALICE.into(), srp_a: vec![0; 256] };
    let refused = accounts.login_start(zero_a).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let empty_a = pb::LoginStartRequest { address: ALICE.into(), srp_a: Vec::new() };
    assert_eq!(accounts.login_start(empty_a).await.unwrap_err().code(), Code::InvalidArgument);

    let unknown = pb::LoginFinishRequest { login_id: "nope".into(), srp_m1: vec![1; 32] };
    assert_eq!(accounts.login_finish(unknown).await.unwrap_err().code(), Code::NotFound);

    // A login id is good for one proof: a wrong one uses it up.
    let client = ClientLogin::start();
    let start = pb::LoginStartRequest { address: ALICE.into(), srp_a: client.a_pub().to_vec() };
    let started = accounts.login_start(start).await.unwrap().into_inner();
    let garbage = pb::LoginFinishRequest { login_id: started.login_id.clone(), srp_m1: vec![7; 3] };
    assert_eq!(accounts.login_finish(garbage).await.unwrap_err().code(), Code::PermissionDenied);
    let proof = client.finish(ALICE, &LoginSecret::derive("pw", ALICE), &started.srp_salt, &started.srp_b).unwrap();
    let late = pb::LoginFinishRequest { login_id: started.login_id, srp_m1: proof.m1.clone() };
    assert_eq!(accounts.login_finish(late).await.unwrap_err().code(), Code::NotFound);

    // Client certificates need a session, and a real CSR.
    let csr = pb::IssueClientCertificateRequest {
        csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
    };
    assert_eq!(accounts.issue_client_certificate(csr.clone()).await.unwrap_err().code(), Code::Unauthenticated);
    let token = provider.login(ALICE, "pw").await.unwrap();
    let mut authorized = AccountsClient::new(provider.channel(&token).await);
    let refused = authorized.issue_client_certificate(csr).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("certificate signing request"), "{refused:?}");
    let huge = pb::IssueClientCertificateRequest { csr_pem: "A".repeat(100_000) };
    assert_eq!(authorized.issue_client_certificate(huge).await.unwrap_err().code(), Code::InvalidArgument);

    // A real one: the certificate names the account, not what was asked.
    let (certificate, _key) = provider.client_certificate(&token).await;
    let output = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-ext", "subjectAltName,extendedKeyUsage", "-enddate"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(certificate.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let described = text(&output);
    assert!(described.contains("CN = alice@example.org"), "{described}");
    assert!(described.contains("email:alice@example.org"), "{described}");
    assert!(described.contains("TLS Web Client Authentication"), "{described}");
    assert!(!described.contains("ignored.example.net"), "{described}");
    let verified = std::process::Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(provider.ca_path())
        .arg({
            let path = provider.dir.parent().unwrap().join("alice.pem");
            std::fs::write(&path, &certificate).unwrap();
            path
        })
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", text(&verified));

    // After all that, the provider still serves.
    provider.login(ALICE, "pw").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wkd_serves_published_keys_over_https() {
    let provider = Provider::start(&[]);
    let (_token, key) = provider.user_with_key("Joe.Doe@example.org").await;
    let expected = bitmask_keys::openpgp::export_public(&key, false).unwrap();
    let fetch = |path: &str, http: &str| {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", http, "-w", "\n%{http_code}", "--cacert"])
            .arg(provider.ca_path())
            .arg(format!("{}{path}", provider.url()))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let mut body = output.stdout;
        let code = String::from_utf8(body.split_off(body.iter().rposition(|b| *b == b'\n').unwrap())).unwrap();
        (code.trim().to_owned(), body)
    };
    // The WKD draft's example hash of "Joe.Doe".
    let hash = "iy9q119eutrkn8s1mk4r39qejnbu3n5q";
    for http in ["--http1.1", "--http2"] {
        let (code, body) = fetch(&format!("/.well-known/openpgpkey/hu/{hash}?l=Joe.Doe"), http);
        assert_eq!(code, "200");
        assert_eq!(body, expected, "the direct method serves the binary key");
        let (code, body) = fetch(&format!("/.well-known/openpgpkey/example.org/hu/{hash}?l=Joe.Doe"), http);
        assert_eq!(code, "200");
        assert_eq!(body, expected, "the advanced method too");
    }
    assert_eq!(fetch(&format!("/.well-known/openpgpkey/example.net/hu/{hash}"), "--http1.1").0, "404");
    assert_eq!(fetch("/.well-known/openpgpkey/hu/ybndrfg8ejkmcpqxot1uwisza345h769", "--http1.1").0, "404");
    assert_eq!(fetch("/.well-known/openpgpkey/hu/..%2F..%2Fetc", "--http1.1").0, "404");
    assert_eq!(fetch("/.well-known/openpgpkey/policy", "--http1.1").0, "200");
    assert_eq!(fetch("/.well-known/openpgpkey/example.org/policy", "--http1.1").0, "200");

    // GnuPG-compatible: what WKD serves is the key that was published.
    let certificates =
        bitmask_keys::openpgp::parse_certs(&fetch(&format!("/.well-known/openpgpkey/hu/{hash}"), "--http1.1").1)
            .unwrap();
    assert_eq!(bitmask_keys::openpgp::fingerprint(&certificates[0]), bitmask_keys::openpgp::fingerprint(&key));
}
