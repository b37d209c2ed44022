//! Messages from regorus and from the registry client, made fit for one line of output and one
//! field of a WAL record. Both sides of the policy module use it: evaluation (compiler and
//! evaluation errors) and distribution (registry errors).

/// Most characters kept of a compiler or evaluation message.
pub(crate) const MAX_CHARS: usize = 500;

/// `s` on one line: every line trimmed, blank ones dropped, the rest joined with one space; at
/// most `max` characters.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_trimmed_joined_and_cut() {
        assert_eq!(
            one_line("  error: x\n\n   |  allow if {\r\n   ^ \n", MAX_CHARS),
            "error: x |  allow if { ^"
        );
        assert_eq!(one_line("abcdef\nghi", 5), "abcde");
        assert_eq!(one_line(&"é".repeat(600), MAX_CHARS).chars().count(), 500);
        assert_eq!(one_line(" \n \n", MAX_CHARS), "");
    }
}
