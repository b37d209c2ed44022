//! Plain CDR (XCDR1, little-endian) → JSON, from a message definition: what a bridged message
//! looks like to the policy (`input.params.message`); and back, JSON → CDR ([`Encoder`]), for
//! the safe message a topic publishes when a message is denied or the agent goes silent.
//!
//! The payload is what follows the 4-byte encapsulation header; alignment counts from its
//! start. Every primitive is aligned to its own size (8 for 64-bit values, as XCDR1 has it);
//! strings are a `u32` length counting the trailing NUL, then the bytes and the NUL; sequences a
//! `u32` count, then the elements; fixed arrays just the elements; nested messages their fields,
//! inline. Anything that does not fit — a truncated payload, a count larger than the bytes
//! left could hold, a bound exceeded, a bool that is neither 0 nor 1, a string that is not
//! UTF-8 or lacks its NUL — is an error naming the field, never a panic. Bytes after the
//! message are ignored, as every ROS reader ignores them (Fast DDS leaves some there). Non-finite floats become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`
//! (JSON has no such numbers, and a string never passes a numeric bound in Rego).

use serde_json::{Map, Number, Value};

use super::msgdef::{Field, Scalar, Shape, TypeSet};

/// How many bytes a `wstring` code unit takes: the RMWs disagree (Cyclone DDS writes UTF-16
/// units, Fast DDS 32-bit `wchar_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcharWidth {
    /// 2 bytes (`rmw_cyclonedds_cpp`).
    Two,
    /// 4 bytes (`rmw_fastrtps_cpp`).
    Four,
}

/// Why a payload is not a value of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}{}", if path.is_empty() { String::new() } else { format!(" (field {path})") })]
pub struct CdrError {
    /// What is wrong.
    pub what: String,
    /// Byte offset in the payload (after the encapsulation header).
    pub at: usize,
    /// The field, dotted (`linear.x`, `data[3]`).
    pub path: String,
}

impl CdrError {
    fn new(what: impl Into<String>, at: usize) -> Self {
        CdrError {
            what: what.into(),
            at,
            path: String::new(),
        }
    }

    /// Prefixes the path with an outer field name as the error travels up.
    fn within(mut self, name: &str) -> Self {
        self.path = if self.path.is_empty() {
            name.to_string()
        } else if self.path.starts_with('[') {
            format!("{name}{}", self.path)
        } else {
            format!("{name}.{}", self.path)
        };
        self
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn align(&mut self, n: usize) {
        let rem = self.pos % n;
        if rem != 0 {
            self.pos += n - rem;
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CdrError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(CdrError::new(
                format!(
                    "truncated: {n} more bytes needed, {} left of {}",
                    self.left(),
                    self.buf.len()
                ),
                self.pos.min(self.buf.len()),
            )),
        }
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], CdrError> {
        self.align(N);
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, CdrError> {
        self.fixed::<4>().map(u32::from_le_bytes)
    }
}

fn float(v: f64) -> Value {
    match Number::from_f64(v) {
        Some(n) => Value::Number(n),
        None if v.is_nan() => Value::String("NaN".into()),
        None if v > 0.0 => Value::String("Infinity".into()),
        None => Value::String("-Infinity".into()),
    }
}

/// Decodes messages of the types in one [`TypeSet`].
pub struct Decoder<'s> {
    set: &'s TypeSet,
    wchar: WcharWidth,
}

impl<'s> Decoder<'s> {
    /// A decoder over `set`; `wchar` says how `wstring` code units are sized.
    pub fn new(set: &'s TypeSet, wchar: WcharWidth) -> Self {
        Decoder { set, wchar }
    }

    /// Decodes `payload` (after the encapsulation header) as a value of type `id`.
    pub fn decode(&self, id: usize, payload: &[u8]) -> Result<Map<String, Value>, CdrError> {
        let mut r = Reader {
            buf: payload,
            pos: 0,
        };
        self.message(id, &mut r)
    }

    fn message(&self, id: usize, r: &mut Reader<'_>) -> Result<Map<String, Value>, CdrError> {
        let Some(t) = self.set.get(id) else {
            return Err(CdrError::new("unknown type", r.pos));
        };
        let mut m = Map::new();
        for f in &t.fields {
            let v = self.field(f, r).map_err(|e| e.within(&f.name))?;
            if !f.hidden {
                m.insert(f.name.clone(), v);
            }
        }
        Ok(m)
    }

