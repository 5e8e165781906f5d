//! OpenPGP operations on sequoia-openpgp: keys, encrypt and sign, decrypt
//! and verify. Synchronous and free of I/O; the key service calls it on a
//! blocking thread and streams the bytes.

use std::io::Write as _;
use std::time::SystemTime;

use openpgp::cert::prelude::*;
use openpgp::crypto::SessionKey;
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::Parse as _;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, DetachedVerifierBuilder, MessageLayer, MessageStructure, VerificationError,
    VerificationHelper, VerifierBuilder,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Armorer, Encryptor, LiteralWriter, Message, Signer};
use openpgp::serialize::{Serialize as _, SerializeInto as _};
use openpgp::types::SymmetricAlgorithm;
use openpgp::{Cert, KeyHandle};
use sequoia_openpgp as openpgp;

pub use openpgp::Cert as Certificate;

#[derive(Debug, thiserror::Error)]
pub enum PgpError {
    #[error("not an OpenPGP key: {0}")]
    NotAKey(String),
    #[error("the key of {0} has no usable key for {1}")]
    Unusable(String, &'static str),
    #[error("no secret key of this account can decrypt the message (it was encrypted to someone else)")]
    NotForUs,
    #[error("the message is not valid OpenPGP: {0}")]
    Malformed(String),
    /// Decryption would give more than [`MAX_PLAINTEXT`] bytes (a
    /// compression bomb, or a message no mail system would carry): the
    /// message is refused for good, whatever came out before.
    #[error("the decrypted message is larger than {MAX_PLAINTEXT} bytes")]
    TooLarge,
    #[error("OpenPGP: {0}")]
    Other(String),
}

fn other(error: impl std::fmt::Display) -> PgpError {
    PgpError::Other(error.to_string())
}

/// Which kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Ed25519 signing, Cv25519 encryption.
    #[default]
    Cv25519,
    Rsa4096,
}

fn policy() -> StandardPolicy<'static> {
    StandardPolicy::new()
}

pub use openpgp::types::PublicKeyAlgorithm;

/// A new key for `address`: a certification primary key with signing and
/// encryption subkeys, valid for three years. It advertises only the
/// encryption container GnuPG reads (SEIPDv1): with SEIPDv2 advertised,
/// RFC 9580 senders would write messages that GnuPG 2.x cannot decrypt, and
/// interoperability is judged against GnuPG.
pub fn generate(address: &str, algorithm: Algorithm) -> Result<Cert, PgpError> {
    let suite = match algorithm {
        Algorithm::Cv25519 => CipherSuite::Cv25519,
        Algorithm::Rsa4096 => CipherSuite::RSA4k,
    };
    let features = openpgp::types::Features::empty().set_seipdv1();
    let (cert, _revocation) = CertBuilder::general_purpose(Some(format!("<{address}>")))
        .set_cipher_suite(suite)
        .set_validity_period(VALIDITY)
        .set_features(features)
        .map_err(other)?
        .generate()
        .map_err(other)?;
    Ok(cert)
}

/// How long a new or extended account key is valid.
pub const VALIDITY: std::time::Duration = std::time::Duration::from_secs(3 * 365 * 24 * 3600);

/// The account key with its primary key and its (unrevoked) subkeys valid
/// for `validity` from now: new binding signatures, made with the key's own
/// secrets. The fingerprint stays the same, so correspondents who refresh it
/// keep encrypting to it.
pub fn extend(cert: &Cert, validity: std::time::Duration) -> Result<Cert, PgpError> {
    let policy = policy();
    let now = SystemTime::now();
    let expiration = now + validity;
    let no_secret = || PgpError::Unusable(fingerprint(cert), "extending: its secret part is not here");
    let mut primary =
        cert.primary_key().key().clone().parts_into_secret().map_err(|_| no_secret())?.into_keypair().map_err(other)?;
    let mut signatures: Vec<openpgp::Packet> = cert
        .set_expiration_time(&policy, now, &mut primary, Some(expiration))
        .map_err(other)?
        .into_iter()
        .map(Into::into)
        .collect();
    let valid = cert.with_policy(&policy, now).map_err(other)?;
    for subkey in valid.keys().subkeys().revoked(false) {
        // A signing subkey's binding carries its own back-signature.
        let mut own = if subkey.for_signing() {
            Some(subkey.key().clone().parts_into_secret().map_err(|_| no_secret())?.into_keypair().map_err(other)?)
        } else {
            None
        };
        let own = own.as_mut().map(|pair| pair as &mut dyn openpgp::crypto::Signer);
        signatures.extend(
            subkey.set_expiration_time(&mut primary, own, Some(expiration)).map_err(other)?.into_iter().map(Into::into),
        );
    }
    let (extended, _) = cert.clone().insert_packets(signatures).map_err(other)?;
    Ok(extended)
}

