//! ROS 2 message definitions: `.msg` files parsed into types the CDR decoder walks.
//!
//! A type is found by its ROS name (`geometry_msgs/msg/Twist`, or `geometry_msgs/Twist`) in this
//! order: `.msg` files under each `--msg-path` directory (`DIR/<pkg>/msg/<Name>.msg` or
//! `DIR/share/<pkg>/msg/<Name>.msg`), the definitions built into the binary
//! ([`super::builtin::BUILTIN`]), then each `AMENT_PREFIX_PATH` entry
//! (`PREFIX/share/<pkg>/msg/<Name>.msg`). Every type a bridged type refers to is resolved when
//! the bridge starts, so a missing or bad definition is a start-up error, never a runtime one.
//!
//! The grammar is the `.msg` one rosidl reads: one `TYPE NAME [DEFAULT]` field or
//! `TYPE NAME=VALUE` constant per line, `#` comments. Constants and default values do not
//! change the wire format and are skipped. A message without fields gets rosidl's one-byte
//! placeholder member.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::builtin::BUILTIN;

/// Largest `.msg` file read.
pub const MAX_MSG_FILE: u64 = 256 * 1024;
/// Most fields in one message type.
pub const MAX_FIELDS: usize = 1024;
/// Deepest nesting of message types (a type inside a type inside …).
pub const MAX_DEPTH: usize = 32;
/// Most distinct types one bridge resolves.
pub const MAX_TYPES: usize = 4096;
/// Largest fixed array or sequence bound a definition may declare.
pub const MAX_BOUND: u32 = 1 << 24;

/// The name rosidl gives the placeholder member of an empty message.
pub(crate) const PLACEHOLDER: &str = "structure_needs_at_least_one_member";

/// A field's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    /// `bool` (one byte, 0 or 1).
    Bool,
    /// `byte` (an octet).
    Byte,
    /// `char` (ROS 2 maps it to `uint8`).
    Char,
    /// `int8`.
    I8,
    /// `uint8`.
    U8,
    /// `int16`.
    I16,
    /// `uint16`.
    U16,
    /// `int32`.
    I32,
    /// `uint32`.
    U32,
    /// `int64`.
    I64,
    /// `uint64`.
    U64,
    /// `float32`.
    F32,
    /// `float64`.
    F64,
    /// `string` or `string<=N`.
    Str(Option<u32>),
    /// `wstring` or `wstring<=N`.
    WStr(Option<u32>),
    /// A nested message: its index in the [`TypeSet`].
    Msg(usize),
}

impl Scalar {
    /// Fewest bytes one value takes on the wire (alignment aside): what bounds a sequence count
    /// by the bytes left.
    fn min_size(self, set: &TypeSet) -> usize {
        match self {
            Scalar::Bool | Scalar::Byte | Scalar::Char | Scalar::I8 | Scalar::U8 => 1,
            Scalar::I16 | Scalar::U16 => 2,
            Scalar::I32 | Scalar::U32 | Scalar::F32 | Scalar::Str(_) | Scalar::WStr(_) => 4,
            Scalar::I64 | Scalar::U64 | Scalar::F64 => 8,
            Scalar::Msg(i) => set.types.get(i).map_or(1, |t| t.min_size),
        }
    }
}

/// One value, a fixed array, or a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One value.
    One,
    /// `T[N]`: exactly N values, no length on the wire.
    Array(u32),
    /// `T[]` or `T[<=N]`: a `u32` count, then the values.
    Seq(Option<u32>),
}

/// One field of a message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Its name (the JSON key).
    pub name: String,
    /// Its value type.
    pub scalar: Scalar,
    /// One, array or sequence.
    pub shape: Shape,
    /// rosidl's placeholder in an empty message: decoded, left out of the JSON.
    pub hidden: bool,
}

/// A resolved message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsgType {
    /// `pkg/msg/Name`.
    pub name: String,
    /// Its fields, in wire order.
    pub fields: Vec<Field>,
    /// Fewest bytes a value of it takes (alignment aside); at least 1.
    pub min_size: usize,
}