    fn field(&self, f: &Field, r: &mut Reader<'_>) -> Result<Value, CdrError> {
        match f.shape {
            Shape::One => self.scalar(f.scalar, r),
            Shape::Array(n) => self.elements(f.scalar, n as usize, r),
            Shape::Seq(bound) => {
                let at = r.pos;
                let n = r.u32()? as usize;
                if let Some(b) = bound
                    && n > b as usize
                {
                    return Err(CdrError::new(
                        format!("sequence of {n} exceeds its bound {b}"),
                        at,
                    ));
                }
                self.elements(f.scalar, n, r)
            }
        }
    }

    fn elements(&self, s: Scalar, n: usize, r: &mut Reader<'_>) -> Result<Value, CdrError> {
        // A count the bytes left cannot hold is refused before anything is allocated.
        let min = match s {
            Scalar::Msg(i) => self.set.get(i).map_or(1, |t| t.min_size),
            Scalar::Bool | Scalar::Byte | Scalar::Char | Scalar::I8 | Scalar::U8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I64 | Scalar::U64 | Scalar::F64 => 8,
            _ => 4,
        };
        if n.saturating_mul(min) > r.left() {
            return Err(CdrError::new(
                format!(
                    "truncated: {n} elements cannot fit in the {} bytes left",
                    r.left()
                ),
                r.pos,
            ));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(self.scalar(s, r).map_err(|e| e.within(&format!("[{i}]")))?);
        }
        Ok(Value::Array(out))
    }

    fn scalar(&self, s: Scalar, r: &mut Reader<'_>) -> Result<Value, CdrError> {
        Ok(match s {
            Scalar::Bool => {
                let at = r.pos;
                match r.take(1)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(CdrError::new(format!("bool byte {b} is not 0 or 1"), at)),
                }
            }
            Scalar::Byte | Scalar::Char | Scalar::U8 => Value::from(r.take(1)?[0]),
            Scalar::I8 => Value::from(r.take(1)?[0] as i8),
            Scalar::I16 => Value::from(i16::from_le_bytes(r.fixed()?)),
            Scalar::U16 => Value::from(u16::from_le_bytes(r.fixed()?)),
            Scalar::I32 => Value::from(i32::from_le_bytes(r.fixed()?)),
            Scalar::U32 => Value::from(u32::from_le_bytes(r.fixed()?)),
            Scalar::I64 => Value::from(i64::from_le_bytes(r.fixed()?)),
            Scalar::U64 => Value::from(u64::from_le_bytes(r.fixed()?)),
            Scalar::F32 => float(f32::from_le_bytes(r.fixed()?) as f64),
            Scalar::F64 => float(f64::from_le_bytes(r.fixed()?)),
            Scalar::Str(bound) => Value::String(self.string(bound, r)?),
            Scalar::WStr(bound) => Value::String(self.wstring(bound, r)?),
            Scalar::Msg(i) => Value::Object(self.message(i, r)?),
        })
    }

    fn string(&self, bound: Option<u32>, r: &mut Reader<'_>) -> Result<String, CdrError> {
        let at = r.pos;
        let n = r.u32()? as usize;
        if n == 0 {
            // Some writers send an empty string as a bare zero length.
            return Ok(String::new());
        }
        let bytes = r.take(n)?;
        let (text, nul) = bytes.split_at(n - 1);
        if nul != [0] {
            return Err(CdrError::new("string without its terminating NUL", at));
        }
        if let Some(b) = bound
            && text.len() > b as usize
        {
            return Err(CdrError::new(
                format!("string of {} bytes exceeds its bound {b}", text.len()),
                at,
            ));
        }
        std::str::from_utf8(text)
            .map(str::to_string)
            .map_err(|e| CdrError::new(format!("string is not UTF-8: {e}"), at))
    }

    fn wstring(&self, bound: Option<u32>, r: &mut Reader<'_>) -> Result<String, CdrError> {
        let at = r.pos;
        let n = r.u32()? as usize;
        if let Some(b) = bound
            && n > b as usize
        {
            return Err(CdrError::new(
                format!("wstring of {n} units exceeds its bound {b}"),
                at,
            ));
        }
        let width = match self.wchar {
            WcharWidth::Two => 2,
            WcharWidth::Four => 4,
        };
        let bytes = r.take(n.saturating_mul(width))?;
        let text = match self.wchar {
            WcharWidth::Two => {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&units).ok()
            }
            WcharWidth::Four => bytes
                .chunks_exact(4)
                .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
        };
        // A terminating NUL, where a writer sends one, is not part of the text.
        text.map(|t| t.trim_end_matches('\0').to_string())
            .ok_or_else(|| CdrError::new("wstring is not valid Unicode", at))
    }
}

/// Why a JSON value is not a value of its message type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{what}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct EncodeError {
    /// The field, dotted (`linear.x`, `data[3]`); empty for the message itself.
    pub path: String,
    /// What is wrong.
    pub what: String,
}

