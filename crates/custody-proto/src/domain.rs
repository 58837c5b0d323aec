//! Key selection by domain name: exact names first, then a wildcard
//! `*.parent` that covers exactly one more label.
use std::collections::HashMap;

/// Why a string is not a domain name keys can be installed for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Empty, or longer than 253 bytes.
    #[error("a domain name has 1 to 253 characters")]
    Length,
    /// A label that is empty, too long or has a character outside a-z, 0-9, '-'.
    #[error("label {0:?} is not a DNS label (1 to 63 of a-z, 0-9 and '-', not starting or ending with '-')")]
    BadLabel(String),
    /// `*` somewhere other than as the whole first label, or on a top-level name.
    #[error("a wildcard is allowed only as the whole first label of a name with at least two more labels, as in *.example.com")]
    BadWildcard,
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// Lower-cases a name, drops a trailing dot and checks it. `*.example.com`
/// is accepted; `*` alone, `a.*.com` and `*.com` are not.
pub fn normalize_domain(name: &str) -> Result<String, DomainError> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err(DomainError::Length);
    }
    let mut labels = name.split('.');
    let first = labels.next().expect("split yields at least one item");
    let rest: Vec<&str> = labels.collect();
    if first == "*" {
        if rest.len() < 2 {
            return Err(DomainError::BadWildcard);
        }
    } else if first.contains('*') {
        return Err(DomainError::BadWildcard);
    } else if !valid_label(first) {
        return Err(DomainError::BadLabel(first.to_string()));
    }
    for label in rest {
        if label.contains('*') {
            return Err(DomainError::BadWildcard);
        }
        if !valid_label(label) {
            return Err(DomainError::BadLabel(label.to_string()));
        }
    }
    Ok(name)
}

/// Values by domain name, looked up the way a TLS server picks a key by SNI.
#[derive(Debug, Clone)]
pub struct DomainTable<T> {
    by_name: HashMap<String, T>,
}

impl<T> Default for DomainTable<T> {
    fn default() -> Self {
        Self { by_name: HashMap::new() }
    }
}

impl<T> DomainTable<T> {
    /// Inserts under a name already passed through [`normalize_domain`];
    /// returns the value it replaces.
    pub fn insert(&mut self, name: String, value: T) -> Option<T> {
        self.by_name.insert(name, value)
    }

    /// Removes the value stored under exactly this name.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        self.by_name.remove(name)
    }

    /// The value stored under exactly this name (wildcards are not expanded).
    pub fn get_exact(&self, name: &str) -> Option<&T> {
        self.by_name.get(name)
    }

    /// The value for a server name: the exact name first, else `*.parent`
    /// when the name has exactly one label more than `parent`.
    pub fn lookup(&self, server_name: &str) -> Option<(&str, &T)> {
        let name = server_name.strip_suffix('.').unwrap_or(server_name).to_ascii_lowercase();
        if let Some((k, v)) = self.by_name.get_key_value(&name) {
            return Some((k, v));
        }
        let (_, parent) = name.split_once('.')?;
        if parent.is_empty() {
            return None;
        }
        self.by_name.get_key_value(&format!("*.{parent}")).map(|(k, v)| (k.as_str(), v))
    }

    /// All entries, sorted by name.
    pub fn sorted(&self) -> Vec<(&str, &T)> {
        let mut all: Vec<_> = self.by_name.iter().map(|(k, v)| (k.as_str(), v)).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_normalized_and_checked() {
        assert_eq!(normalize_domain("WWW.Example.COM.").unwrap(), "www.example.com");
        assert_eq!(normalize_domain("*.example.com").unwrap(), "*.example.com");
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        assert_eq!(normalize_domain("*.com"), Err(DomainError::BadWildcard));
        assert_eq!(normalize_domain("a.*.com"), Err(DomainError::BadWildcard));
        assert_eq!(normalize_domain("w*.example.com"), Err(DomainError::BadWildcard));
        assert_eq!(normalize_domain("a..com"), Err(DomainError::BadLabel(String::new())));
        assert_eq!(normalize_domain("-a.com"), Err(DomainError::BadLabel("-a".into())));
        assert_eq!(normalize_domain("a b.com"), Err(DomainError::BadLabel("a b".into())));
        assert_eq!(normalize_domain(""), Err(DomainError::Length));
        assert_eq!(normalize_domain(&"a.".repeat(130)), Err(DomainError::Length));
    }

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_cover_one_label() {
        let mut t = DomainTable::default();
        t.insert("*.example.com".into(), 1);
        t.insert("www.example.com".into(), 2);
        assert_eq!(t.lookup("WWW.example.com."), Some(("www.example.com", &2)));
        assert_eq!(t.lookup("api.example.com"), Some(("*.example.com", &1)));
        assert_eq!(t.lookup("a.b.example.com"), None);
        assert_eq!(t.lookup("example.com"), None);
        assert_eq!(t.lookup("other.org"), None);
        assert_eq!(t.remove("www.example.com"), Some(2));
        assert_eq!(t.lookup("www.example.com"), Some(("*.example.com", &1)));
    }

    proptest! {
        #[test]
        fn arbitrary_names_never_panic(name in ".{0,300}") {
            if let Ok(n) = normalize_domain(&name) {
                prop_assert_eq!(normalize_domain(&n), Ok(n.clone()));
            }
            let mut t = DomainTable::default();
            t.insert("*.example.com".to_string(), ());
            let _ = t.lookup(&name);
        }
    }
}