/// Why a type cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    /// The name is not `pkg/msg/Name` or `pkg/Name`.
    #[error("{0:?} is not a ROS message type name such as geometry_msgs/msg/Twist")]
    BadName(String),
    /// No definition anywhere.
    #[error(
        "no definition of {name} (built in: std_msgs, geometry_msgs, sensor_msgs, nav_msgs, builtin_interfaces; others are read from --msg-path DIR or AMENT_PREFIX_PATH as <pkg>/msg/<Name>.msg){via}"
    )]
    NotFound {
        /// The type.
        name: String,
        /// `, needed by …` when another type refers to it.
        via: String,
    },
    /// A definition file that cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: String,
    },
    /// A definition that does not parse.
    #[error("{name} line {line}: {error}")]
    Parse {
        /// The type.
        name: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        error: String,
    },
    /// A type that contains itself, or types nested deeper than [`MAX_DEPTH`].
    #[error("{0}")]
    Structure(String),
}

/// Normalises `pkg/msg/Name` or `pkg/Name` to `pkg/msg/Name`.
pub fn normalize(type_name: &str) -> Result<String, MsgError> {
    let bad = || MsgError::BadName(type_name.to_string());
    let parts: Vec<&str> = type_name.split('/').collect();
    let (pkg, name) = match parts.as_slice() {
        [pkg, "msg", name] | [pkg, name] => (*pkg, *name),
        _ => return Err(bad()),
    };
    if !valid_package(pkg) || !valid_type(name) {
        return Err(bad());
    }
    Ok(format!("{pkg}/msg/{name}"))
}

fn valid_package(p: &str) -> bool {
    p.starts_with(|c: char| c.is_ascii_lowercase())
        && p.len() <= 128
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn valid_type(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_uppercase())
        && n.len() <= 128
        && n.chars().all(|c| c.is_ascii_alphanumeric())
}

fn valid_field(n: &str) -> bool {
    n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.len() <= 128
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where definitions are looked up.
#[derive(Debug, Clone, Default)]
pub struct Library {
    /// `--msg-path` directories, searched before the built-in definitions.
    pub msg_paths: Vec<PathBuf>,
    /// `AMENT_PREFIX_PATH` prefixes, searched after them.
    pub ament_prefixes: Vec<PathBuf>,
}

impl Library {
    /// `--msg-path` directories plus `AMENT_PREFIX_PATH` from the environment.
    pub fn from_env(msg_paths: Vec<PathBuf>) -> Library {
        let ament_prefixes = std::env::var_os("AMENT_PREFIX_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Library {
            msg_paths,
            ament_prefixes,
        }
    }

    /// The `.msg` text of `pkg/msg/Name`, and where it came from.
    fn text(&self, name: &str) -> Result<Option<(String, String)>, MsgError> {
        let (pkg, rest) = name.split_once("/msg/").unwrap_or((name, ""));
        let file = format!("{rest}.msg");
        for d in &self.msg_paths {
            for p in [
                d.join(pkg).join("msg").join(&file),
                d.join("share").join(pkg).join("msg").join(&file),
            ] {
                if let Some(t) = read_msg(&p)? {
                    return Ok(Some((t, p.display().to_string())));
                }
            }
        }
        if let Some((_, t)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            return Ok(Some(((*t).to_string(), "built in".into())));
        }
        for prefix in &self.ament_prefixes {
            let p = prefix.join("share").join(pkg).join("msg").join(&file);
            if let Some(t) = read_msg(&p)? {
                return Ok(Some((t, p.display().to_string())));
            }
        }
        Ok(None)
    }
}

fn read_msg(p: &Path) -> Result<Option<String>, MsgError> {
    let err = |e: &dyn std::fmt::Display| MsgError::Read {
        path: p.display().to_string(),
        error: e.to_string(),
    };
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(&e)),
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_MSG_FILE {
        return Err(err(&format!("larger than {MAX_MSG_FILE} bytes")));
    }
    std::fs::read_to_string(p).map(Some).map_err(|e| err(&e))
}

