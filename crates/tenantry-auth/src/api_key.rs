//! API keys (`tn_…`), random ids and bootstrap passwords.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::{AuthError, fill_random};

/// Every API key starts with this, so a bearer token can be told from a JWT at a glance.
const API_KEY_PREFIX: &str = "tn_";
/// Random bytes in an API key: 160 bits.
const API_KEY_BYTES: usize = 20;
/// Characters of the secret shown in listings: `tn_` and 8 hex characters.
const DISPLAY_PREFIX_CHARS: usize = 11;
/// Characters for generated passwords: no `0 O o 1 l I`, which read alike.
const PASSWORD_ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const PASSWORD_CHARS: usize = 24;

/// A freshly generated API key.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratedApiKey {
    /// `tn_` followed by 40 lowercase hex characters (160 random bits); shown to the user once
    /// and never stored.
    pub secret: String,
    /// The first 11 characters of `secret` (`tn_` and 8 hex), stored for display.
    pub prefix: String,
    /// Hex SHA-256 of `secret`, stored and used for lookup. A fast hash is right here: the
    /// secret has 160 bits of entropy, so there is nothing to brute-force.
    pub hash: String,
}

impl fmt::Debug for GeneratedApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedApiKey")
            .field("secret", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("hash", &self.hash)
            .finish()
    }
}

/// Generates a new API key from the OS random source.
pub fn generate_api_key() -> Result<GeneratedApiKey, AuthError> {
    let mut bytes = [0u8; API_KEY_BYTES];
    fill_random(&mut bytes)?;
    let secret = format!("{API_KEY_PREFIX}{}", hex::encode(bytes));
    let prefix = secret[..DISPLAY_PREFIX_CHARS].to_owned();
    let hash = hash_api_key(&secret);
    Ok(GeneratedApiKey {
        secret,
        prefix,
        hash,
    })
}

/// The stored form of an API key: lowercase hex SHA-256 of the whole secret.
pub fn hash_api_key(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Whether a bearer token is an API key (starts with `tn_`) rather than a JWT.
pub fn looks_like_api_key(token: &str) -> bool {
    token.starts_with(API_KEY_PREFIX)
}

/// A random id: `prefix`, `_`, and 16 lowercase hex characters (64 bits), e.g. `u_3f9a…`.
pub fn random_id(prefix: &str) -> Result<String, AuthError> {
    let mut bytes = [0u8; 8];
    fill_random(&mut bytes)?;
    Ok(format!("{prefix}_{}", hex::encode(bytes)))
}

/// A random password for bootstrap accounts: 24 characters from a 56-character alphabet
/// without look-alikes (about 139 bits).
pub fn random_password() -> Result<String, AuthError> {
    // Rejection sampling keeps every character equally likely: accept only bytes below the
    // largest multiple of the alphabet size.
    let alphabet_len = PASSWORD_ALPHABET.len();
    let limit = 256 - 256 % alphabet_len;
    let mut password = String::with_capacity(PASSWORD_CHARS);
    let mut buf = [0u8; 32];
    while password.len() < PASSWORD_CHARS {
        fill_random(&mut buf)?;
        for &b in buf.iter().filter(|&&b| usize::from(b) < limit) {
            if password.len() == PASSWORD_CHARS {
                break;
            }
            password.push(char::from(PASSWORD_ALPHABET[usize::from(b) % alphabet_len]));
        }
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn is_lower_hex(s: &str) -> bool {
        s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    #[test]
    fn api_key_has_the_documented_shape() {
        let key = generate_api_key().unwrap();
        assert_eq!(key.secret.len(), 43);
        assert!(key.secret.starts_with("tn_"));
        assert!(is_lower_hex(&key.secret[3..]));
        assert_eq!(key.prefix, key.secret[..11]);
        assert_eq!(key.hash.len(), 64);
        assert!(is_lower_hex(&key.hash));
        assert_eq!(key.hash, hash_api_key(&key.secret));
        assert!(looks_like_api_key(&key.secret));
        assert!(!looks_like_api_key("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
    }

    #[test]
    fn api_key_hash_is_stable_sha256() {
        // SHA-256("tn_0000000000000000000000000000000000000000"), computed with `sha256sum`.
        assert_eq!(
            hash_api_key("tn_0000000000000000000000000000000000000000"),
            "936071d8874775ff2e06cd07cb96ed395d23cefd3ce4ea0fe71399829244344a"
        );
    }

    #[test]
    fn debug_redacts_the_secret() {
        let key = generate_api_key().unwrap();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&key.secret), "{debug}");
        assert!(debug.contains(&key.prefix));
    }

    #[test]
    fn generated_values_are_unique() {
        let keys: HashSet<_> = (0..200)
            .map(|_| generate_api_key().unwrap().secret)
            .collect();
        assert_eq!(keys.len(), 200);
        let ids: HashSet<_> = (0..200).map(|_| random_id("u").unwrap()).collect();
        assert_eq!(ids.len(), 200);
        let passwords: HashSet<_> = (0..200).map(|_| random_password().unwrap()).collect();
        assert_eq!(passwords.len(), 200);
    }

    #[test]
    fn random_id_is_prefix_and_16_hex() {
        let id = random_id("u").unwrap();
        let (prefix, hex) = id.split_once('_').unwrap();
        assert_eq!(prefix, "u");
        assert_eq!(hex.len(), 16);
        assert!(is_lower_hex(hex));
    }

    #[test]
    fn random_password_uses_the_unambiguous_alphabet() {
        let password = random_password().unwrap();
        assert_eq!(password.chars().count(), 24);
        assert!(password.bytes().all(|b| PASSWORD_ALPHABET.contains(&b)));
        assert!(!password.contains(['0', 'O', 'o', '1', 'l', 'I']));
        assert_eq!(check(&password), Ok(()));
    }

    fn check(password: &str) -> Result<(), crate::PolicyError> {
        crate::check_password_policy(password, "admin@example.com")
    }
}
