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
