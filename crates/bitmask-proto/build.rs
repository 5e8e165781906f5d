//! Generates the gRPC types from `proto/` with a vendored `protoc`, so no
//! system protoc is needed. Every service trait gets default methods that
//! answer UNIMPLEMENTED, so a service implements only what it has.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "bitmask/core/v1/core.proto",
    "bitmask/store/v1/store.proto",
    "bitmask/keys/v1/keys.proto",
    "bitmask/mail/v1/mail.proto",
    "bitmask/smtp/v1/smtp.proto",
    "bitmask/sync/v1/sync.proto",
    "bitmask/provider/v1/provider.proto",
];

/// Messages (and oneofs) that carry a secret: passphrases, recovery codes,
/// tokens, exported key material. They get a redacting `Debug` (in lib.rs)
/// instead of the derived one, so a secret never reaches a log by `{:?}`.
pub const SECRET_TYPES: &[&str] = &[
    ".bitmask.core.v1.StartAccountRequest",
    ".bitmask.core.v1.StartAccountResponse",
    ".bitmask.core.v1.ChangePassphraseRequest",
    ".bitmask.core.v1.GetMailTokenResponse",
    ".bitmask.store.v1.InitializeRequest",
    ".bitmask.store.v1.InitializeResponse",
    ".bitmask.store.v1.UnlockRequest",
    ".bitmask.store.v1.UnlockRequest.credential",
    ".bitmask.store.v1.ChangePassphraseRequest",
    ".bitmask.store.v1.ChangePassphraseRequest.credential",
    ".bitmask.store.v1.ConfigureSyncRequest",
    ".bitmask.keys.v1.ExportKeyResponse",
    ".bitmask.provider.v1.LoginFinishResponse",
    ".bitmask.provider.v1.SignUpRequest",
    ".bitmask.core.v1.AddAccountRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY of intent: build scripts are single threaded; prost-build reads PROTOC.
    unsafe_set_protoc(&protoc);

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .skip_debug(SECRET_TYPES)
        .file_descriptor_set_path(out_dir.join("bitmask_descriptor.bin"))
        .compile_protos(&files, &[proto_root, well_known])?;
    Ok(())
}

#[allow(unsafe_code)] // set_var is unsafe in edition 2024; a build script has one thread
fn unsafe_set_protoc(protoc: &std::path::Path) {
    unsafe { std::env::set_var("PROTOC", protoc) };
}
