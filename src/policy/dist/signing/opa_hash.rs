//! The file digests of OPA's bundle signatures, computed the way OPA computes them
//! (`bundle/hash.go`), so that bundles signed by `opa build --signing-key` verify here and
//! bundles signed here verify in OPA.
//!
//! A *structured* file (base name `data.json`, `data.yaml`, `.manifest` or `signatures.json`) is
//! hashed over a canonical form of its JSON, so whitespace and key order do not matter: objects
//! with their keys in byte order, `{"k":v,…}` and `[v,…]` without spaces, strings encoded as Go's
//! `encoding/json` encodes them with HTML escaping off, and numbers exactly as written in the
//! file (OPA decodes them as `json.Number`, which keeps the literal). Any other file is hashed
//! over its bytes.

use std::collections::BTreeMap;

use sha2::Digest;

/// Deepest nesting of arrays and objects read (serde_json's own limit is 128).
const MAX_DEPTH: usize = 256;

/// The hash algorithms a signature's file list may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlg {
    /// `SHA-256` (what OPA writes).
    Sha256,
    /// `SHA-384`.
    Sha384,
    /// `SHA-512`.
    Sha512,
}

impl HashAlg {
    /// The algorithm OPA names `name`; `None` for names it does not know and for the weak ones
    /// it knows (`MD5`, `SHA-1`, `SHA-224` and the truncated SHA-512s are refused here).
    pub fn from_name(name: &str) -> Option<HashAlg> {
        match name {
            "SHA-256" => Some(HashAlg::Sha256),
            "SHA-384" => Some(HashAlg::Sha384),
            "SHA-512" => Some(HashAlg::Sha512),
            _ => None,
        }
    }

    /// OPA's name for it.
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha384 => "SHA-384",
            HashAlg::Sha512 => "SHA-512",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// Whether OPA hashes `path` as structured JSON (by its base name, as `IsStructuredDoc`).
pub fn is_structured(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    matches!(
        base,
        "data.json" | "data.yaml" | ".manifest" | "signatures.json"
    )
}

/// Why a structured file could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Not JSON (at a byte offset).
    #[error("not valid JSON at byte {0}")]
    Syntax(usize),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
}

/// The digest of one bundle file, as the signature lists it.
pub fn file_digest(path: &str, content: &[u8], alg: HashAlg) -> Result<Vec<u8>, CanonicalError> {
    if is_structured(path) {
        Ok(alg.digest(&canonical(content)?))
    } else {
        Ok(alg.digest(content))
    }
}

/// The canonical form of a JSON document that OPA hashes (see the module docs).
pub fn canonical(json: &[u8]) -> Result<Vec<u8>, CanonicalError> {
    let mut p = Parser { s: json, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(CanonicalError::Syntax(p.i));
    }
    let mut out = Vec::with_capacity(json.len());
    write(&v, &mut out);
    Ok(out)
}

