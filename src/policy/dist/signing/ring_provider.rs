//! jsonwebtoken's cryptography on `ring`, the library rustls already uses in this binary.
//!
//! jsonwebtoken 10+ leaves its crypto to a [`CryptoProvider`]; its two built-in ones would add
//! either aws-lc (a large C library) or the RustCrypto `rsa` crate (whose signing has an open
//! timing advisory, RUSTSEC-2023-0071). This one maps the public-key algorithms onto ring; HMAC
//! is left out on purpose: a bundle signature must be verifiable with a public key only.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature as rs;

/// Installs the provider for this process (once; later calls do nothing).
pub(super) fn install() {
    // `Err` means a provider is installed already: this one, by an earlier call.
    let _ = PROVIDER.install_default();
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// The family a key must have for `alg`; `None` for HMAC, which is not offered.
fn family_of(alg: Algorithm) -> Option<AlgorithmFamily> {
    match alg.family() {
        AlgorithmFamily::Hmac => None,
        f => Some(f),
    }
}

struct RingSigner {
    alg: Algorithm,
    key: Vec<u8>,
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    if family_of(*alg) != Some(key.family()) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingSigner {
        alg: *alg,
        key: key.as_bytes().to_vec(),
    }))
}

fn ecdsa_signing(alg: Algorithm) -> Option<&'static rs::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&rs::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Some(&rs::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

fn rsa_encoding(alg: Algorithm) -> Option<&'static dyn rs::RsaEncoding> {
    match alg {
        Algorithm::RS256 => Some(&rs::RSA_PKCS1_SHA256),
        Algorithm::RS384 => Some(&rs::RSA_PKCS1_SHA384),
        Algorithm::RS512 => Some(&rs::RSA_PKCS1_SHA512),
        Algorithm::PS256 => Some(&rs::RSA_PSS_SHA256),
        Algorithm::PS384 => Some(&rs::RSA_PSS_SHA384),
        Algorithm::PS512 => Some(&rs::RSA_PSS_SHA512),
        _ => None,
    }
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let fail = |_| signature::Error::new();
        let rng = SystemRandom::new();
        if let Some(enc) = rsa_encoding(self.alg) {
            // jsonwebtoken hands over PKCS#1 for RSA (it unwraps PKCS#8 itself).
            let kp = rs::RsaKeyPair::from_der(&self.key).map_err(fail)?;
            let mut sig = vec![0; kp.public().modulus_len()];
            kp.sign(enc, &rng, msg, &mut sig)
                .map_err(|_| signature::Error::new())?;
            return Ok(sig);
        }
        if let Some(ec) = ecdsa_signing(self.alg) {
            let kp = rs::EcdsaKeyPair::from_pkcs8(ec, &self.key, &rng).map_err(fail)?;
            let sig = kp.sign(&rng, msg).map_err(|_| signature::Error::new())?;
            return Ok(sig.as_ref().to_vec());
        }
        if self.alg == Algorithm::EdDSA {
            // `openssl genpkey` writes PKCS#8 v1 (no public key inside): accepted.
            let kp = rs::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&self.key).map_err(fail)?;
            return Ok(kp.sign(msg).as_ref().to_vec());
        }
        Err(signature::Error::new())
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

struct RingVerifier {
    alg: Algorithm,
    key: DecodingKey,
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    if family_of(*alg) != Some(key.family()) {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    Ok(Box::new(RingVerifier {
        alg: *alg,
        key: key.clone(),
    }))
}

fn verification(alg: Algorithm) -> Option<&'static dyn rs::VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &rs::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &rs::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &rs::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &rs::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &rs::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &rs::ED25519,
        _ => return None,
    })
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let alg = verification(self.alg).ok_or_else(signature::Error::new)?;
        match self.key.kind() {
            // RSA: PKCS#1 RSAPublicKey; EC: the uncompressed point; Ed25519: the 32 bytes.
            DecodingKeyKind::SecretOrDer(der) => rs::UnparsedPublicKey::new(alg, der)
                .verify(msg, sig)
                .map_err(|_| signature::Error::new()),
            // Keys here come from PEM files only, never from JWK components.
            DecodingKeyKind::RsaModulusExponent { .. } => Err(signature::Error::new()),
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