impl EncodeError {
    fn new(what: impl Into<String>) -> Self {
        EncodeError {
            path: String::new(),
            what: what.into(),
        }
    }

    fn within(mut self, name: &str) -> Self {
        self.path = if self.path.is_empty() {
            name.to_string()
        } else if self.path.starts_with('[') {
            format!("{name}{}", self.path)
        } else {
            format!("{name}.{}", self.path)
        };
        self
    }
}

/// The JSON kind of a value, for errors.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// Encodes JSON values (in the shape [`Decoder`] produces) as plain little-endian CDR of the
/// types in one [`TypeSet`]. A field left out is the zero of its type (0, false, "", an empty
/// sequence, a fixed array of zeros, a nested message of zeros), as a freshly made ROS message
/// has it; a key that is not a field, a value of the wrong kind or out of its type's range, or a
/// bound exceeded is an error naming the field. `encode(decode(x))` is `x` (without any padding
/// a writer left after the message).
pub struct Encoder<'s> {
    set: &'s TypeSet,
    wchar: WcharWidth,
}

impl<'s> Encoder<'s> {
    /// An encoder over `set`; `wchar` says how `wstring` code units are sized.
    pub fn new(set: &'s TypeSet, wchar: WcharWidth) -> Self {
        Encoder { set, wchar }
    }