/// A JSON value with numbers kept as written.
enum Value {
    Null,
    Bool(bool),
    /// The literal, already checked against the JSON grammar.
    Number(String),
    String(String),
    Array(Vec<Value>),
    /// Later duplicates replace earlier ones, as Go's decoder does.
    Object(BTreeMap<String, Value>),
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err<T>(&self) -> Result<T, CanonicalError> {
        Err(CanonicalError::Syntax(self.i))
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn lit(&mut self, word: &[u8]) -> Result<(), CanonicalError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            self.err()
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, CanonicalError> {
        match self.peek() {
            Some(b'n') => self.lit(b"null").map(|_| Value::Null),
            Some(b't') => self.lit(b"true").map(|_| Value::Bool(true)),
            Some(b'f') => self.lit(b"false").map(|_| Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(CanonicalError::TooDeep);
                }
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return self.err(),
                    }
                }
            }
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(CanonicalError::TooDeep);
                }
                self.i += 1;
                let mut map = BTreeMap::new();
                self.ws();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                    return Ok(Value::Object(map));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return self.err();
                    }
                    let k = self.string()?;
                    self.ws();
                    if self.peek() != Some(b':') {
                        return self.err();
                    }
                    self.i += 1;
                    self.ws();
                    let v = self.value(depth + 1)?;
                    map.insert(k, v);
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Value::Object(map));
                        }
                        _ => return self.err(),
                    }
                }
            }
            _ => self.err(),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<String, CanonicalError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err(),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return self.err();
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return self.err();
            }
        }
        // ASCII by construction.
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let Some(h) = self.s.get(self.i..self.i + 4) else {
            return self.err();
        };
        let mut n = 0u32;
        for &c in h {
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return self.err(),
            };
            n = n * 16 + u32::from(d);
        }
        self.i += 4;
        Ok(n)
    }

    /// A string, unescaped. Lone surrogates become U+FFFD, as in Go.
    fn string(&mut self) -> Result<String, CanonicalError> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            let run = std::str::from_utf8(&self.s[start..self.i])
                .map_err(|e| CanonicalError::Syntax(start + e.valid_up_to()))?;
            out.push_str(run);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(e) = self.peek() else {
                        return self.err();
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = if (0xD800..0xDC00).contains(&hi) {
                                // A high surrogate counts only with a low one right after it.
                                let save = self.i;
                                let lo = if self.s[self.i..].starts_with(b"\\u") {
                                    self.i += 2;
                                    Some(self.hex4()?)
                                } else {
                                    None
                                };
                                match lo {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => char::from_u32(
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00),
                                    ),
                                    _ => {
                                        self.i = save;
                                        None
                                    }
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(c.unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.i -= 1;
                            return self.err();
                        }
                    }
                }
                // A control character, or the end of the input.
                _ => return self.err(),
            }
        }
    }
}

fn write(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
    }
}

/// A string as Go's `encoding/json` writes it with `SetEscapeHTML(false)` (Go 1.22 and later).
fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let b = c as u32 as usize;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[b >> 4]);
                out.push(HEX[b & 0xf]);
            }
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonical(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn canonical_form_is_gos() {
        // Keys in byte order, no spaces, numbers as written.
        assert_eq!(
            canon(" { \"b\" : [1.0, 1E+2, -0, {}], \"a\":{\"z\":null,\"B\":true} } "),
            r#"{"a":{"B":true,"z":null},"b":[1.0,1E+2,-0,{}]}"#
        );
        // Go escapes: \b \f \n \r \t, other controls as \u00xx, U+2028/9, no HTML escaping.
        assert_eq!(
            canon(r#""\u0008\u000c\n\r\t\u0001\u001f<>&\u2028\u2029\/é\u00e9😀\ud83d\ude00""#),
            "\"\\b\\f\\n\\r\\t\\u0001\\u001f<>&\\u2028\\u2029/éé😀😀\""
        );
        // Lone surrogates decode to U+FFFD; duplicates keep the last value.
        assert_eq!(canon(r#""\ud800x""#), "\"\u{FFFD}x\"");
        assert_eq!(canon(r#"{"k":1,"k":2}"#), r#"{"k":2}"#);
    }

    #[test]
    fn not_json_is_refused() {
        for bad in [
            "",
            "{",
            "[1,]",
            "01",
            "1.",
            "1e",
            "-",
            "\"a",
            "\"\t\"",
            "{\"a\" 1}",
            "nul",
            "[1] x",
            "\"\\x\"",
            "'a'",
        ] {
            assert!(canonical(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(canonical(deep.as_bytes()), Err(CanonicalError::TooDeep));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(canonical(ok.as_bytes()).is_ok());
    }

    #[test]
    fn structured_by_base_name() {
        for p in ["data.json", "a/b/data.json", ".manifest", "x/data.yaml"] {
            assert!(is_structured(p), "{p}");
        }
        for p in ["manifest.json", "p.rego", "data.json.bak", "a/datajson"] {
            assert!(!is_structured(p), "{p}");
        }
        // Whitespace and key order do not change a structured file's digest; they do change
        // any other file's.
        let a = file_digest("data.json", br#"{"a":1,"b":2}"#, HashAlg::Sha256).unwrap();
        let b = file_digest("data.json", b"{ \"b\": 2,\n \"a\": 1 }", HashAlg::Sha256).unwrap();
        assert_eq!(a, b);
        let c = file_digest("p.rego", br#"{"a":1,"b":2}"#, HashAlg::Sha256).unwrap();
        assert_eq!(c, sha2::Sha256::digest(br#"{"a":1,"b":2}"#).to_vec());
    }
}