/// The message types one bridge uses, each nested type resolved to an index.
#[derive(Debug, Default)]
pub struct TypeSet {
    types: Vec<MsgType>,
    by_name: HashMap<String, usize>,
    /// The `.msg` text of every type, for type hashes.
    texts: BTreeMap<String, String>,
}

/// A field as parsed, before nested names are resolved.
struct RawField {
    name: String,
    base: RawBase,
    shape: Shape,
    hidden: bool,
}

enum RawBase {
    Scalar(Scalar),
    Msg(String),
}

impl TypeSet {
    /// An empty set.
    pub fn new() -> TypeSet {
        TypeSet::default()
    }

    /// The type at `id`.
    pub fn get(&self, id: usize) -> Option<&MsgType> {
        self.types.get(id)
    }

    /// The id of an already resolved type.
    pub fn id(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The `.msg` texts of every resolved type, by ROS name.
    pub fn texts(&self) -> &BTreeMap<String, String> {
        &self.texts
    }

    /// Resolves `type_name` and everything it refers to; returns its id.
    pub fn resolve(&mut self, lib: &Library, type_name: &str) -> Result<usize, MsgError> {
        let name = normalize(type_name)?;
        let mut visiting = Vec::new();
        self.resolve_inner(lib, &name, &mut visiting)
    }

    fn resolve_inner(
        &mut self,
        lib: &Library,
        name: &str,
        visiting: &mut Vec<String>,
    ) -> Result<usize, MsgError> {
        if let Some(id) = self.by_name.get(name) {
            return Ok(*id);
        }
        if visiting.iter().any(|v| v == name) {
            return Err(MsgError::Structure(format!(
                "{name} contains itself ({} → {name}): recursive messages cannot be bridged",
                visiting.join(" → ")
            )));
        }
        if visiting.len() >= MAX_DEPTH {
            return Err(MsgError::Structure(format!(
                "{} nests message types deeper than {MAX_DEPTH} levels",
                visiting.first().map_or(name, String::as_str)
            )));
        }
        if self.types.len() >= MAX_TYPES {
            return Err(MsgError::Structure(format!(
                "more than {MAX_TYPES} message types"
            )));
        }
        let (text, _origin) = lib.text(name)?.ok_or_else(|| MsgError::NotFound {
            name: name.to_string(),
            via: visiting
                .last()
                .map(|v| format!(", needed by {v}"))
                .unwrap_or_default(),
        })?;
        let raw = parse(name, &text)?;
        visiting.push(name.to_string());
        let mut fields = Vec::with_capacity(raw.len());
        for f in raw {
            let scalar = match f.base {
                RawBase::Scalar(s) => s,
                RawBase::Msg(n) => Scalar::Msg(self.resolve_inner(lib, &n, visiting)?),
            };
            fields.push(Field {
                name: f.name,
                scalar,
                shape: f.shape,
                hidden: f.hidden,
            });
        }
        visiting.pop();
        let min_size = fields
            .iter()
            .map(|f| match f.shape {
                Shape::One => f.scalar.min_size(self),
                Shape::Array(n) => f.scalar.min_size(self).saturating_mul(n as usize),
                Shape::Seq(_) => 4,
            })
            .fold(0usize, usize::saturating_add)
            .max(1);
        let id = self.types.len();
        self.types.push(MsgType {
            name: name.to_string(),
            fields,
            min_size,
        });
        self.by_name.insert(name.to_string(), id);
        self.texts.insert(name.to_string(), text);
        Ok(id)
    }
}

fn primitive(t: &str) -> Option<Scalar> {
    Some(match t {
        "bool" => Scalar::Bool,
        "byte" => Scalar::Byte,
        "char" => Scalar::Char,
        "int8" => Scalar::I8,
        "uint8" => Scalar::U8,
        "int16" => Scalar::I16,
        "uint16" => Scalar::U16,
        "int32" => Scalar::I32,
        "uint32" => Scalar::U32,
        "int64" => Scalar::I64,
        "uint64" => Scalar::U64,
        "float32" => Scalar::F32,
        "float64" => Scalar::F64,
        "string" => Scalar::Str(None),
        "wstring" => Scalar::WStr(None),
        _ => return None,
    })
}

fn bound(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_BOUND).contains(&n) => Ok(n),
        _ => Err(format!("bad bound {text:?} (1 to {MAX_BOUND})")),
    }
}

