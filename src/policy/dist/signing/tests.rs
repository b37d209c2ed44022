use super::*;
use ring::signature::KeyPair;

/// An Ed25519 key pair as PEM (private PKCS#8, public SPKI), made with ring.
fn ed25519() -> (Vec<u8>, Vec<u8>) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    // SubjectPublicKeyInfo for id-Ed25519 (RFC 8410) around the 32 key bytes.
    let mut spki = hex::decode("302a300506032b6570032100").unwrap();
    spki.extend_from_slice(kp.public_key().as_ref());
    (
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())).into_bytes(),
        pem::encode(&pem::Pem::new("PUBLIC KEY", spki)).into_bytes(),
    )
}

/// A P-256 key pair as PEM.
fn p256() -> (Vec<u8>, Vec<u8>) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let kp =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    spki.extend_from_slice(kp.public_key().as_ref());
    (
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())).into_bytes(),
        pem::encode(&pem::Pem::new("PUBLIC KEY", spki)).into_bytes(),
    )
}

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    f.insert("p.rego".into(), b"package autonomy\n".to_vec());
    f.insert("a/data.json".into(), br#"{"x": [1, 2.50]}"#.to_vec());
    f.insert("manifest.json".into(), br#"{"name":"t"}"#.to_vec());
    f
}

fn signed(key: &SigningKey) -> BTreeMap<String, Vec<u8>> {
    let mut f = files();
    let sig = sign(&f, key).unwrap();
    f.insert(SIGNATURES_FILE.into(), sig);
    f
}

fn keys() -> (SigningKey, VerificationKey) {
    let (sk, pk) = ed25519();
    (
        SigningKey::from_pem("k.pem", &sk).unwrap(),
        VerificationKey::from_pem("pub.pem", &pk).unwrap(),
    )
}

/// Replaces the JWT in `.signatures.json` with one whose payload is `payload`, signed by `key`.
fn resign(f: &mut BTreeMap<String, Vec<u8>>, key: &SigningKey, payload: serde_json::Value) {
    ring_provider::install();
    let token = jsonwebtoken::encode(&Header::new(key.alg), &payload, &key.key).unwrap();
    f.insert(
        SIGNATURES_FILE.into(),
        serde_json::to_vec(&serde_json::json!({ "signatures": [token] })).unwrap(),
    );
}

#[test]
fn a_signed_bundle_verifies_and_names_its_key() {
    let (sk, pk) = ed25519();
    let key = SigningKey::from_pem("k.pem", &sk)
        .unwrap()
        .with_kid(Some("ops".into()));
    let v = VerificationKey::from_pem("pub.pem", &pk).unwrap();
    assert_eq!(v.kind(), KeyKind::Ed25519);
    let f = signed(&key);
    assert_eq!(
        verify(&f, &v).unwrap(),
        Verified {
            alg: "EdDSA".into(),
            kid: Some("ops".into())
        }
    );
    assert_eq!(peek(&f).unwrap().kid.as_deref(), Some("ops"));

    let (sk, pk) = p256();
    let key = SigningKey::from_pem("k.pem", &sk).unwrap();
    assert_eq!(key.algorithm(), Algorithm::ES256);
    let v = VerificationKey::from_pem("pub.pem", &pk).unwrap();
    assert_eq!(v.kind(), KeyKind::P256);
    let f = signed(&key);
    assert_eq!(verify(&f, &v).unwrap().alg, "ES256");
    // The payload lists every file with OPA's field names.
    let sf: serde_json::Value = serde_json::from_slice(&f[SIGNATURES_FILE]).unwrap();
    let token = sf["signatures"][0].as_str().unwrap();
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap();
    let names: Vec<&str> = claims["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["algorithm"], "SHA-256");
            f["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names, ["a/data.json", "manifest.json", "p.rego"]);
}

#[test]
fn what_does_not_hold_is_refused() {
    let (key, v) = keys();
    let base = signed(&key);

    // No signature at all.
    assert!(matches!(
        verify(&files(), &v),
        Err(SignatureError::Unsigned)
    ));

    // A changed file; a reformatted data.json is the same document, a changed one is not.
    let mut f = base.clone();
    f.insert("p.rego".into(), b"package autonomy\n\n".to_vec());
    let e = verify(&f, &v).unwrap_err();
    assert!(
        matches!(&e, SignatureError::Digest { path, .. } if path == "p.rego"),
        "{e}"
    );
    let mut f = base.clone();
    f.insert("a/data.json".into(), b"{\n  \"x\": [1, 2.50]\n}\n".to_vec());
    verify(&f, &v).unwrap();
    f.insert("a/data.json".into(), br#"{"x": [1, 2.5]}"#.to_vec());
    assert!(matches!(verify(&f, &v), Err(SignatureError::Digest { .. })));

    // An extra file, a missing one.
    let mut f = base.clone();
    f.insert("q.rego".into(), b"package q\n".to_vec());
    assert!(matches!(verify(&f, &v), Err(SignatureError::NotListed(p)) if p == "q.rego"));
    let mut f = base.clone();
    f.remove("p.rego");
    assert!(matches!(verify(&f, &v), Err(SignatureError::Missing(p)) if p == "p.rego"));

    // Another key; another kind of key.
    let (_, other) = ed25519();
    let other = VerificationKey::from_pem("other.pem", &other).unwrap();
    assert!(matches!(
        verify(&base, &other),
        Err(SignatureError::BadSignature { .. })
    ));
    let (_, ec) = p256();
    let ec = VerificationKey::from_pem("ec.pem", &ec).unwrap();
    let e = verify(&base, &ec).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the bundle is signed with EdDSA, but the verification key ec.pem is a P-256 key (ES256)"
    );

    // A scope that differs from the configured one, both ways.
    let scoped = signed(&key.clone().with_scope(Some("write".into())));
    assert!(matches!(
        verify(&scoped, &v),
        Err(SignatureError::Scope { .. })
    ));
    verify(&scoped, &v.clone().with_scope("write")).unwrap();
    assert!(matches!(
        verify(&base, &v.clone().with_scope("write")),
        Err(SignatureError::Scope { .. })
    ));

    // Signature file shapes.
    let mut f = base.clone();
    f.insert(SIGNATURES_FILE.into(), b"[]".to_vec());
    assert!(matches!(verify(&f, &v), Err(SignatureError::Malformed(_))));
    f.insert(SIGNATURES_FILE.into(), br#"{"signatures":[]}"#.to_vec());
    assert!(matches!(verify(&f, &v), Err(SignatureError::Count(0))));
    f.insert(
        SIGNATURES_FILE.into(),
        br#"{"signatures":["a","b"]}"#.to_vec(),
    );
    assert!(matches!(verify(&f, &v), Err(SignatureError::Count(2))));
    f.insert(
        SIGNATURES_FILE.into(),
        br#"{"plugin":"x","signatures":["a"]}"#.to_vec(),
    );
    assert!(matches!(verify(&f, &v), Err(SignatureError::Plugin(p)) if p == "x"));
    f.insert(
        SIGNATURES_FILE.into(),
        br#"{"signatures":["a.b"]}"#.to_vec(),
    );
    assert!(matches!(verify(&f, &v), Err(SignatureError::Jwt(_))));

    // Weak or unknown digests, digests that are not hex: refused even when signed.
    let digest = |f: &BTreeMap<String, Vec<u8>>, p: &str| {
        hex::encode(file_digest(p, &f[p], HashAlg::Sha256).unwrap())
    };
    let files_with = |alg: &str, hash: &str| {
        serde_json::json!({"files": [
            {"name": "p.rego", "hash": hash, "algorithm": alg},
            {"name": "a/data.json", "hash": digest(&base, "a/data.json"), "algorithm": "SHA-256"},
            {"name": "manifest.json", "hash": digest(&base, "manifest.json"), "algorithm": "SHA-256"},
        ]})
    };
    let mut f = base.clone();
    resign(&mut f, &key, files_with("MD5", "00"));
    assert!(matches!(
        verify(&f, &v),
        Err(SignatureError::HashAlgorithm { .. })
    ));
    resign(&mut f, &key, files_with("SHA-256", "zz"));
    assert!(matches!(verify(&f, &v), Err(SignatureError::NotHex(_))));
    // A leading `/` on a listed name is OPA's archive form, and the same file.
    resign(
        &mut f,
        &key,
        serde_json::json!({"files": [
            {"name": "/p.rego", "hash": digest(&base, "p.rego"), "algorithm": "SHA-256"},
            {"name": "/a/data.json", "hash": digest(&base, "a/data.json"), "algorithm": "SHA-256"},
            {"name": "manifest.json", "hash": digest(&base, "manifest.json"), "algorithm": "SHA-256"},
        ]}),
    );
    verify(&f, &v).unwrap();
}

#[test]
fn key_files_say_what_is_wrong() {
    let (sk, pk) = ed25519();
    let e = |r: Result<VerificationKey, KeyError>| r.unwrap_err().to_string();
    assert_eq!(
        e(VerificationKey::from_pem("k.pem", &sk)),
        "k.pem is a private key; --verification-key takes the public key (openssl pkey -in k.pem -pubout -out pub.pem)"
    );
    assert_eq!(
        e(VerificationKey::from_pem("x", b"hello")),
        "x: not a PEM file (expected -----BEGIN PUBLIC KEY-----)"
    );
    assert_eq!(
        e(VerificationKey::from_pem(
            "c.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
        )),
        "c.pem holds a CERTIFICATE, not a public key"
    );
    assert_eq!(
        e(VerificationKey::from_pem(
            "g.pem",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        )),
        "g.pem: not a usable RSA (2048-8192 bits), P-256, P-384 or Ed25519 public key"
    );
    let s = |r: Result<SigningKey, KeyError>| r.unwrap_err().to_string();
    assert_eq!(
        s(SigningKey::from_pem("pub.pem", &pk)),
        "pub.pem is a public key; --signing-key takes the private key"
    );
    assert!(
        s(SigningKey::from_pem(
            "ec.pem",
            b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
        ))
        .contains("openssl pkcs8 -topk8 -nocrypt -in ec.pem")
    );
}
