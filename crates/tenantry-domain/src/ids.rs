//! Identifier newtypes. Tenant and route ids are slugs: `[a-z0-9-]{1,63}`.

use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid slug id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("must not be empty")]
    Empty,
    /// The id is longer than 63 characters.
    #[error("must be at most 63 characters, got {0}")]
    TooLong(usize),
    /// The id holds a character outside `[a-z0-9-]`.
    #[error("invalid character {0:?}: only lowercase letters, digits and '-' are allowed")]
    InvalidChar(char),
    /// The id starts or ends with `-`.
    #[error("must not start or end with '-'")]
    EdgeHyphen,
}

fn check_slug(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > 63 {
        return Err(IdError::TooLong(s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(IdError::InvalidChar(c));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(IdError::EdgeHyphen);
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses a slug (`[a-z0-9-]{1,63}`, no leading or trailing `-`).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_slug(s)?;
                Ok(Self(Arc::from(s)))
            }

            /// Like [`Self::parse`], reusing an existing shared string (ids that many
            /// tenants repeat, such as route `web`, then share one allocation).
            pub fn from_shared(s: Arc<str>) -> Result<Self, IdError> {
                check_slug(&s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

slug_id!(
    /// A tenant's id, e.g. `acme`.
    TenantId
);
slug_id!(
    /// A route's id, unique within its tenant, e.g. `web`.
    RouteId
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expect: Result<(), IdError>) {
        assert_eq!(
            TenantId::parse(input).map(|_| ()),
            expect,
            "input {input:?}"
        );
    }

    #[test]
    fn accepts_and_rejects_slugs() {
        check("acme", Ok(()));
        check("a-1", Ok(()));
        check(&"a".repeat(63), Ok(()));
        check("", Err(IdError::Empty));
        check(&"a".repeat(64), Err(IdError::TooLong(64)));
        check("Acme", Err(IdError::InvalidChar('A')));
        check("a_b", Err(IdError::InvalidChar('_')));
        check("-a", Err(IdError::EdgeHyphen));
        check("a-", Err(IdError::EdgeHyphen));
    }
}
