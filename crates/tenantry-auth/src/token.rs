//! Access tokens: JWTs signed with HS256, RS256 or ES256, issued and verified by [`TokenIssuer`].

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tenantry_domain::Role;

use crate::{AuthError, fill_random};

/// The `aud` claim of every token: the Tenantry admin API.
const AUDIENCE: &str = "tenantry";
/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;
/// Longer tokens are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Name of the HS256 secret file inside the data directory.
const SECRET_FILE: &str = "jwt-secret";
/// Length of a generated HS256 secret: 256 bits.
const SECRET_BYTES: usize = 32;

/// A signing algorithm for access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret: one process, or replicas sharing the secret file.
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256. Note: the pure-Rust `rsa` crate behind it has a timing
    /// advisory on private-key operations (RUSTSEC-2023-0071); prefer ES256 for tokens we sign.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl JwtAlgorithm {
    /// The JOSE name: `HS256`, `RS256`, `ES256`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    fn jose(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = AuthError;

    /// Parses `HS256`, `RS256` or `ES256`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            JwtAlgorithm::Hs256,
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
        ]
        .into_iter()
        .find(|alg| alg.as_str().eq_ignore_ascii_case(s))
        .ok_or_else(|| AuthError::Key(format!("unsupported jwt algorithm {s:?}")))
    }
}

/// The claims of a Tenantry access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The tenant the token acts in; `None` for platform-wide principals.
    pub tenant_id: Option<String>,
    /// The role's wire name (see [`Role::parse`]).
    pub role: String,
    /// The user's token version when issued; bumping it in the store revokes older tokens.
    pub ver: i64,
    /// Always `tenantry`.
    pub aud: String,
    /// The issuer configured on the [`TokenIssuer`].
    pub iss: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Issue time, unix seconds.
    pub iat: u64,
}

/// Keys and settings for issuing and verifying access tokens.
///
/// Verification accepts only the configured algorithm, so `alg: none` and key-confusion
/// tokens (HS256 signed with an RSA public key) are refused before any signature check.
pub struct TokenIssuer {
    alg: JwtAlgorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    ttl: Duration,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("alg", &self.alg)
            .field("issuer", &self.issuer)
            .field("ttl", &self.ttl)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl TokenIssuer {
    /// HS256 with a 256-bit secret kept in `dir/jwt-secret` (hex). The file is created with
    /// mode 0600 on first use and reused afterwards, so tokens survive restarts; replicas that
    /// share the directory share the secret. `dir` must exist.
    pub fn hs256_in_dir(dir: &Path, issuer: &str, ttl: Duration) -> Result<Self, AuthError> {
        let secret = load_or_create_secret(&dir.join(SECRET_FILE))?;
        Ok(Self::hs256(&secret, issuer, ttl))
    }

    /// HS256 from raw secret bytes (tests, or a secret from the environment).
    pub fn hs256(secret: &[u8], issuer: &str, ttl: Duration) -> Self {
        Self::new(
            JwtAlgorithm::Hs256,
            EncodingKey::from_secret(secret),
            DecodingKey::from_secret(secret),
            issuer,
            ttl,
        )
    }

    /// RS256 or ES256 from PEM files: the private key (PKCS#8, or PKCS#1 for RSA) signs, the
    /// public key (SPKI) verifies.
    pub fn from_pem_files(
        alg: JwtAlgorithm,
        private_key: &Path,
        public_key: &Path,
        issuer: &str,
        ttl: Duration,
    ) -> Result<Self, AuthError> {
        let private_pem = read_file(private_key)?;
        let public_pem = read_file(public_key)?;
        Self::from_pem(alg, &private_pem, &public_pem, issuer, ttl).map_err(|e| match e {
            AuthError::Key(msg) => AuthError::Key(format!(
                "{msg} (private key {}, public key {})",
                private_key.display(),
                public_key.display()
            )),
            other => other,
        })
    }

    /// RS256 or ES256 from PEM bytes. Checks that the keys parse and belong together by
    /// signing and verifying a probe token.
    pub fn from_pem(
        alg: JwtAlgorithm,
        private_pem: &[u8],
        public_pem: &[u8],
        issuer: &str,
        ttl: Duration,
    ) -> Result<Self, AuthError> {
        let keys = match alg {
            JwtAlgorithm::Hs256 => {
                return Err(AuthError::Key(
                    "HS256 takes a shared secret, not PEM keys".to_owned(),
                ));
            }
            JwtAlgorithm::Rs256 => (
                EncodingKey::from_rsa_pem(private_pem),
                DecodingKey::from_rsa_pem(public_pem),
            ),
            JwtAlgorithm::Es256 => (
                EncodingKey::from_ec_pem(private_pem),
                DecodingKey::from_ec_pem(public_pem),
            ),
        };
        let encoding = keys
            .0
            .map_err(|e| AuthError::Key(format!("{alg} private key: {e}")))?;
        let decoding = keys
            .1
            .map_err(|e| AuthError::Key(format!("{alg} public key: {e}")))?;
        let this = Self::new(alg, encoding, decoding, issuer, ttl);

        let now = 1_000_000_000;
        let (probe, _) = this
            .issue("probe", None, Role::Viewer, 0, now)
            .map_err(|e| AuthError::Key(format!("{alg} private key cannot sign: {e}")))?;
        this.verify(&probe, now)
            .map_err(|_| AuthError::Key(format!("{alg} private and public keys do not match")))?;
        Ok(this)
    }

    fn new(
        alg: JwtAlgorithm,
        encoding: EncodingKey,
        decoding: DecodingKey,
        issuer: &str,
        ttl: Duration,
    ) -> Self {
        let mut validation = Validation::new(alg.jose());
        // jsonwebtoken reads the system clock; time is our parameter, so `exp`, `aud` and
        // `iss` are checked in `verify` instead.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        TokenIssuer {
            alg,
            encoding,
            decoding,
            validation,
            issuer: issuer.to_owned(),
            ttl,
        }
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.alg
    }

