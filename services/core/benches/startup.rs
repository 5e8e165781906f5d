//! How long `account start` takes until all four services report SERVING.
//!
//! Run with `scripts/bench-startup` (release build). Each round starts the
//! account through the Core API, which returns once every service answers
//! its health check with SERVING, then stops it. The reference is the floor
//! any supervisor pays: fork+exec of the same four binaries until they exit
//! (`--version`), in the same run.

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark program

use std::time::{Duration, Instant};

use bitmask_proto::core::v1 as pb;
use bitmask_proto::core::v1::core_client::CoreClient;
use bitmask_testkit::{World, bin, free_port};

const ROUNDS: usize = 21;
const BINARIES: [&str; 4] = ["bitmask-store", "bitmask-keys", "bitmask-imap", "bitmask-smtp"];

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let world = World::new();
    let _daemon = world.bitmaskd(&[]);
    let address = "bench@example.org";
    let (imap, smtp) = (free_port().to_string(), free_port().to_string());
    world.ctl_json(&["account", "add", address, "--imap-port", &imap, "--smtp-port", &smtp]);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut starts = Vec::with_capacity(ROUNDS);
    let mut stops = Vec::with_capacity(ROUNDS);
    runtime.block_on(async {
        let channel = bitmask_runtime::client::connect_unix(world.core_socket()).await.unwrap();
        let mut core = CoreClient::new(channel);
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let status = core
                .start_account(pb::StartAccountRequest {
                    address: address.into(),
                    passphrase: String::new(),
                    locked: true,
                })
                .await
                .unwrap()
                .into_inner();
            starts.push(started.elapsed());
            assert_eq!(status.status.unwrap_or_default().state(), pb::AccountState::Running);
            let stopping = Instant::now();
            core.stop_account(pb::StopAccountRequest { address: address.into() }).await.unwrap();
            stops.push(stopping.elapsed());
        }
    });

    let mut floors = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let children: Vec<_> = BINARIES
            .iter()
            .map(|binary| {
                std::process::Command::new(bin(binary))
                    .arg("--version")
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
        floors.push(started.elapsed());
    }

    let (start, stop, floor) = (median(&mut starts), median(&mut stops), median(&mut floors));
    println!(
        "account start until 4 services SERVING, median of {ROUNDS}: {:.1} ms (min {:.1}, max {:.1})",
        ms(start),
        ms(starts[0]),
        ms(starts[ROUNDS - 1])
    );
    println!("account stop (SIGTERM, all exited, sockets removed), median: {:.1} ms", ms(stop));
    println!("reference: fork+exec+exit of the 4 binaries (--version), median: {:.1} ms", ms(floor));
    println!("ratio start / reference: {:.1}", start.as_secs_f64() / floor.as_secs_f64());
}
