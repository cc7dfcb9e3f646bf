//! Authentication: argon2id passwords, access tokens (JWT), API keys and login throttling.
//!
//! Everything here is synchronous and takes time as a parameter (`now` in unix seconds for
//! tokens, `now_ms` for the throttle), so callers and tests control the clock. Randomness comes
//! from the operating system (`getrandom`).
//!
//! - [`hash_password`], [`verify_password`], [`verify_dummy`], [`check_password_policy`]
//! - [`TokenIssuer`] issues and verifies [`Claims`] (HS256, RS256 or ES256)
//! - [`generate_api_key`], [`hash_api_key`], [`random_id`], [`random_password`]
//! - [`Throttle`]: growing back-off per client address and per account

mod api_key;
mod password;
mod throttle;
mod token;

pub use api_key::{
    GeneratedApiKey, generate_api_key, hash_api_key, looks_like_api_key, random_id, random_password,
};
pub use password::{
    PolicyError, check_password_policy, hash_password, verify_dummy, verify_password,
};
pub use throttle::{Throttle, ThrottleConfig};
pub use token::{Claims, JwtAlgorithm, TokenIssuer};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Hashing a password failed (the OS random source or the hasher itself).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// A key file or key configuration is unusable.
    #[error("invalid key: {0}")]
    Key(String),
    /// A token was rejected; the reason is one of `expired`, `not_yet_valid`, `signature`,
    /// `audience`, `issuer`, `malformed`, `algorithm`. Log it, never send it to the client.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// Reading or writing a key file, or the OS random source, failed.
    #[error("i/o failed")]
    Io(#[source] std::io::Error),
}

/// Fills `buf` from the operating system's random source.
fn fill_random(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf).map_err(|e| AuthError::Io(std::io::Error::other(e)))
}