/// Every certificate in `data` (armored or binary, one or several).
pub fn parse_certs(data: &[u8]) -> Result<Vec<Cert>, PgpError> {
    let parser = openpgp::cert::CertParser::from_bytes(data).map_err(|error| PgpError::NotAKey(error.to_string()))?;
    let certs: Vec<Cert> =
        parser.collect::<openpgp::Result<Vec<_>>>().map_err(|error| PgpError::NotAKey(error.to_string()))?;
    if certs.is_empty() {
        return Err(PgpError::NotAKey("no certificate found".into()));
    }
    Ok(certs)
}

/// The public certificate, armored or binary.
pub fn export_public(cert: &Cert, armor: bool) -> Result<Vec<u8>, PgpError> {
    if armor { cert.armored().to_vec().map_err(other) } else { cert.to_vec().map_err(other) }
}

/// The certificate with its secret keys (an explicit export only).
pub fn export_secret(cert: &Cert, armor: bool) -> Result<zeroize::Zeroizing<Vec<u8>>, PgpError> {
    let bytes = if armor { cert.as_tsk().armored().to_vec() } else { cert.as_tsk().to_vec() };
    bytes.map(zeroize::Zeroizing::new).map_err(other)
}

/// The lowercase e-mail addresses of the certificate's user ids.
pub fn addresses(cert: &Cert) -> Vec<String> {
    cert.userids().filter_map(|userid| userid.userid().email_normalized().ok().flatten()).collect()
}

pub fn fingerprint(cert: &Cert) -> String {
    cert.fingerprint().to_hex()
}

/// When the certificate expires under the standard policy (None: never).
pub fn expires(cert: &Cert) -> Option<SystemTime> {
    cert.with_policy(&policy(), None).ok().and_then(|valid| valid.primary_key().key_expiration_time())
}

/// Whether the certificate has been revoked.
pub fn revoked(cert: &Cert) -> bool {
    matches!(cert.revocation_status(&policy(), None), openpgp::types::RevocationStatus::Revoked(_))
}

/// Whether the certificate is revoked, expired, or otherwise invalid now.
pub fn usable(cert: &Cert) -> Result<(), PgpError> {
    let policy = policy();
    let valid = cert.with_policy(&policy, None).map_err(|error| PgpError::NotAKey(error.to_string()))?;
    if let openpgp::types::RevocationStatus::Revoked(_) = valid.revocation_status() {
        return Err(PgpError::Unusable(fingerprint(cert), "anything: it is revoked"));
    }
    valid.alive().map_err(|_| PgpError::Unusable(fingerprint(cert), "anything: it has expired"))?;
    Ok(())
}

/// Whether `cert` carries a certification by `signer` on one of its user ids.
pub fn certified_by(cert: &Cert, signer: &Cert) -> bool {
    let policy = policy();
    cert.userids().any(|userid| {
        userid.certifications().any(|signature| {
            signer.keys().any(|key| {
                signature.clone().verify_userid_binding(key.key(), cert.primary_key().key(), userid.userid()).is_ok()
            })
        })
    }) && cert.with_policy(&policy, None).is_ok()
}

/// Encrypts `plaintext` to every recipient (and signs it with `signer`).
pub fn encrypt(plaintext: &[u8], recipients: &[Cert], signer: Option<&Cert>, armor: bool) -> Result<Vec<u8>, PgpError> {
    let mut sink = Vec::new();
    encrypt_stream(&mut &*plaintext, &mut sink, recipients, signer, armor)?;
    Ok(sink)
}

/// Encrypts what `plaintext` yields into `sink` as it comes, holding no
/// more than sequoia's buffers: the streaming form of [`encrypt`].
pub fn encrypt_stream<W: std::io::Write + Send + Sync>(
    plaintext: &mut dyn std::io::Read,
    sink: W,
    recipients: &[Cert],
    signer: Option<&Cert>,
    armor: bool,
) -> Result<(), PgpError> {
    let policy = policy();
    let mut keys = Vec::new();
    for cert in recipients {
        usable(cert)?;
        let before = keys.len();
        keys.extend(
            cert.keys().with_policy(&policy, None).supported().alive().revoked(false).for_transport_encryption(),
        );
        if keys.len() == before {
            return Err(PgpError::Unusable(fingerprint(cert), "encryption"));
        }
    }
    let signing_key = signer.map(|cert| signing_keypair(cert, &policy)).transpose()?;
    let mut message = Message::new(sink);
    if armor {
        message = Armorer::new(message).build().map_err(other)?;
    }
    message = Encryptor::for_recipients(message, keys).build().map_err(other)?;
    if let Some(keypair) = signing_key {
        message = Signer::new(message, keypair).map_err(other)?.build().map_err(other)?;
    }
    let mut literal = LiteralWriter::new(message).build().map_err(other)?;
    std::io::copy(plaintext, &mut literal).map_err(other)?;
    literal.finalize().map_err(other)?;
    Ok(())
}

