//! `bitmask-provider init` and `serve` from the outside: the directory it
//! makes, the summary, readiness, the HTTPS port as curl and grpcurl see it.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use bitmask_proto::provider::v1 as pb;
use bitmask_testkit::{grpcurl_path, text};
use common::{DOMAIN, Provider, provider_command};
use sha2::Digest as _;

fn curl(provider: &Provider, path: &str, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(provider.ca_path())
        .args(extra)
        .arg(format!("{}{path}", provider.url()))
        .output()
        .unwrap()
}

fn grpcurl(provider: &Provider, args: &[&str]) -> std::process::Output {
    Command::new(grpcurl_path())
        .args(["-max-time", "20", "-cacert"])
        .arg(provider.ca_path())
        .arg(format!("localhost:{}", provider.port("https_port")))
        .args(args)
        .output()
        .unwrap()
}

/// SHA-256 of the DER inside a PEM certificate, hex.
fn pem_fingerprint(pem: &str) -> String {
    let base64: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    let der = data_encoding::BASE64.decode(base64.as_bytes()).unwrap();
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(der))
}

#[test]
fn init_makes_a_complete_provider_and_refuses_to_overwrite_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("provider");
    let dir_arg = dir.to_str().unwrap();
    let output = provider_command(&["init", "--domain", "Example.ORG", "--dir", dir_arg, "--mx-port", "0"]);
    assert!(output.status.success(), "{}", text(&output));
    let summary = String::from_utf8(output.stdout).unwrap();

    let settings: toml::Table = std::fs::read_to_string(dir.join("provider.toml")).unwrap().parse().unwrap();
    assert_eq!(settings["domain"].as_str(), Some("example.org"), "the domain is lowercased");
    assert_eq!(settings["bind"].as_str(), Some("127.0.0.1"));
    assert_eq!(settings["session_lifetime_seconds"].as_integer(), Some(86400));
    assert!(settings.get("smarthost").is_none());
    let ports: Vec<i64> =
        ["https_port", "mx_port", "relay_port"].iter().map(|name| settings[*name].as_integer().unwrap()).collect();
    assert!(ports.iter().all(|port| *port > 0), "free ports are chosen at init: {ports:?}");
    assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2], "{ports:?}");

    let fingerprint = pem_fingerprint(&std::fs::read_to_string(dir.join("ca.pem")).unwrap());
    assert!(summary.contains("example.org"), "{summary}");
    assert!(summary.contains(&fingerprint), "the summary names the CA fingerprint {fingerprint}: {summary}");
    for port in &ports {
        assert!(summary.contains(&port.to_string()), "{summary}");
    }
    for (file, mode) in [("ca.key", 0o600), ("tls.key", 0o600), ("secret.key", 0o600), ("ca.pem", 0o644)] {
        let actual = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, mode, "{file}");
    }
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);

    // A second init leaves the provider alone.
    let before = std::fs::read(dir.join("ca.key")).unwrap();
    let again = provider_command(&["init", "--domain", "example.org", "--dir", dir_arg]);
    assert_eq!(again.status.code(), Some(64), "{}", text(&again));
    assert!(text(&again).contains("not overwriting"), "{}", text(&again));
    assert_eq!(std::fs::read(dir.join("ca.key")).unwrap(), before);
}

