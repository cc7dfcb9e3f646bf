//! Host patterns of routes (`acme.example.com`, `*.acme.example.com`) and the normalisation
//! of a request's `Host` header.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Why a host pattern is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host is empty.
    #[error("must not be empty")]
    Empty,
    /// The host is longer than 253 characters.
    #[error("must be at most 253 characters")]
    TooLong,
    /// A label is empty or longer than 63 characters.
    #[error("invalid label {0:?}: labels are 1 to 63 characters")]
    BadLabel(String),
    /// A character outside letters, digits, `-` and `.`.
    #[error("invalid character {0:?} in host")]
    InvalidChar(char),
    /// `*` appears anywhere but as the whole first label.
    #[error("a wildcard must be the whole first label, as in \"*.example.com\"")]
    BadWildcard,
}

/// The host a route answers for: an exact name or every subdomain of a suffix.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this host (lowercase, no port).
    Exact(Arc<str>),
    /// Any host ending in `.` + this suffix (`*.acme.com` stores `acme.com`); the bare
    /// suffix itself does not match.
    Wildcard(Arc<str>),
}

impl HostPattern {
    /// Parses `acme.example.com` or `*.acme.example.com`; letters are lowercased.
    pub fn parse(s: &str) -> Result<Self, HostError> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(HostError::Empty);
        }
        let (wild, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if name.contains('*') {
            return Err(HostError::BadWildcard);
        }
        check_name(name)?;
        let name: Arc<str> = name.into();
        Ok(if wild {
            HostPattern::Wildcard(name)
        } else {
            HostPattern::Exact(name)
        })
    }

    /// Whether a normalised request host matches this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => **h == *host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(&**suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*.{s}"),
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({self})")
    }
}

fn check_name(name: &str) -> Result<(), HostError> {
    if name.len() > 253 {
        return Err(HostError::TooLong);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(HostError::InvalidChar(c));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostError::BadLabel(label.to_owned()));
        }
    }
    Ok(())
}

/// Normalises a request's `Host` header value (or `:authority`): strips the port and a
/// trailing dot, lowercases. Borrows when nothing changes, which is the common case.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let without_port = if raw.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        match raw.find(']') {
            Some(end) => &raw[..=end],
            None => raw,
        }
    } else {
        match raw.rfind(':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    let trimmed = without_port.strip_suffix('.').unwrap_or(without_port);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_and_wildcard() {
        assert_eq!(
            HostPattern::parse("Acme.Localhost"),
            Ok(HostPattern::Exact("acme.localhost".into()))
        );
        assert_eq!(
            HostPattern::parse("*.acme.localhost"),
            Ok(HostPattern::Wildcard("acme.localhost".into()))
        );
        assert_eq!(HostPattern::parse(""), Err(HostError::Empty));
        assert_eq!(HostPattern::parse("a.*.b"), Err(HostError::BadWildcard));
        assert_eq!(
            HostPattern::parse("a..b"),
            Err(HostError::BadLabel(String::new()))
        );
        assert_eq!(HostPattern::parse("a b"), Err(HostError::InvalidChar(' ')));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = HostPattern::parse("*.acme.localhost").unwrap();
        assert!(p.matches("www.acme.localhost"));
        assert!(p.matches("a.b.acme.localhost"));
        assert!(!p.matches("acme.localhost"));
        assert!(!p.matches("xacme.localhost"));
    }

    #[test]
    fn normalizes_request_hosts() {
        assert_eq!(normalize_host("Acme.localhost:8080"), "acme.localhost");
        assert_eq!(normalize_host("acme.localhost."), "acme.localhost");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert!(matches!(normalize_host("acme.localhost"), Cow::Borrowed(_)));
    }
}
