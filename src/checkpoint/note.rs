//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys, and their key strings
//! as Go's `golang.org/x/mod/sumdb/note` writes them, so keys and notes interoperate with it:
//!
//! - verifier key: `<name>+<key id, 8 hex>+<base64(0x01 || 32-byte public key)>`
//! - signer key: `PRIVATE+KEY+<name>+<key id, 8 hex>+<base64(0x01 || 32-byte seed)>`
//! - key id: the first 4 bytes (big-endian) of SHA-256(name || 0x0A || 0x01 || public key)
//! - note: the text (ending in a newline), a blank line, then one line per signature:
//!   `— <name> <base64(key id || 64-byte signature)>`

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature type byte of Ed25519 keys.
pub const ALG_ED25519: u8 = 0x01;
/// What separates the text from the signatures.
const SIG_PREFIX: &str = "\u{2014} ";
/// The most signature lines read from a note (as Go's verifier does), so a huge note costs little.
const MAX_SIGS: usize = 100;
/// The largest note read (a checkpoint is a few hundred bytes).
pub const MAX_NOTE: usize = 64 * 1024;

/// A key string that is not a valid key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not of the form this kind of key has.
    #[error("not a {kind} key: {why}")]
    Malformed {
        /// `signer` or `verifier`.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The key name is not allowed.
    #[error("key name {0:?} is not valid: it must be non-empty, without spaces or '+'")]
    BadName(String),
    /// The random source failed.
    #[error("cannot make a key: {0}")]
    Random(String),
}

/// Why a note was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// Not a signed note.
    #[error("not a signed note: {0}")]
    Malformed(String),
    /// No signature by the key (maybe by others).
    #[error("the note is not signed by {key}{}", others(.signers))]
    NotSigned {
        /// The key expected (`name+id`).
        key: String,
        /// The keys that did sign it (`name+id`).
        signers: Vec<String>,
    },
    /// The key's signature does not verify: the text or the signature was changed.
    #[error(
        "the signature by {0} does not verify: the note's text is not what that key signed (it was changed)"
    )]
    BadSignature(String),
}

fn others(signers: &[String]) -> String {
    if signers.is_empty() {
        String::new()
    } else {
        format!(" (it is signed by {})", signers.join(", "))
    }
}

/// C2SP and Go: a key name is non-empty, holds no Unicode space and no '+'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_whitespace) && !name.contains('+')
}

/// The key id of an Ed25519 key `pubkey` under `name`.
pub fn key_id(name: &str, pubkey: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ALG_ED25519]);
    h.update(pubkey);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

/// Splits `s` at the first `+`.
fn chop(s: &str) -> (&str, &str) {
    s.split_once('+').unwrap_or((s, ""))
}

/// Parses the `<id>+<base64(alg || 32 bytes)>` tail of a key string.
fn id_and_key(kind: &'static str, id16: &str, key64: &str) -> Result<(u32, [u8; 32]), KeyError> {
    let bad = |why: &str| KeyError::Malformed {
        kind,
        why: why.to_string(),
    };
    if id16.len() != 8 || !id16.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the key id is not 8 hex digits"));
    }
    let id = u32::from_str_radix(id16, 16).map_err(|_| bad("the key id is not 8 hex digits"))?;
    let raw = B64
        .decode(key64)
        .map_err(|_| bad("the key material is not base64"))?;
    match raw.split_first() {
        Some((&ALG_ED25519, k)) => {
            let k: [u8; 32] = k
                .try_into()
                .map_err(|_| bad("an Ed25519 key is not 32 bytes"))?;
            Ok((id, k))
        }
        Some((alg, _)) => Err(bad(&format!(
            "signature type {alg:#04x} is not Ed25519 (0x01)"
        ))),
        None => Err(bad("no key material")),
    }
}

/// A private key that signs notes under a name.
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    // Never the key itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteSigner({}+{:08x})", self.name, self.id)
    }
}

