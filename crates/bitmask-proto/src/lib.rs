//! The generated gRPC types of the `bitmask.*.v1` contracts in `proto/`.
//!
//! Prost types stop at the service edge: each service converts them to its
//! domain types, and domain crates never import this crate.

#![allow(missing_debug_implementations)] // generated servers and clients
#![allow(clippy::all)] // generated code

/// The encoded `FileDescriptorSet` of every contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bitmask_descriptor.bin"));

pub mod core {
    pub mod v1 {
        tonic::include_proto!("bitmask.core.v1");
    }
}
pub mod store {
    pub mod v1 {
        tonic::include_proto!("bitmask.store.v1");
    }
}
pub mod keys {
    pub mod v1 {
        tonic::include_proto!("bitmask.keys.v1");
    }
}
pub mod mail {
    pub mod v1 {
        tonic::include_proto!("bitmask.mail.v1");
    }
}
pub mod smtp {
    pub mod v1 {
        tonic::include_proto!("bitmask.smtp.v1");
    }
}
pub mod sync {
    pub mod v1 {
        tonic::include_proto!("bitmask.sync.v1");
    }
}
pub mod provider {
    pub mod v1 {
        tonic::include_proto!("bitmask.provider.v1");
    }
}

/// A `Debug` that names the type and hides every field: for the messages
/// that carry secrets (see `SECRET_TYPES` in build.rs).
macro_rules! redacted_debug {
    ($($type:path),* $(,)?) => {
        $(impl std::fmt::Debug for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($type), " { <redacted> }"))
            }
        })*
    };
}

redacted_debug!(
    core::v1::StartAccountRequest,
    core::v1::StartAccountResponse,
    core::v1::ChangePassphraseRequest,
    core::v1::GetMailTokenResponse,
    store::v1::InitializeRequest,
    store::v1::InitializeResponse,
    store::v1::UnlockRequest,
    store::v1::unlock_request::Credential,
    store::v1::ChangePassphraseRequest,
    store::v1::change_passphrase_request::Credential,
    store::v1::ConfigureSyncRequest,
    keys::v1::ExportKeyResponse,
    provider::v1::LoginFinishResponse,
);

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_stay_out_of_debug_output() {
        let start = super::core::v1::StartAccountRequest {
            address: "alice@example.org".into(),
            passphrase: "hunter2-passphrase".into(),
            locked: false,
        };
        let unlock = super::store::v1::UnlockRequest {
            credential: Some(super::store::v1::unlock_request::Credential::RecoveryCode("CODE-1234".into())),
        };
        let sync = super::store::v1::ConfigureSyncRequest { session_token: "token-5678".into(), ..Default::default() };
        let text = format!("{start:?} {unlock:?} {sync:?} {:?}", unlock.credential);
        for secret in ["hunter2", "CODE-1234", "token-5678"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("StartAccountRequest"), "{text}");
    }
}
