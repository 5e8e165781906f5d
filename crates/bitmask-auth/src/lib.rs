//! Logging in to a provider without the passphrase ever reaching it: SRP-6a
//! (RFC 5054's 2048-bit group, SHA-256) as LEAP did, over the `srp` crate.
//!
//! The SRP password is not the passphrase itself but a [`LoginSecret`]
//! derived from it with Argon2id, salted by the address: a provider that
//! leaks its verifiers leaks values that are as slow to attack as the store's
//! own passphrase key, and a client may keep the login secret (to log in
//! again when a session expires) without keeping the passphrase.
//!
//! Both halves are here, without I/O: [`ClientLogin`] (the account's side) and
//! [`ServerLogin`] (the provider's side), plus [`verifier`] for sign-up.

use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use srp::client::SrpClient;
use srp::groups::G_2048;
use srp::server::SrpServer;
use zeroize::Zeroizing;

/// Bytes of the login secret, of SRP salts and of ephemeral private values.
const SECRET_LEN: usize = 32;
const EPHEMERAL_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The other side's public value is not acceptable (zero mod N).
    #[error("the login handshake carried an invalid public value")]
    BadPublicValue,
    /// The client's proof does not match: wrong passphrase (or address).
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The server's proof does not match: it does not know the verifier.
    #[error("the provider could not prove that it knows this account")]
    ServerNotProven,
    #[error("a login secret must be {SECRET_LEN} bytes")]
    SecretLength,
}

/// What stands in for the passphrase towards the provider. Zeroized on drop;
/// its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginSecret(Zeroizing<[u8; SECRET_LEN]>);

impl std::fmt::Debug for LoginSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginSecret(..)")
    }
}

impl LoginSecret {
    /// Argon2id (19 MiB, 2 passes: the OWASP minimum) of the passphrase,
    /// salted by the lowercased address.
    pub fn derive(passphrase: &str, address: &str) -> Self {
        let salt = Sha256::new()
            .chain_update(b"bitmask srp login secret\0")
            .chain_update(address.to_lowercase().as_bytes())
            .finalize();
        let params = Params::new(19 * 1024, 2, 1, Some(SECRET_LEN)).unwrap_or_default();
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        // Only fails for parameters out of range, which these are not.
        let _ = Argon2::new(Algorithm::Argon2id, Version::V0x13, params).hash_password_into(
            passphrase.as_bytes(),
            &salt,
            secret.as_mut(),
        );
        Self(secret)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AuthError> {
        let array: [u8; SECRET_LEN] = bytes.try_into().map_err(|_| AuthError::SecretLength)?;
        Ok(Self(Zeroizing::new(array)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

fn identity(address: &str) -> Vec<u8> {
    address.to_lowercase().into_bytes()
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    use rand::RngCore;
    let mut bytes = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    bytes
}

/// A new SRP salt and verifier for sign-up: what the provider stores.
pub fn verifier(address: &str, secret: &LoginSecret) -> (Vec<u8>, Vec<u8>) {
    let salt = random::<SECRET_LEN>().to_vec();
    let verifier = SrpClient::<Sha256>::new(&G_2048).compute_verifier(&identity(address), secret.as_bytes(), &salt);
    (salt, verifier)
}

/// The client's side of one login.
pub struct ClientLogin {
    a: Zeroizing<[u8; EPHEMERAL_LEN]>,
    a_pub: Vec<u8>,
}

impl std::fmt::Debug for ClientLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLogin").finish_non_exhaustive()
    }
}

/// The client's proof, and what it expects the provider to prove back.
pub struct ClientProof {
    pub m1: Vec<u8>,
    verifier: srp::client::SrpClientVerifier<Sha256>,
}

impl std::fmt::Debug for ClientProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientProof").finish_non_exhaustive()
    }
}

impl ClientProof {
    /// Checks the provider's proof M2 (before the client trusts its token).
    pub fn verify_server(&self, m2: &[u8]) -> Result<(), AuthError> {
        self.verifier.verify_server(m2).map_err(|_| AuthError::ServerNotProven)
    }
}

impl Default for ClientLogin {
    fn default() -> Self {
        Self::start()
    }
}

impl ClientLogin {
    /// A fresh ephemeral value; [`ClientLogin::a_pub`] goes to the provider.
    pub fn start() -> Self {
        let a = random::<EPHEMERAL_LEN>();
        let a_pub = SrpClient::<Sha256>::new(&G_2048).compute_public_ephemeral(a.as_ref());
        Self { a, a_pub }
    }