impl NoteSigner {
    /// The signer of the Ed25519 key with this 32-byte seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<NoteSigner, KeyError> {
        if !valid_name(name) {
            return Err(KeyError::BadName(name.to_string()));
        }
        let key = SigningKey::from_bytes(seed);
        let id = key_id(name, &key.verifying_key().to_bytes());
        Ok(NoteSigner {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// A new random key.
    pub fn generate(name: &str) -> Result<NoteSigner, KeyError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut seed[..]).map_err(|e| KeyError::Random(e.to_string()))?;
        NoteSigner::from_seed(name, &seed)
    }

    /// Parses `PRIVATE+KEY+<name>+<id>+<base64(0x01 || seed)>` (surrounding whitespace ignored);
    /// the id must be the key's.
    pub fn parse(skey: &str) -> Result<NoteSigner, KeyError> {
        let bad = |why: &str| KeyError::Malformed {
            kind: "signer",
            why: why.to_string(),
        };
        let s = skey.trim();
        let (p1, s) = chop(s);
        let (p2, s) = chop(s);
        if p1 != "PRIVATE" || p2 != "KEY" {
            return Err(bad("it does not start with PRIVATE+KEY+"));
        }
        let (name, s) = chop(s);
        let (id16, key64) = chop(s);
        if !valid_name(name) {
            return Err(KeyError::BadName(name.to_string()));
        }
        let (id, seed) = id_and_key("signer", id16, key64)?;
        let seed = zeroize::Zeroizing::new(seed);
        let signer = NoteSigner::from_seed(name, &seed)?;
        if signer.id != id {
            return Err(bad("its key id does not match its key"));
        }
        Ok(signer)
    }

    /// The signer key string (secret: it goes into a file only its owner reads).
    pub fn encode(&self) -> zeroize::Zeroizing<String> {
        let mut k = zeroize::Zeroizing::new(Vec::with_capacity(33));
        k.push(ALG_ED25519);
        k.extend_from_slice(self.key.as_bytes());
        zeroize::Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.id,
            B64.encode(&k[..])
        ))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching verifier key.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            id: self.id,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (valid note text: ends in a newline, no control characters but newlines, no
    /// line starting a signature) and returns the whole signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.key.sign(text.as_bytes());
        let mut b = Vec::with_capacity(68);
        b.extend_from_slice(&self.id.to_be_bytes());
        b.extend_from_slice(&sig.to_bytes());
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(b)
        ))
    }
}

/// Rejects text that is not a valid note text.
fn check_text(text: &str) -> Result<(), NoteError> {
    let bad = |why: &str| Err(NoteError::Malformed(why.to_string()));
    if text.is_empty() || !text.ends_with('\n') {
        return bad("the text does not end in a newline");
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return bad("the text holds a control character");
    }
    if text.ends_with("\n\n") || text.starts_with('\n') {
        return bad("the text starts or ends with a blank line");
    }
    Ok(())
}

