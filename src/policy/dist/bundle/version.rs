//! Runtime version constraints: what a bundle's `required_runtime_version` may say, and whether
//! this runtime satisfies it.

/// A comparison in a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `<=`
    Le,
    /// `<`
    Lt,
    /// `=`, also a bare version.
    Eq,
}

impl Op {
    /// Tried in this order, so `<=` is not read as `<` followed by `=1.0`.
    const PREFIXES: [(&'static str, Op); 5] = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
        ("=", Op::Eq),
    ];

    /// Whether `have` satisfies `have OP want`.
    pub fn holds(self, have: &semver::Version, want: &semver::Version) -> bool {
        match self {
            Op::Ge => have >= want,
            Op::Gt => have > want,
            Op::Le => have <= want,
            Op::Lt => have < want,
            Op::Eq => have == want,
        }
    }
}

/// One `OPversion` of a constraint list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// The comparison.
    pub op: Op,
    /// The version compared with.
    pub version: semver::Version,
}

/// A constraint list that does not parse, or a runtime that does not satisfy it.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// One constraint is not `OPversion` with a semver version.
    #[error(
        "invalid runtime version constraint {token:?}: {error} (use e.g. \">=0.1.0 <2.0.0\"; operators >=, >, <=, <, =)"
    )]
    Constraint {
        /// The constraint as written.
        token: String,
        /// What semver said about its version.
        error: semver::Error,
    },
    /// The runtime's own version is not semver.
    #[error("runtime version {runtime} is not semver: {error}")]
    Runtime {
        /// The runtime version.
        runtime: String,
        /// What semver said.
        error: semver::Error,
    },
    /// The runtime is outside the constraints.
    #[error("bundle requires runtime {required}, have {runtime}")]
    Unsatisfied {
        /// The constraints, separated by single spaces.
        required: String,
        /// The runtime version.
        runtime: String,
    },
}

/// Parses a space-separated list of `OPversion` constraints (`>=`, `>`, `<=`, `<`, `=`).
pub fn parse_constraints(s: &str) -> Result<Vec<Constraint>, VersionError> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (op, rest) = Op::PREFIXES
            .iter()
            .find_map(|(p, op)| tok.strip_prefix(p).map(|r| (*op, r)))
            .unwrap_or((Op::Eq, tok));
        let version = semver::Version::parse(rest).map_err(|error| VersionError::Constraint {
            token: tok.to_string(),
            error,
        })?;
        out.push(Constraint { op, version });
    }
    Ok(out)
}

/// Checks that `runtime` satisfies every constraint in `s`.
pub fn check_runtime(s: &str, runtime: &str) -> Result<(), VersionError> {
    let cs = parse_constraints(s)?;
    let have = semver::Version::parse(runtime).map_err(|error| VersionError::Runtime {
        runtime: runtime.to_string(),
        error,
    })?;
    if cs.iter().all(|c| c.op.holds(&have, &c.version)) {
        Ok(())
    } else {
        Err(VersionError::Unsatisfied {
            required: s.split_whitespace().collect::<Vec<_>>().join(" "),
            runtime: runtime.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints() {
        assert!(check_runtime("", "0.1.0").is_ok());
        assert!(check_runtime(">=0.1.0 <2.0.0", "0.1.0").is_ok());
        assert!(check_runtime("=0.1.0", "0.1.0").is_ok());
        assert!(check_runtime("0.1.0", "0.1.0").is_ok());
        assert!(check_runtime("<=0.1.0", "0.1.0").is_ok());
        assert!(check_runtime(">0.1.0", "0.1.0").is_err());
        assert!(check_runtime("<0.1.0", "0.1.0").is_err());
        assert_eq!(
            check_runtime(">=99.0.0", "0.1.0").unwrap_err().to_string(),
            "bundle requires runtime >=99.0.0, have 0.1.0"
        );
        assert!(parse_constraints("~1.0").is_err());
        assert_eq!(
            parse_constraints(" <=1.2.3  >1.0.0 ").unwrap(),
            [
                Constraint {
                    op: Op::Le,
                    version: semver::Version::new(1, 2, 3)
                },
                Constraint {
                    op: Op::Gt,
                    version: semver::Version::new(1, 0, 0)
                }
            ]
        );
    }

    #[test]
    fn a_runtime_version_that_is_not_semver() {
        assert_eq!(
            check_runtime("", "dev").unwrap_err().to_string(),
            "runtime version dev is not semver: unexpected character 'd' while parsing major version number"
        );
    }
}