    pub fn a_pub(&self) -> &[u8] {
        &self.a_pub
    }

    /// From the provider's salt and B, the proof M1 to send.
    pub fn finish(
        &self,
        address: &str,
        secret: &LoginSecret,
        salt: &[u8],
        b_pub: &[u8],
    ) -> Result<ClientProof, AuthError> {
        let verifier = SrpClient::<Sha256>::new(&G_2048)
            .process_reply(self.a.as_ref(), &identity(address), secret.as_bytes(), salt, b_pub)
            .map_err(|_| AuthError::BadPublicValue)?;
        Ok(ClientProof { m1: verifier.proof().to_vec(), verifier })
    }
}

/// The provider's side of one login, between `LoginStart` and `LoginFinish`.
///
/// `start` does one modular exponentiation (B) and checks A; the rest of
/// the handshake waits for `finish`, so a flood of starts costs the
/// provider as little as it can.
pub struct ServerLogin {
    b: Zeroizing<[u8; EPHEMERAL_LEN]>,
    verifier: Vec<u8>,
    a_pub: Vec<u8>,
}

impl std::fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLogin").finish_non_exhaustive()
    }
}

impl ServerLogin {
    /// From the stored verifier and the client's A: the state to keep and B
    /// to send back (with the stored salt).
    pub fn start(verifier: &[u8], a_pub: &[u8]) -> Result<(Self, Vec<u8>), AuthError> {
        // What srp's process_reply refuses: A ≡ 0 (mod N) would let anyone in.
        if num_bigint::BigUint::from_bytes_be(a_pub) % &G_2048.n == num_bigint::BigUint::default() {
            return Err(AuthError::BadPublicValue);
        }
        let b = random::<EPHEMERAL_LEN>();
        let b_pub = SrpServer::<Sha256>::new(&G_2048).compute_public_ephemeral(b.as_ref(), verifier);
        Ok((Self { b, verifier: verifier.to_vec(), a_pub: a_pub.to_vec() }, b_pub))
    }

    /// Checks the client's proof M1; gives the server's proof M2.
    pub fn finish(&self, m1: &[u8]) -> Result<Vec<u8>, AuthError> {
        let verifier = SrpServer::<Sha256>::new(&G_2048)
            .process_reply(self.b.as_ref(), &self.verifier, &self.a_pub)
            .map_err(|_| AuthError::BadPublicValue)?;
        verifier.verify_client(m1).map_err(|_| AuthError::WrongPassphrase)?;
        Ok(verifier.proof().to_vec())
    }
}