    /// The payload (after the encapsulation header) of `msg` as a value of type `id`.
    pub fn encode(&self, id: usize, msg: &Map<String, Value>) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.message(id, Some(msg), &mut out)?;
        Ok(out)
    }

    fn message(
        &self,
        id: usize,
        msg: Option<&Map<String, Value>>,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let Some(t) = self.set.get(id) else {
            return Err(EncodeError::new("unknown type"));
        };
        if let Some(m) = msg
            && let Some(k) = m
                .keys()
                .find(|k| !t.fields.iter().any(|f| !f.hidden && &f.name == *k))
        {
            let names: Vec<&str> = t
                .fields
                .iter()
                .filter(|f| !f.hidden)
                .map(|f| f.name.as_str())
                .collect();
            let known = if names.is_empty() {
                "it has none".to_string()
            } else {
                format!("its fields: {}", names.join(", "))
            };
            return Err(EncodeError::new(format!("not a field of {} ({known})", t.name)).within(k));
        }
        for f in &t.fields {
            let v = if f.hidden {
                None
            } else {
                msg.and_then(|m| m.get(&f.name))
            };
            self.field(f, v, out).map_err(|e| e.within(&f.name))?;
        }
        Ok(())
    }

    fn field(&self, f: &Field, v: Option<&Value>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let items = match v {
            None => None,
            Some(_) if f.shape == Shape::One => None,
            Some(Value::Array(a)) => Some(a),
            Some(other) => {
                return Err(EncodeError::new(format!(
                    "must be an array, not {}",
                    kind(other)
                )));
            }
        };
        match f.shape {
            Shape::One => self.scalar(f.scalar, v, out),
            Shape::Array(n) => {
                let n = n as usize;
                match items {
                    Some(a) if a.len() != n => Err(EncodeError::new(format!(
                        "a fixed array of {n} elements, not {}",
                        a.len()
                    ))),
                    Some(a) => self.elements(f.scalar, a, out),
                    None => (0..n).try_for_each(|_| self.scalar(f.scalar, None, out)),
                }
            }
            Shape::Seq(bound) => {
                let a = items.map_or(&[][..], Vec::as_slice);
                if let Some(b) = bound
                    && a.len() > b as usize
                {
                    return Err(EncodeError::new(format!(
                        "sequence of {} exceeds its bound {b}",
                        a.len()
                    )));
                }
                put_aligned(out, &(a.len() as u32).to_le_bytes());
                self.elements(f.scalar, a, out)
            }
        }
    }

    fn elements(&self, s: Scalar, a: &[Value], out: &mut Vec<u8>) -> Result<(), EncodeError> {
        for (i, v) in a.iter().enumerate() {
            self.scalar(s, Some(v), out)
                .map_err(|e| e.within(&format!("[{i}]")))?;
        }
        Ok(())
    }

    fn scalar(&self, s: Scalar, v: Option<&Value>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let int = |lo: i128, hi: i128| -> Result<i128, EncodeError> {
            let Some(v) = v else { return Ok(0) };
            let n = match v {
                Value::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from)),
                _ => None,
            };
            match n {
                Some(n) if (lo..=hi).contains(&n) => Ok(n),
                Some(n) => Err(EncodeError::new(format!(
                    "{n} is out of range ({lo} to {hi})"
                ))),
                None => Err(EncodeError::new(format!(
                    "must be an integer, not {}",
                    match v {
                        Value::Number(_) => "a float",
                        other => kind(other),
                    }
                ))),
            }
        };
        match s {
            Scalar::Bool => match v {
                None => out.push(0),
                Some(Value::Bool(b)) => out.push(u8::from(*b)),
                Some(o) => {
                    return Err(EncodeError::new(format!("must be a bool, not {}", kind(o))));
                }
            },
            Scalar::Byte | Scalar::Char | Scalar::U8 => out.push(int(0, 255)? as u8),
            Scalar::I8 => out.push(int(-128, 127)? as i8 as u8),
            Scalar::I16 => put_aligned(out, &(int(-32768, 32767)? as i16).to_le_bytes()),
            Scalar::U16 => put_aligned(out, &(int(0, 65535)? as u16).to_le_bytes()),
            Scalar::I32 => put_aligned(
                out,
                &(int(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes(),
            ),
            Scalar::U32 => put_aligned(out, &(int(0, u32::MAX.into())? as u32).to_le_bytes()),
            Scalar::I64 => put_aligned(
                out,
                &(int(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes(),
            ),
            Scalar::U64 => put_aligned(out, &(int(0, u64::MAX.into())? as u64).to_le_bytes()),
            Scalar::F32 => {
                let x = number(v)?;
                if x.is_finite() && (x as f32).is_infinite() {
                    return Err(EncodeError::new(format!(
                        "{x:e} is out of range for float32"
                    )));
                }
                put_aligned(out, &(x as f32).to_le_bytes());
            }
            Scalar::F64 => put_aligned(out, &number(v)?.to_le_bytes()),
            Scalar::Str(bound) => {
                let text = text(v)?;
                if text.contains('\0') {
                    return Err(EncodeError::new("a string cannot hold a NUL"));
                }
                if let Some(b) = bound
                    && text.len() > b as usize
                {
                    return Err(EncodeError::new(format!(
                        "string of {} bytes exceeds its bound {b}",
                        text.len()
                    )));
                }
                put_aligned(out, &(text.len() as u32 + 1).to_le_bytes());
                put(out, text.as_bytes());
                out.push(0);
            }
            Scalar::WStr(bound) => {
                let text = text(v)?;
                let units: Vec<u32> = match self.wchar {
                    WcharWidth::Two => text.encode_utf16().map(u32::from).collect(),
                    WcharWidth::Four => text.chars().map(u32::from).collect(),
                };
                if let Some(b) = bound
                    && units.len() > b as usize
                {
                    return Err(EncodeError::new(format!(
                        "wstring of {} units exceeds its bound {b}",
                        units.len()
                    )));
                }
                put_aligned(out, &(units.len() as u32).to_le_bytes());
                for u in units {
                    match self.wchar {
                        WcharWidth::Two => put(out, &(u as u16).to_le_bytes()),
                        WcharWidth::Four => put(out, &u.to_le_bytes()),
                    }
                }
            }
            Scalar::Msg(i) => match v {
                None => self.message(i, None, out)?,
                Some(Value::Object(m)) => self.message(i, Some(m), out)?,
                Some(o) => {
                    return Err(EncodeError::new(format!(
                        "must be a table (a message), not {}",
                        kind(o)
                    )));
                }
            },
        }
        Ok(())
    }
}

/// A float field's value: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` as the decoder
/// writes them; 0 when left out.
fn number(v: Option<&Value>) -> Result<f64, EncodeError> {
    match v {
        None => Ok(0.0),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| EncodeError::new("not a float64")),
        Some(Value::String(s)) if s == "NaN" => Ok(f64::NAN),
        Some(Value::String(s)) if s == "Infinity" => Ok(f64::INFINITY),
        Some(Value::String(s)) if s == "-Infinity" => Ok(f64::NEG_INFINITY),
        Some(o) => Err(EncodeError::new(format!(
            "must be a number, not {}",
            kind(o)
        ))),
    }
}

/// A string field's value; "" when left out.
fn text(v: Option<&Value>) -> Result<&str, EncodeError> {
    match v {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(o) => Err(EncodeError::new(format!(
            "must be a string, not {}",
            kind(o)
        ))),
    }
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b);
}

/// Pads to the value's own size (alignment counts from the payload's start), then writes it.
fn put_aligned(out: &mut Vec<u8>, b: &[u8]) {
    let rem = out.len() % b.len();
    if rem != 0 {
        out.resize(out.len() + b.len() - rem, 0);
    }
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests;
