//! Runtime version constraints: what a bundle's `required_runtime_version` may say, and whether
//! this runtime satisfies it.

/// Parses a space-separated list of `OPversion` constraints (`>=`, `>`, `<=`, `<`, `=`).
pub fn parse_constraints(s: &str) -> Result<Vec<(String, semver::Version)>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (op, rest) = ["<=", ">=", "<", ">", "="]
            .iter()
            .find_map(|op| tok.strip_prefix(op).map(|r| (*op, r)))
            .unwrap_or(("=", tok));
        let v = semver::Version::parse(rest).map_err(|e| {
            format!(
                "invalid runtime version constraint {tok:?}: {e} (use e.g. \">=0.1.0 <2.0.0\"; operators >=, >, <=, <, =)"
            )
        })?;
        out.push((op.to_string(), v));
    }
    Ok(out)
}

/// Checks that `runtime` satisfies every constraint in `s`.
pub fn check_runtime(s: &str, runtime: &str) -> Result<(), String> {
    let cs = parse_constraints(s)?;
    let have = semver::Version::parse(runtime)
        .map_err(|e| format!("runtime version {runtime} is not semver: {e}"))?;
    let ok = cs.iter().all(|(op, v)| match op.as_str() {
        ">=" => have >= *v,
        ">" => have > *v,
        "<=" => have <= *v,
        "<" => have < *v,
        _ => have == *v,
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bundle requires runtime {}, have {runtime}",
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        ))
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
        assert!(check_runtime(">0.1.0", "0.1.0").is_err());
        assert_eq!(
            check_runtime(">=99.0.0", "0.1.0").unwrap_err(),
            "bundle requires runtime >=99.0.0, have 0.1.0"
        );
        assert!(parse_constraints("~1.0").is_err());
    }
}