fn signing_keypair(cert: &Cert, policy: &StandardPolicy<'_>) -> Result<openpgp::crypto::KeyPair, PgpError> {
    let key = cert
        .keys()
        .unencrypted_secret()
        .with_policy(policy, None)
        .supported()
        .alive()
        .revoked(false)
        .for_signing()
        .next()
        .ok_or_else(|| PgpError::Unusable(fingerprint(cert), "signing"))?;
    key.key().clone().into_keypair().map_err(other)
}

/// A detached signature over `data` (binary mode; text mode canonicalizes
/// line endings, as multipart/signed needs).
pub fn sign_detached(data: &[u8], signer: &Cert, armor: bool) -> Result<Vec<u8>, PgpError> {
    let policy = policy();
    let keypair = signing_keypair(signer, &policy)?;
    let mut sink = Vec::new();
    {
        let mut message = Message::new(&mut sink);
        if armor {
            message = Armorer::new(message).kind(openpgp::armor::Kind::Signature).build().map_err(other)?;
        }
        let mut signer = Signer::new(message, keypair).map_err(other)?.detached().build().map_err(other)?;
        signer.write_all(data).map_err(other)?;
        signer.finalize().map_err(other)?;
    }
    Ok(sink)
}

/// The outcome of checking signatures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SignatureStatus {
    #[default]
    None,
    Valid {
        fingerprint: String,
    },
    Invalid {
        detail: String,
    },
    UnknownSigner {
        issuer: String,
    },
}

/// Checks signatures and, for decryption, finds the secret key.
struct Helper<'a> {
    secret_certs: &'a [Cert],
    known_certs: &'a [Cert],
    status: SignatureStatus,
    decrypted_with: Option<String>,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self
            .known_certs
            .iter()
            .chain(self.secret_certs)
            .filter(|cert| cert.keys().any(|key| ids.iter().any(|id| id.aliases(key.key().key_handle()))))
            .cloned()
            .collect())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure {
            if let MessageLayer::SignatureGroup { results } = layer {
                for result in results {
                    let status = match result {
                        Ok(good) => SignatureStatus::Valid { fingerprint: good.ka.cert().fingerprint().to_hex() },
                        Err(VerificationError::MissingKey { sig }) => SignatureStatus::UnknownSigner {
                            issuer: sig.get_issuers().first().map(|issuer| issuer.to_hex()).unwrap_or_default(),
                        },
                        Err(error) => SignatureStatus::Invalid { detail: error.to_string() },
                    };
                    // A valid signature wins over the others of the group.
                    if !matches!(self.status, SignatureStatus::Valid { .. }) {
                        self.status = status;
                    }
                }
            }
        }
        Ok(())
    }
}

impl DecryptionHelper for Helper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        _skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        // Any of the account's keys, older ones included, whatever their
        // policy status now: old mail must stay readable.
        for pkesk in pkesks {
            for cert in self.secret_certs {
                for key in cert.keys().unencrypted_secret() {
                    let matches = pkesk.recipient().is_none_or(|recipient| recipient.aliases(key.key().key_handle()));
                    if !matches {
                        continue;
                    }
                    let Ok(mut keypair) = key.key().clone().into_keypair() else { continue };
                    if pkesk
                        .decrypt(&mut keypair, sym_algo)
                        .is_some_and(|(algo, session_key)| decrypt(algo, &session_key))
                    {
                        self.decrypted_with = Some(cert.fingerprint().to_hex());
                        return Ok(Some(cert.clone()));
                    }
                }
            }
        }
        Err(PgpError::NotForUs.into())
    }
}

/// What decryption gives.
#[derive(Debug)]
pub struct Decrypted {
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    pub signature: SignatureStatus,
    pub decrypted_with: String,
}

/// Decrypts with any of `secret_certs`, checking signatures against
/// `known_certs` (and the account's own).
pub fn decrypt(ciphertext: &[u8], secret_certs: &[Cert], known_certs: &[Cert]) -> Result<Decrypted, PgpError> {
    let mut plaintext = zeroize::Zeroizing::new(Vec::new());
    let outcome = decrypt_stream(ciphertext, &mut *plaintext, secret_certs, known_certs)?;
    Ok(Decrypted { plaintext, signature: outcome.signature, decrypted_with: outcome.decrypted_with })
}

/// What streaming decryption tells once the whole message is read.
#[derive(Debug)]
pub struct DecryptOutcome {
    pub signature: SignatureStatus,
    pub decrypted_with: String,
}

