//! Limits given as flags or config values: counts that must be at least 1,
//! and times in seconds, capped where adding them to a clock could overflow.

/// The longest time limit taken, in seconds (a year): beyond what any
/// connection needs, and far from where adding it to a clock overflows.
pub const MAX_SECS: u64 = 365 * 24 * 3600;

/// Why a limit of `v` seconds is refused (what is wrong, the fix), if it is.
/// `zero_ok`: 0 has a meaning (none, never) rather than letting nothing through.
pub fn secs_refusal(v: u64, zero_ok: bool) -> Option<(&'static str, &'static str)> {
    match v {
        0 if !zero_ok => Some(("would let nothing through", "give at least 1")),
        v if v > MAX_SECS => Some(("is longer than a year, more than any limit needs", "give at most 31536000")),
        _ => None,
    }
}

fn parse_secs(s: &str, zero_ok: bool) -> Result<u64, String> {
    let v = s.parse::<u64>().map_err(|_| format!("`{s}` is not a whole number of seconds"))?;
    match secs_refusal(v, zero_ok) {
        Some((what, fix)) => Err(format!("{v} {what}; {fix}")),
        None => Ok(v),
    }
}

/// A flag's seconds where 0 means none or never: 0 to [`MAX_SECS`].
pub fn secs(s: &str) -> Result<u64, String> {
    parse_secs(s, true)
}

/// A flag's seconds where 0 would let nothing through: 1 to [`MAX_SECS`].
pub fn positive_secs(s: &str) -> Result<u64, String> {
    parse_secs(s, false)
}

/// A count of at least 1, for flags where 0 would let nothing through.
pub fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(v) if v >= T::from(1) => Ok(v),
        Ok(_) => Err("0 would let nothing through; give at least 1".into()),
        Err(_) => Err(format!("`{s}` is not a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_checked_at_both_ends() {
        assert_eq!(secs("0"), Ok(0));
        assert!(positive_secs("0").unwrap_err().contains("give at least 1"));
        assert_eq!(positive_secs("31536000"), Ok(MAX_SECS));
        for huge in ["31536001", "18446744073709551615"] {
            assert!(secs(huge).unwrap_err().contains("give at most 31536000"), "{huge}");
        }
        assert!(secs("-1").unwrap_err().contains("not a whole number"));
        assert_eq!(at_least_one::<usize>("3"), Ok(3));
        assert!(at_least_one::<u64>("0").is_err());
    }
}