    /// The configured `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Issues a token valid from `now` (unix seconds) for the configured lifetime; returns the
    /// token and its lifetime in seconds (`expires_in`).
    pub fn issue(
        &self,
        subject: &str,
        tenant: Option<&str>,
        role: Role,
        token_version: i64,
        now: u64,
    ) -> Result<(String, u64), AuthError> {
        let expires_in = self.ttl.as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            tenant_id: tenant.map(str::to_owned),
            role: role.as_str().to_owned(),
            ver: token_version,
            aud: AUDIENCE.to_owned(),
            iss: self.issuer.clone(),
            exp: now.saturating_add(expires_in),
            iat: now,
        };
        let token = jsonwebtoken::encode(&Header::new(self.alg.jose()), &claims, &self.encoding)
            .map_err(|e| AuthError::Key(format!("signing failed: {e}")))?;
        Ok((token, expires_in))
    }

    /// Verifies a token at `now` (unix seconds) and returns its claims.
    ///
    /// Accepts only this issuer's algorithm (`alg: none`, key confusion and every other
    /// algorithm fail with reason `algorithm`), then checks the signature, `aud` ==
    /// `tenantry`, `iss` == the configured issuer, `exp` > `now` with at most 5 s of leeway,
    /// and that `iat` is present and not later than `now` (same leeway). The token version and the role are the caller's to check.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::InvalidToken("malformed"));
        }
        // Look at the header first so an unknown or unexpected `alg` gets its own reason.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // Valid JSON that does not fit a header: in practice an `alg` the library does
            // not know, such as `none`.
            ErrorKind::Json(json) if json.classify() == serde_json::error::Category::Data => {
                AuthError::InvalidToken("algorithm")
            }
            _ => AuthError::InvalidToken("malformed"),
        })?;
        if header.alg != self.alg.jose() {
            return Err(AuthError::InvalidToken("algorithm"));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                AuthError::InvalidToken(match e.kind() {
                    ErrorKind::InvalidSignature => "signature",
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::MissingAlgorithm
                    | ErrorKind::UnsupportedAlgorithm
                    | ErrorKind::InvalidAlgorithmName => "algorithm",
                    _ => "malformed",
                })
            })?
            .claims;
        if claims.aud != AUDIENCE {
            return Err(AuthError::InvalidToken("audience"));
        }
        if claims.iss != self.issuer {
            return Err(AuthError::InvalidToken("issuer"));
        }
        if now >= claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::InvalidToken("expired"));
        }
        // Issued in the future: no token of ours is (only a forged or a clock-skewed one).
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::InvalidToken("not_yet_valid"));
        }
        Ok(claims)
    }
}

/// Reads the HS256 secret at `path`, or creates it (mode 0600) if it does not exist yet.
fn load_or_create_secret(path: &Path) -> Result<Vec<u8>, AuthError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            return parse_secret(path, &text);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(path, e)),
    }

    let mut secret = vec![0; SECRET_BYTES];
    fill_random(&mut secret)?;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{}\n", hex::encode(&secret)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error(path, e))?;
            tracing::info!(path = %path.display(), "created a new jwt signing secret");
            Ok(secret)
        }
        // Another process created it between our read and our create: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let text = fs::read_to_string(path).map_err(|e| io_error(path, e))?;
            parse_secret(path, &text)
        }
        Err(e) => Err(io_error(path, e)),
    }
}

fn parse_secret(path: &Path, text: &str) -> Result<Vec<u8>, AuthError> {
    match hex::decode(text.trim()) {
        Ok(secret) if secret.len() >= SECRET_BYTES => Ok(secret),
        _ => Err(AuthError::Key(format!(
            "{}: expected at least {} hex characters",
            path.display(),
            SECRET_BYTES * 2
        ))),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "jwt signing secret is accessible to other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

fn read_file(path: &Path) -> Result<Vec<u8>, AuthError> {
    fs::read(path).map_err(|e| io_error(path, e))
}

/// Keeps the kind of an I/O error and names the file in its message.
fn io_error(path: &Path, e: io::Error) -> AuthError {
    AuthError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