/// A verifier for an address that has no account, from `seed` (which the
/// provider derives from its secret and the address, so it is the same at
/// every attempt): a LoginStart for it answers with a B no client can tell
/// from a real one, and no proof matches it. Not of the form g^x, which
/// nobody can see from B = kv + g^b; costs no exponentiation, so the answer
/// takes as long as a real one.
pub fn decoy_verifier(seed: &[u8]) -> Vec<u8> {
    // 255 bytes: below N (2048 bits), never zero (a counter is hashed in).
    let mut verifier = Vec::with_capacity(8 * 32);
    for counter in 0u8..8 {
        verifier.extend(
            Sha256::new()
                .chain_update(b"bitmask decoy verifier\0")
                .chain_update(seed)
                .chain_update([counter])
                .finalize(),
        );
    }
    verifier.truncate(255);
    if verifier.iter().all(|byte| *byte == 0) {
        verifier.push(1);
    }
    verifier
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(address: &str, passphrase: &str, stored: &(Vec<u8>, Vec<u8>)) -> Result<(), AuthError> {
        let secret = LoginSecret::derive(passphrase, address);
        let client = ClientLogin::start();
        let (server, b_pub) = ServerLogin::start(&stored.1, client.a_pub())?;
        let proof = client.finish(address, &secret, &stored.0, &b_pub)?;
        let m2 = server.finish(&proof.m1)?;
        proof.verify_server(&m2)
    }

    #[test]
    fn the_right_passphrase_logs_in_and_a_wrong_one_does_not() {
        let address = "bob@example.org";
        let stored = verifier(address, &LoginSecret::derive("correct horse", address));
        assert_eq!(login(address, "correct horse", &stored), Ok(()));
        assert_eq!(login("Bob@Example.org", "correct horse", &stored), Ok(()), "addresses compare without case");
        assert_eq!(login(address, "correct horse!", &stored), Err(AuthError::WrongPassphrase));
        assert_eq!(login("carol@example.org", "correct horse", &stored), Err(AuthError::WrongPassphrase));
    }

    #[test]
    fn a_decoy_verifier_is_stable_and_no_passphrase_matches_it() {
        let address = "nobody@example.org";
        let decoy = decoy_verifier(b"seed of nobody");
        assert_eq!(decoy, decoy_verifier(b"seed of nobody"));
        assert_ne!(decoy, decoy_verifier(b"seed of somebody"));
        assert_eq!(decoy.len(), 255);
        let salt = vec![9u8; 32];
        assert_eq!(login(address, "", &(salt.clone(), decoy.clone())), Err(AuthError::WrongPassphrase));
        assert_eq!(login(address, "pw", &(salt, decoy)), Err(AuthError::WrongPassphrase));
    }

    #[test]
    fn a_zero_public_value_is_refused() {
        let address = "bob@example.org";
        let stored = verifier(address, &LoginSecret::derive("pw", address));
        assert!(matches!(ServerLogin::start(&stored.1, &[0u8; 256]), Err(AuthError::BadPublicValue)));
        // N itself, and 2N, are zero too.
        let n = G_2048.n.to_bytes_be();
        assert!(matches!(ServerLogin::start(&stored.1, &n), Err(AuthError::BadPublicValue)));
        let two_n = (&G_2048.n * 2u32).to_bytes_be();
        assert!(matches!(ServerLogin::start(&stored.1, &two_n), Err(AuthError::BadPublicValue)));
        let client = ClientLogin::start();
        let secret = LoginSecret::derive("pw", address);
        assert!(matches!(client.finish(address, &secret, &stored.0, &[0u8; 256]), Err(AuthError::BadPublicValue)));
    }

    #[test]
    fn a_server_without_the_verifier_is_not_proven() {
        let address = "bob@example.org";
        let secret = LoginSecret::derive("pw", address);
        let real = verifier(address, &secret);
        let fake = verifier(address, &LoginSecret::derive("other", address));
        let client = ClientLogin::start();
        // The impostor answers with its own verifier but the real salt.
        let (server, b_pub) = ServerLogin::start(&fake.1, client.a_pub()).unwrap();
        let proof = client.finish(address, &secret, &real.0, &b_pub).unwrap();
        assert!(server.finish(&proof.m1).is_err());
        assert_eq!(proof.verify_server(&[0u8; 32]), Err(AuthError::ServerNotProven));
    }

    #[test]
    fn secrets_are_deterministic_per_address_and_hidden_from_debug() {
        let one = LoginSecret::derive("pw", "a@example.org");
        assert_eq!(one, LoginSecret::derive("pw", "A@example.org"));
        assert_ne!(one, LoginSecret::derive("pw", "b@example.org"));
        assert_eq!(format!("{one:?}"), "LoginSecret(..)");
        assert_eq!(LoginSecret::from_bytes(one.as_bytes()).unwrap(), one);
        assert_eq!(LoginSecret::from_bytes(b"short"), Err(AuthError::SecretLength));
    }
}
