//! The store's error type. Driver errors are mapped here once: unique violations become
//! [`StoreError::Conflict`], everything else stays a [`StoreError::Database`] source.

use tenantry_domain::CountedLimit;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object does not exist (or is not visible to the caller's tenant).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// What was looked for: `tenant`, `user`, `route`, `plan`, `api_key`, `backend`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The object already exists, or (for `host`) another tenant owns it.
    #[error("{kind} {id:?} is already taken")]
    Conflict {
        /// `tenant`, `user`, `route`, `host`, `plan`, `api_key`, `backend`.
        kind: &'static str,
        /// The id, email or host that clashed.
        id: String,
    },
    /// A creation would exceed the subscription's limit.
    #[error("plan {plan:?} allows at most {max} for {}", limit.as_str())]
    PlanLimit {
        /// Which limit.
        limit: CountedLimit,
        /// The effective maximum (plan and overrides).
        max: u64,
        /// The subscription's plan.
        plan: String,
    },
    /// A plan change (or overrides) would put the tenant's current usage over a limit.
    #[error("plan {plan:?} allows at most {max} for {} but the tenant uses {usage}", limit.as_str())]
    Downgrade {
        /// Which limit.
        limit: CountedLimit,
        /// What the tenant uses now.
        usage: u64,
        /// The new effective maximum.
        max: u64,
        /// The target plan.
        plan: String,
    },
    /// The change would leave the tenant without an owner.
    #[error("the tenant's last owner cannot be removed or demoted")]
    LastOwner,
    /// The request makes no sense for the store (e.g. a tenant user with the platform role).
    #[error("{0}")]
    Invalid(String),
    /// The database failed (connection, IO, an unexpected constraint).
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // PostgreSQL refuses NUL in text (22021) and malformed text encodings (22P05):
            // the value is the caller's fault, not the database's. SQLite stores them.
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("22021" | "22P05")) => {
                StoreError::Invalid("text values must not contain NUL characters".into())
            }
            _ => StoreError::Database(e),
        }
    }
}

impl StoreError {
    /// Whether the error is the database's (as opposed to a refusal about the request).
    pub fn is_database(&self) -> bool {
        matches!(self, StoreError::Database(_))
    }
}

/// Maps a unique violation from the statement that wrote `kind` `id` to `Conflict`.
pub(crate) fn conflict_on_unique<'a>(
    kind: &'static str,
    id: &'a str,
) -> impl FnOnce(sqlx::Error) -> StoreError + 'a {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
            kind,
            id: id.to_owned(),
        },
        _ => StoreError::Database(e),
    }
}

/// Whether a database error is a unique violation whose constraint or message mentions `column`
/// (PostgreSQL names the constraint, SQLite the column in its message).
pub(crate) fn unique_violation_on(e: &sqlx::Error, column: &str) -> bool {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            d.constraint().is_some_and(|c| c.contains(column)) || d.message().contains(column)
        }
        _ => false,
    }
}

/// A stored value that does not decode (corrupt or written by a newer version).
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(
        format!("stored {what} is invalid: {detail}").into(),
    ))
}
