//! Password hashing (argon2id, PHC strings) and the minimum password policy.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use argon2::{Argon2, Params};

use crate::AuthError;

/// Shortest accepted password, in characters.
const MIN_CHARS: usize = 12;
/// Longest accepted password, in bytes.
const MAX_BYTES: usize = 1024;

/// Upper bounds on the parameters of a stored hash we agree to verify, so a corrupted or
/// planted row cannot make a login allocate gigabytes (m is in KiB: 256 MiB) or spin for minutes.
const MAX_M_COST: u32 = 256 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 16;

/// Hashes a password with argon2id and the crate's default (OWASP) parameters
/// (m = 19 MiB, t = 2, p = 1) and a random 16-byte salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Verifies a password against a PHC string in constant time.
///
/// Returns false on any malformed hash, on an algorithm other than argon2, and on parameters
/// beyond sane bounds (256 MiB, t = 16, p = 16).
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return false;
    }
    // The output comparison inside `verify_password` is constant-time.
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// Does the work of one real verification against a fixed dummy hash, so that a login for an
/// unknown account takes as long as one for a known account (no user enumeration by timing).
///
/// The dummy hash is computed once, lazily, with the same parameters as [`hash_password`].
pub fn verify_dummy(password: &str) {
    if let Some(hash) = dummy_hash() {
        // The result is meaningless; only the time spent matters.
        let _ = verify_password(hash, password);
    }
}

/// The dummy hash; `None` only if the OS random source failed on first use.
fn dummy_hash() -> Option<&'static str> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password("tenantry dummy password, never matches").ok())
        .as_deref()
}

/// Why a password was refused by [`check_password_policy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Fewer than `min` characters.
    #[error("password must be at least {min} characters")]
    TooShort {
        /// The minimum, in characters.
        min: usize,
    },
    /// More than `max` bytes.
    #[error("password must be at most {max} bytes")]
    TooLong {
        /// The maximum, in bytes.
        max: usize,
    },
    /// The password is the email address or its local part.
    #[error("password must not be the email address")]
    SameAsEmail,
}

/// The minimum password policy: at least 12 characters (Unicode scalar values, not bytes), at
/// most 1024 bytes, and not equal (case-insensitively) to the email address nor to its local
/// part (the text before the last `@`).
pub fn check_password_policy(password: &str, email: &str) -> Result<(), PolicyError> {
    if password.len() > MAX_BYTES {
        return Err(PolicyError::TooLong { max: MAX_BYTES });
    }
    if password.chars().count() < MIN_CHARS {
        return Err(PolicyError::TooShort { min: MIN_CHARS });
    }
    let password = password.to_lowercase();
    let email = email.trim().to_lowercase();
    let local = email
        .rsplit_once('@')
        .map_or(email.as_str(), |(local, _)| local);
    if password == email || password == local {
        return Err(PolicyError::SameAsEmail);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify_round_trips() {
        let hash = hash_password("correct horse battery staple").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password(&hash, "correct horse battery staple"));
        assert!(!verify_password(&hash, "correct horse battery stapler"));
        assert!(!verify_password(&hash, ""));
    }

    #[test]
    fn same_password_hashes_differently_each_time() {
        assert_ne!(hash_password("pw").unwrap(), hash_password("pw").unwrap());
    }

    #[test]
    fn rejects_malformed_hashes() {
        for hash in [
            "",
            "garbage",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$",
            "$argon2id$v=19$m=19456,t=2,p=1$!!!$!!!",
            "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            // Parameters beyond the bounds are refused without hashing (8 GiB here).
            "$argon2id$v=19$m=8388608,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert!(!verify_password(hash, "password"), "{hash}");
        }
    }

    #[test]
    fn dummy_hash_costs_as_much_as_a_real_one() {
        let dummy = PasswordHash::new(dummy_hash().unwrap()).unwrap();
        let real_hash = hash_password("x").unwrap();
        let real = PasswordHash::new(&real_hash).unwrap();
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.params, real.params);
        verify_dummy("anything");
    }

    #[test]
    fn policy_counts_characters_and_bounds_bytes() {
        let email = "alice@example.com";
        assert_eq!(
            check_password_policy("a".repeat(11).as_str(), email),
            Err(PolicyError::TooShort { min: 12 })
        );
        assert_eq!(check_password_policy(&"a".repeat(12), email), Ok(()));
        // 11 two-byte characters are 22 bytes but still too short; 12 of them pass.
        assert_eq!(
            check_password_policy(&"é".repeat(11), email),
            Err(PolicyError::TooShort { min: 12 })
        );
        assert_eq!(check_password_policy(&"é".repeat(12), email), Ok(()));
        assert_eq!(check_password_policy(&"a".repeat(1024), email), Ok(()));
        assert_eq!(
            check_password_policy(&"a".repeat(1025), email),
            Err(PolicyError::TooLong { max: 1024 })
        );
        // 513 two-byte characters: 1026 bytes.
        assert_eq!(
            check_password_policy(&"é".repeat(513), email),
            Err(PolicyError::TooLong { max: 1024 })
        );
    }

    #[test]
    fn policy_refuses_the_email_and_its_local_part() {
        let email = "Alice.Liddell@Example.com";
        assert_eq!(
            check_password_policy("alice.liddell@example.COM", email),
            Err(PolicyError::SameAsEmail)
        );
        assert_eq!(
            check_password_policy("ALICE.LIDDELL", email),
            Err(PolicyError::SameAsEmail)
        );
        assert_eq!(check_password_policy("alice.liddell!", email), Ok(()));
    }

    #[test]
    fn policy_messages_read_as_sentences() {
        assert_eq!(
            PolicyError::TooShort { min: 12 }.to_string(),
            "password must be at least 12 characters"
        );
        assert_eq!(
            PolicyError::TooLong { max: 1024 }.to_string(),
            "password must be at most 1024 bytes"
        );
    }
}