#[test]
fn bad_arguments_and_directories_are_refused_with_64() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("p");
    let dir_arg = dir.to_str().unwrap();
    for args in [
        vec!["init", "--domain", "not a domain", "--dir", dir_arg],
        vec!["init", "--domain", "example.org", "--dir", dir_arg, "--smarthost", "nowhere"],
        vec!["init", "--domain", "example.org", "--dir", dir_arg, "--session-lifetime", "0"],
        vec!["init", "--domain", "example.org", "--dir", dir_arg, "--https-port", "2000", "--mx-port", "2000"],
    ] {
        let output = provider_command(&args);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {}", text(&output));
        assert!(!dir.join("provider.toml").exists(), "{args:?}");
    }
    let output = provider_command(&["serve", "--dir", temp.path().join("nothing").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(text(&output).contains("bitmask-provider init"), "{}", text(&output));

    let provider = Provider::init(&[]);
    let config = provider.dir.join("provider.toml");
    let damaged = std::fs::read_to_string(&config).unwrap().replace("domain = ", "domain_typo = ");
    std::fs::write(&config, damaged).unwrap();
    let output = provider_command(&["serve", "--dir", provider.dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert!(text(&output).contains("provider.toml"), "{}", text(&output));
}

#[test]
fn a_taken_port_is_named() {
    let mut provider = Provider::init(&[]);
    let holder = std::net::TcpListener::bind(("127.0.0.1", provider.port("mx_port"))).unwrap();
    let output = provider_command(&["serve", "--dir", provider.dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(69), "{}", text(&output));
    assert!(text(&output).contains("mx_port"), "{}", text(&output));
    drop(holder);
    provider.serve();
}

#[test]
fn the_https_port_serves_the_ca_and_grpc_and_stops_on_sigterm() {
    let mut provider = Provider::start(&[]);

    // The CA, over HTTP/2 (ALPN) and HTTP/1.1, checked against itself.
    for extra in [&["--http2"][..], &["--http1.1"]] {
        let output = curl(&provider, "/ca.crt", extra);
        assert!(output.status.success(), "curl {extra:?}: {}", text(&output));
        assert_eq!(String::from_utf8(output.stdout).unwrap(), provider.ca_pem());
    }
    let head = curl(&provider, "/ca.crt", &["--http1.1", "-I"]);
    assert!(text(&head).starts_with("HTTP/1.1 200"), "{}", text(&head));
    assert!(text(&head).contains("application/x-pem-file"), "{}", text(&head));
    let missing = curl(&provider, "/nothing/here", &["--http1.1", "-o", "/dev/null", "-w", "%{http_code}"]);
    assert_eq!(text(&missing), "404");
    // Another CA is not trusted: the pin matters.
    let other = Provider::init(&[]);
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(other.ca_path())
        .arg(format!("{}/ca.crt", provider.url()))
        .output()
        .unwrap();
    assert!(!output.status.success(), "{}", text(&output));

    // Reflection lists the provider's services; grpcurl calls one.
    let output = grpcurl(&provider, &["list"]);
    assert!(output.status.success(), "{}", text(&output));
    let services = String::from_utf8(output.stdout).unwrap();
    for service in ["bitmask.provider.v1.Accounts", "bitmask.provider.v1.KeyDirectory", "bitmask.sync.v1.SyncEndpoint"]
    {
        assert!(services.lines().any(|line| line == service), "{service} in {services}");
    }
    let output = grpcurl(&provider, &["bitmask.provider.v1.Accounts/GetProviderInfo"]);
    assert!(output.status.success(), "{}", text(&output));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["domain"], DOMAIN);
    assert_eq!(info["apiVersion"], "1");
    assert_eq!(info["caFingerprint"], pem_fingerprint(&provider.ca_pem()).as_str());
    assert_eq!(info["caCertificatePem"], provider.ca_pem().as_str());
    assert_eq!(info["mxAddress"], format!("localhost:{}", provider.port("mx_port")).as_str());
    assert_eq!(info["relayAddress"], format!("localhost:{}", provider.port("relay_port")).as_str());
    let output = grpcurl(&provider, &["grpc.health.v1.Health/Check"]);
    assert!(text(&output).contains("SERVING"), "{}", text(&output));

    // The same from a Rust client, as the account's services will ask.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let reply = runtime
        .block_on(async { provider.accounts().await.get_provider_info(pb::GetProviderInfoRequest {}).await })
        .unwrap()
        .into_inner();
    assert_eq!(reply.ca_fingerprint, pem_fingerprint(&provider.ca_pem()));

    // SIGTERM: a clean exit, even with a device watching for mail (a
    // stream that never ends by itself).
    let _watch = runtime.block_on(async {
        provider.sign_up("alice@example.org", "pw").await.unwrap();
        let token = provider.login("alice@example.org", "pw").await.unwrap();
        let request = bitmask_proto::sync::v1::WatchIncomingRequest {};
        let mut watch = provider.sync(&token).await.watch_incoming(request).await.unwrap().into_inner();
        assert_eq!(watch.message().await.unwrap().unwrap().waiting, 0);
        watch
    });
    let mut process = provider.process.take().unwrap();
    let status = Command::new("kill").args(["-TERM", &process.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = process.0.wait().unwrap();
    assert!(exit.success(), "{exit}; log:\n{}", provider.log_text());
    let log = provider.log_text();
    assert!(log.contains("shutting down"), "{log}");
    assert!(log.contains("cut off"), "the watch was cut off after the grace period: {log}");
}