/// A public key that checks notes signed under a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `<name>+<id>+<base64(0x01 || public key)>` (surrounding whitespace ignored); the id
    /// must be the key's.
    pub fn parse(vkey: &str) -> Result<NoteVerifier, KeyError> {
        let bad = |why: &str| KeyError::Malformed {
            kind: "verifier",
            why: why.to_string(),
        };
        let s = vkey.trim();
        if s.starts_with("PRIVATE+KEY+") {
            return Err(bad(
                "this is a private (signer) key; give the public key (node.pub)",
            ));
        }
        let (name, s) = chop(s);
        let (id16, key64) = chop(s);
        if !valid_name(name) {
            return Err(KeyError::BadName(name.to_string()));
        }
        let (id, pk) = id_and_key("verifier", id16, key64)?;
        let key =
            VerifyingKey::from_bytes(&pk).map_err(|_| bad("not a valid Ed25519 public key"))?;
        if key_id(name, &pk) != id {
            return Err(bad("its key id does not match its key"));
        }
        Ok(NoteVerifier {
            name: name.to_string(),
            id,
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `name+id`: how messages name the key.
    pub fn label(&self) -> String {
        format!("{}+{:08x}", self.name, self.id)
    }

    /// Checks that `note` is a signed note that this key signed, and returns its text.
    ///
    /// As the C2SP rules say: signatures by other keys are ignored; a signature by this key
    /// (same name and id) that does not verify rejects the note.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let bad = |why: &str| NoteError::Malformed(why.to_string());
        if note.len() > MAX_NOTE {
            return Err(bad(&format!("it is over {MAX_NOTE} bytes")));
        }
        if note.chars().any(|c| c < ' ' && c != '\n') {
            return Err(bad(
                "it holds a control character (a signed note has only newlines)",
            ));
        }
        let Some(split) = note.rfind("\n\n") else {
            return Err(bad("no blank line before the signatures"));
        };
        let (text, sigs) = (&note[..split + 1], &note[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(bad("no signature lines after the blank line"));
        }
        let mut signers = Vec::new();
        let mut verified = false;
        for (n, line) in sigs[..sigs.len() - 1].split('\n').enumerate() {
            if n >= MAX_SIGS {
                return Err(bad(&format!("more than {MAX_SIGS} signatures")));
            }
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(bad(&format!(
                    "signature line {line:?} does not start with \"\u{2014} \""
                )));
            };
            let (name, b64) = rest.split_once(' ').unwrap_or((rest, ""));
            let raw = B64.decode(b64).ok().filter(|r| r.len() >= 5);
            let Some(raw) = raw.filter(|_| valid_name(name)) else {
                return Err(bad(&format!("signature line {line:?} is not well formed")));
            };
            let id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if name != self.name || id != self.id {
                signers.push(format!("{name}+{id:08x}"));
                continue;
            }
            let sig = ed25519_dalek::Signature::from_slice(&raw[4..])
                .map_err(|_| NoteError::BadSignature(self.label()))?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| NoteError::BadSignature(self.label()))?;
            verified = true;
        }
        if !verified {
            return Err(NoteError::NotSigned {
                key: self.label(),
                signers,
            });
        }
        Ok(text)
    }
}