/// Parses one field type of package `pkg`.
fn field_type(pkg: &str, t: &str) -> Result<(RawBase, Shape), String> {
    let (base, suffix) = match t.find('[') {
        Some(i) => (&t[..i], Some(&t[i..])),
        None => (t, None),
    };
    let shape = match suffix {
        None => Shape::One,
        Some("[]") => Shape::Seq(None),
        Some(s) => {
            let inner = s
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or_else(|| format!("bad array suffix in {t:?}"))?;
            match inner.strip_prefix("<=") {
                Some(n) => Shape::Seq(Some(bound(n)?)),
                None => Shape::Array(bound(inner)?),
            }
        }
    };
    let base = if let Some(n) = base.strip_prefix("string<=") {
        RawBase::Scalar(Scalar::Str(Some(bound(n)?)))
    } else if let Some(n) = base.strip_prefix("wstring<=") {
        RawBase::Scalar(Scalar::WStr(Some(bound(n)?)))
    } else if let Some(s) = primitive(base) {
        RawBase::Scalar(s)
    } else {
        // `pkg/Name` or `pkg/msg/Name`, or a bare `Name` of the same package.
        let full = if base.contains('/') {
            normalize(base).map_err(|_| format!("unknown field type {t:?}"))?
        } else if valid_type(base) {
            format!("{pkg}/msg/{base}")
        } else {
            return Err(format!("unknown field type {t:?}"));
        };
        RawBase::Msg(full)
    };
    Ok((base, shape))
}