/// The most plaintext decryption gives: 64 MiB, above the product's 40 MiB
/// message limit (SMTP SIZE) with its transfer encoding's overhead. An
/// OpenPGP message may be compressed, so 1.5 MB of ciphertext can hold
/// 1.5 GB of zeros: decryption stops at this many bytes with
/// [`PgpError::TooLarge`] instead of decompressing the rest.
pub const MAX_PLAINTEXT: usize = 64 * 1024 * 1024;

/// How much plaintext decryption holds back before it releases any: a
/// message this small reaches the sink only once its integrity and
/// signatures are checked. (Sequoia's default is 25 MiB, which costs several
/// times that in growing buffers.)
const HOLD_BACK: usize = 1 << 20;

/// Decrypts what `ciphertext` yields into `sink`: the streaming form of
/// [`decrypt`]. A message larger than [`HOLD_BACK`] streams out before its
/// end is checked: a failure there (an error here) means the caller must
/// discard what it got. At most [`MAX_PLAINTEXT`] bytes reach `sink`;
/// beyond that decryption stops with [`PgpError::TooLarge`].
pub fn decrypt_stream<'a, R: std::io::Read + Send + Sync + 'a>(
    ciphertext: R,
    sink: &mut dyn std::io::Write,
    secret_certs: &'a [Cert],
    known_certs: &'a [Cert],
) -> Result<DecryptOutcome, PgpError> {
    let policy = policy();
    let helper = Helper { secret_certs, known_certs, status: SignatureStatus::None, decrypted_with: None };
    let mut decryptor = DecryptorBuilder::from_reader(ciphertext)
        .map_err(|error| PgpError::Malformed(error.to_string()))?
        .buffer_size(HOLD_BACK)
        .with_policy(&policy, None, helper)
        .map_err(classify)?;
    let mut capped = Capped { sink, left: MAX_PLAINTEXT, exceeded: false };
    if let Err(error) = std::io::copy(&mut decryptor, &mut capped) {
        return Err(if capped.exceeded { PgpError::TooLarge } else { PgpError::Malformed(error.to_string()) });
    }
    let helper = decryptor.into_helper();
    Ok(DecryptOutcome { signature: helper.status, decrypted_with: helper.decrypted_with.unwrap_or_default() })
}

/// A sink that takes at most `left` more bytes.
struct Capped<'a> {
    sink: &'a mut dyn std::io::Write,
    left: usize,
    exceeded: bool,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.len() > self.left {
            self.exceeded = true;
            return Err(std::io::Error::other(PgpError::TooLarge));
        }
        let written = self.sink.write(data)?;
        self.left -= written;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

fn classify(error: openpgp::anyhow::Error) -> PgpError {
    match error.downcast::<PgpError>() {
        Ok(error) => error,
        Err(error) => PgpError::Malformed(error.to_string()),
    }
}

/// Checks a detached signature over `data`.
pub fn verify_detached(data: &[u8], signature: &[u8], known_certs: &[Cert]) -> Result<SignatureStatus, PgpError> {
    let policy = policy();
    let helper = Helper { secret_certs: &[], known_certs, status: SignatureStatus::None, decrypted_with: None };
    let mut verifier = DetachedVerifierBuilder::from_bytes(signature)
        .map_err(|error| PgpError::Malformed(error.to_string()))?
        .with_policy(&policy, None, helper)
        .map_err(classify)?;
    // A bad signature is an outcome, not an error.
    let _ = verifier.verify_bytes(data);
    Ok(verifier.into_helper().status)
}

/// Checks an inline-signed message and returns its content.
pub fn verify_inline(message: &[u8], known_certs: &[Cert]) -> Result<(Vec<u8>, SignatureStatus), PgpError> {
    let policy = policy();
    let helper = Helper { secret_certs: &[], known_certs, status: SignatureStatus::None, decrypted_with: None };
    let mut verifier = VerifierBuilder::from_bytes(message)
        .map_err(|error| PgpError::Malformed(error.to_string()))?
        .with_policy(&policy, None, helper)
        .map_err(classify)?;
    let mut content = Vec::new();
    std::io::copy(&mut verifier, &mut content).map_err(|error| PgpError::Malformed(error.to_string()))?;
    Ok((content, verifier.into_helper().status))
}

/// Whether a certificate holds secret key material.
pub fn has_secret(cert: &Cert) -> bool {
    cert.is_tsk()
}

/// Serializes a certificate with its secrets for the store (sealed there).
pub fn to_storage(cert: &Cert) -> Result<zeroize::Zeroizing<Vec<u8>>, PgpError> {
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    cert.as_tsk().serialize(&mut *bytes).map_err(other)?;
    Ok(bytes)
}