impl fmt::Display for NoteVerifier {
    /// The verifier key string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut k = Vec::with_capacity(33);
        k.push(ALG_ED25519);
        k.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id, B64.encode(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published vectors: golang.org/x/mod/sumdb/note's package documentation (a signer key, its
    // verifier key and the note it signs) and c2sp.org/signed-note's example.
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    // Go's docs again: the key made from an all-zero seed, and its signature of the same text.
    const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
    const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";
    const C2SP_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const C2SP_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn go_note_vectors_sign_and_verify() {
        let s = NoteSigner::parse(PETER_SKEY).unwrap();
        assert_eq!(s.encode().as_str(), PETER_SKEY);
        assert_eq!(s.verifier().to_string(), PETER_VKEY);
        // Ed25519 is deterministic: the same key over the same text gives the published bytes.
        let note = s.sign(PETER_TEXT).unwrap();
        assert_eq!(note, format!("{PETER_TEXT}\n{PETER_SIG}"));
        let v = NoteVerifier::parse(PETER_VKEY).unwrap();
        assert_eq!(v.open(&note).unwrap(), PETER_TEXT);

        let enoch = NoteSigner::from_seed("EnochRoot", &[0u8; 32]).unwrap();
        assert_eq!(enoch.verifier().to_string(), ENOCH_VKEY);
        let two = format!("{PETER_TEXT}\n{PETER_SIG}{ENOCH_SIG}");
        assert_eq!(
            enoch.sign(PETER_TEXT).unwrap(),
            format!("{PETER_TEXT}\n{ENOCH_SIG}")
        );
        // Each key finds its own signature among others.
        assert_eq!(v.open(&two).unwrap(), PETER_TEXT);
        let ev = NoteVerifier::parse(ENOCH_VKEY).unwrap();
        assert_eq!(ev.open(&two).unwrap(), PETER_TEXT);
    }

    #[test]
    fn c2sp_example_verifies() {
        let v = NoteVerifier::parse(C2SP_VKEY).unwrap();
        assert_eq!(v.name(), "example.com/foo");
        assert_eq!(v.id(), 0x530d_903a);
        assert_eq!(v.open(C2SP_NOTE).unwrap(), "This is an example message.\n");
    }

    #[test]
    fn changed_text_wrong_key_and_malformed_notes_are_refused() {
        let v = NoteVerifier::parse(PETER_VKEY).unwrap();
        let good = format!("{PETER_TEXT}\n{PETER_SIG}");
        let changed = good.replacen("cryptography", "cryptographY", 1);
        assert!(matches!(
            v.open(&changed),
            Err(NoteError::BadSignature(k)) if k == "PeterNeumann+c74f20a3"
        ));
        // A changed signature (past its 4-byte key id).
        let flipped = good.replacen("SffcvIAQ", "SffcvIAR", 1);
        assert!(matches!(v.open(&flipped), Err(NoteError::BadSignature(_))));
        // Another key: not signed by it, and the message says who did sign.
        let other = NoteVerifier::parse(ENOCH_VKEY).unwrap();
        let e = other.open(&good).unwrap_err();
        assert!(matches!(e, NoteError::NotSigned { .. }), "{e}");
        assert!(e.to_string().contains("PeterNeumann+c74f20a3"), "{e}");
        // Same name, another key (so another id): not this key's signature.
        let same_name = NoteSigner::from_seed("PeterNeumann", &[7u8; 32]).unwrap();
        assert!(matches!(
            same_name.verifier().open(&good),
            Err(NoteError::NotSigned { .. })
        ));
        for bad in [
            PETER_TEXT.to_string(),                             // no signatures
            format!("{PETER_TEXT}\n"),                          // blank line, nothing after
            format!("{PETER_TEXT}\n{}", PETER_SIG.trim_end()),  // no final newline
            format!("{PETER_TEXT}\n- PeterNeumann x08go/Z=\n"), // not an em dash
            format!("{PETER_TEXT}\n\u{2014} PeterNeumann !!!\n"),
            format!("{PETER_TEXT}\r\n{PETER_SIG}"),
        ] {
            assert!(
                matches!(v.open(&bad), Err(NoteError::Malformed(_))),
                "accepted {bad:?}"
            );
        }
        let s = NoteSigner::parse(PETER_SKEY).unwrap();
        for bad in ["no newline", "a\tb\n", "\nx\n", "x\n\n"] {
            assert!(s.sign(bad).is_err(), "signed {bad:?}");
        }
    }

    #[test]
    fn key_strings_are_checked() {
        assert!(NoteVerifier::parse(PETER_SKEY).is_err());
        assert!(NoteSigner::parse(PETER_VKEY).is_err());
        // The id must match the key.
        assert!(NoteVerifier::parse(&PETER_VKEY.replace("c74f20a3", "c74f20a4")).is_err());
        assert!(NoteSigner::parse(&PETER_SKEY.replace("c74f20a3", "c74f20a4")).is_err());
        // Not Ed25519, short, not base64, bad names.
        assert!(
            NoteVerifier::parse(
                "PeterNeumann+c74f20a3+AhpcdQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
            )
            .is_err()
        );
        assert!(NoteVerifier::parse("PeterNeumann+c74f20a3+ARpc").is_err());
        assert!(NoteVerifier::parse("PeterNeumann+c74f20a3+!!").is_err());
        assert!(NoteSigner::from_seed("a b", &[0; 32]).is_err());
        assert!(NoteSigner::from_seed("a+b", &[0; 32]).is_err());
        assert!(NoteSigner::from_seed("", &[0; 32]).is_err());
        // A fresh key round-trips through its strings; Debug never shows the secret.
        let g = NoteSigner::generate("robot-7").unwrap();
        let again = NoteSigner::parse(&g.encode()).unwrap();
        assert_eq!(again.verifier(), g.verifier());
        assert_eq!(
            NoteVerifier::parse(&format!(" {}\n", g.verifier())).unwrap(),
            g.verifier()
        );
        assert!(!format!("{g:?}").contains(&g.encode()[20..]));
    }
}