/// Parses the `.msg` text of `name` (`pkg/msg/Name`) into its fields.
fn parse(name: &str, text: &str) -> Result<Vec<RawField>, MsgError> {
    let pkg = name.split('/').next().unwrap_or_default();
    let mut fields: Vec<RawField> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |error: String| MsgError::Parse {
            name: name.to_string(),
            line: i + 1,
            error,
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(t), Some(field)) = (words.next(), words.next()) else {
            return Err(err(format!("expected `TYPE NAME`, found {line:?}")));
        };
        // `TYPE NAME=VALUE` or `TYPE NAME = VALUE` is a constant: not on the wire.
        if field.contains('=') || words.next().is_some_and(|w| w.starts_with('=')) {
            continue;
        }
        let field = field.split('#').next().unwrap_or_default();
        if !valid_field(field) {
            return Err(err(format!("bad field name {field:?}")));
        }
        if fields.iter().any(|f| f.name == field) {
            return Err(err(format!("field {field:?} is defined twice")));
        }
        if fields.len() >= MAX_FIELDS {
            return Err(err(format!("more than {MAX_FIELDS} fields")));
        }
        let (base, shape) = field_type(pkg, t).map_err(err)?;
        fields.push(RawField {
            name: field.to_string(),
            base,
            shape,
            hidden: false,
        });
    }
    if fields.is_empty() {
        fields.push(RawField {
            name: PLACEHOLDER.into(),
            base: RawBase::Scalar(Scalar::U8),
            shape: Shape::One,
            hidden: true,
        });
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin_only() -> Library {
        Library::default()
    }

    #[test]
    fn names_normalise() {
        assert_eq!(
            normalize("geometry_msgs/Twist").unwrap(),
            "geometry_msgs/msg/Twist"
        );
        assert_eq!(
            normalize("geometry_msgs/msg/Twist").unwrap(),
            "geometry_msgs/msg/Twist"
        );
        for bad in [
            "Twist",
            "geometry_msgs/srv/Twist",
            "a/b/c/d",
            "Geo/Twist",
            "g/twist",
            "",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_builtin_definition_resolves() {
        let mut set = TypeSet::new();
        for (name, _) in BUILTIN {
            set.resolve(&builtin_only(), name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let twist = set.get(set.id("geometry_msgs/msg/Twist").unwrap()).unwrap();
        assert_eq!(twist.min_size, 48);
        let names: Vec<_> = twist.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["linear", "angular"]);
        let odom = set.id("nav_msgs/msg/Odometry").unwrap();
        assert!(
            set.get(odom)
                .unwrap()
                .fields
                .iter()
                .any(|f| f.name == "twist")
        );
        // std_msgs/Empty gets the placeholder byte, hidden from the JSON.
        let e = set.get(set.id("std_msgs/msg/Empty").unwrap()).unwrap();
        assert!(e.fields[0].hidden && e.fields[0].name == PLACEHOLDER);
    }

    #[test]
    fn shapes_constants_defaults_and_comments() {
        let f = parse(
            "p/msg/M",
            "# header\nuint8 A=1\nint8 B = -2 # c\nfloat64 w 1.0\nstring<=9[<=3] s\nchar[16] g # x\nOther[] o\nq/Name n\nq/msg/Name m\nstring s2 \"a # b\"\n",
        )
        .unwrap();
        let got: Vec<_> = f.iter().map(|f| (f.name.as_str(), f.shape)).collect();
        assert_eq!(
            got,
            [
                ("w", Shape::One),
                ("s", Shape::Seq(Some(3))),
                ("g", Shape::Array(16)),
                ("o", Shape::Seq(None)),
                ("n", Shape::One),
                ("m", Shape::One),
                ("s2", Shape::One),
            ]
        );
        assert!(matches!(f[1].base, RawBase::Scalar(Scalar::Str(Some(9)))));
        assert!(matches!(&f[3].base, RawBase::Msg(n) if n == "p/msg/Other"));
        assert!(matches!(&f[4].base, RawBase::Msg(n) if n == "q/msg/Name"));
    }

    #[test]
    fn bad_definitions_name_the_line() {
        for (text, want) in [
            ("floatz x", "line 1: unknown field type"),
            ("int32 x\nint32[x] y", "line 2: bad bound"),
            ("int32[0] y", "bad bound"),
            ("int32", "expected `TYPE NAME`"),
            ("int32 x\nint32 x", "defined twice"),
            ("int32 9x", "bad field name"),
        ] {
            let e = match parse("p/msg/M", text) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{text:?} parsed"),
            };
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn msg_path_files_missing_types_and_cycles() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("my_pkg/msg");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("Cmd.msg"),
            "geometry_msgs/Twist twist\nInner[<=4] inner\n",
        )
        .unwrap();
        std::fs::write(dir.join("Inner.msg"), "string<=8 tag\nfloat32[3] v\n").unwrap();
        std::fs::write(dir.join("Loop.msg"), "Loop2 next\n").unwrap();
        std::fs::write(dir.join("Loop2.msg"), "Loop[] back\n").unwrap();
        std::fs::write(dir.join("Broken.msg"), "Missing m\n").unwrap();
        let lib = Library {
            msg_paths: vec![tmp.path().to_path_buf()],
            ament_prefixes: vec![],
        };
        let mut set = TypeSet::new();
        let id = set.resolve(&lib, "my_pkg/Cmd").unwrap();
        assert_eq!(set.get(id).unwrap().name, "my_pkg/msg/Cmd");
        assert!(set.texts().contains_key("my_pkg/msg/Inner"));
        assert!(set.texts().contains_key("geometry_msgs/msg/Vector3"));
        let e = set
            .resolve(&lib, "my_pkg/msg/Loop")
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains itself"), "{e}");
        let e = set
            .resolve(&lib, "my_pkg/msg/Broken")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no definition of my_pkg/msg/Missing")
                && e.contains("needed by my_pkg/msg/Broken"),
            "{e}"
        );
        let e = set
            .resolve(&lib, "nope_msgs/msg/X")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no definition of nope_msgs/msg/X"), "{e}");
        // AMENT_PREFIX_PATH layout.
        let share = tmp.path().join("prefix/share/amt/msg");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("A.msg"), "int64 a").unwrap();
        let lib = Library {
            msg_paths: vec![],
            ament_prefixes: vec![tmp.path().join("prefix")],
        };
        assert!(set.resolve(&lib, "amt/msg/A").is_ok());
    }
}
