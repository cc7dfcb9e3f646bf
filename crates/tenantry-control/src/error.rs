//! The admin API's one error shape, `{"error": code, "message": text}`, and the closed set of
//! codes. Codes are part of the contract: clients branch on them.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use tenantry_config::ConfigErrors;
use tenantry_domain::CountedLimit;
use tenantry_store::StoreError;
use utoipa::ToSchema;

/// Every error code the admin API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body is not valid JSON, or a parameter is malformed.
    BadRequest,
    /// 401: no token, or an invalid, expired or revoked one.
    Unauthorized,
    /// 401: login with a wrong email or password (the same answer for both).
    InvalidCredentials,
    /// 403: the caller's role is too low for this action.
    Forbidden,
    /// 403: creating this would exceed the plan (`limit`, `max`, `plan` say which).
    PlanLimit,
    /// 403: the tenant is suspended; only reads are allowed.
    TenantSuspended,
    /// 404: no such resource (or it belongs to another tenant).
    NotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 408: the request body did not arrive in time.
    RequestTimeout,
    /// 409: the id, email or host is already taken.
    Conflict,
    /// 409: the tenant's routes, policy and WAF settings come from the configuration file;
    /// edit the file.
    ManagedByFile,
    /// 409: the tenant's last owner cannot be removed or demoted.
    LastOwner,
    /// 409: the new plan's limits are below the tenant's current usage.
    DowngradeBlocked,
    /// 413: the body is larger than the API accepts.
    PayloadTooLarge,
    /// 415: the body must be `application/json`.
    UnsupportedMediaType,
    /// 422: the body is well-formed JSON but its content is invalid (`errors` lists fields).
    ValidationFailed,
    /// 422: the password does not meet the policy.
    WeakPassword,
    /// 429: too many attempts; retry after `Retry-After` seconds.
    RateLimited,
    /// 500: something failed on our side (the cause is logged, not sent).
    Internal,
}

impl ErrorCode {
    /// HTTP status of the code.
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadRequest => StatusCode::BAD_REQUEST,
            Unauthorized | InvalidCredentials => StatusCode::UNAUTHORIZED,
            Forbidden | PlanLimit | TenantSuspended => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Conflict | ManagedByFile | LastOwner | DowngradeBlocked => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ValidationFailed | WeakPassword => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// Field path, e.g. `backends[0].address`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The error body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub error: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// `plan_limit`/`downgrade_blocked`: which limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    /// `plan_limit`/`downgrade_blocked`: the limit's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// `downgrade_blocked`: the current usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    /// `plan_limit`/`downgrade_blocked`: the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// `validation_failed`: every invalid field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error answered by the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    body: Box<ErrorBody>,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: Box::new(ErrorBody {
                error: code,
                message: message.into(),
                limit: None,
                max: None,
                usage: None,
                plan: None,
                errors: Vec::new(),
            }),
            retry_after: None,
        }
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.body.error
    }

    /// 401 with a reason.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 404 for a kind and id.
    pub fn not_found(kind: &str, id: &str) -> Self {
        // The id comes from the URL: echo a bounded prefix, not whatever length was sent.
        let shown: String = id.chars().take(80).collect();
        let more = if shown.len() < id.len() { "…" } else { "" };
        Self::new(
            ErrorCode::NotFound,
            format!("{kind} {shown:?}{more} not found"),
        )
    }

    /// 422 with one field error.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(ErrorCode::ValidationFailed, format!("{path}: {message}"));
        e.body.errors.push(FieldError {
            path: path.to_owned(),
            message,
        });
        e
    }

    /// 422 from configuration validation errors.
    pub fn from_config(errs: &ConfigErrors, prefix: &str) -> Self {
        let errors: Vec<FieldError> = errs
            .iter()
            .map(|e| FieldError {
                path: if prefix.is_empty() {
                    e.path.clone()
                } else if e.path.is_empty() {
                    prefix.to_owned()
                } else {
                    format!("{prefix}.{}", e.path)
                },
                message: e.message.clone(),
            })
            .collect();
        let message = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut e = Self::new(ErrorCode::ValidationFailed, message);
        e.body.errors = errors;
        e
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            ErrorCode::RateLimited,
            format!("too many attempts; retry in {retry_after_secs} s"),
        );
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    /// 500; the cause is logged here and never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "admin API internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    fn plan(mut self, limit: CountedLimit, max: u64, usage: Option<u64>, plan: String) -> Self {
        self.body.limit = Some(limit.as_str());
        self.body.max = Some(max);
        self.body.usage = usage;
        self.body.plan = Some(plan);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => ApiError::not_found(kind, &id),
            StoreError::Conflict { kind, id } => ApiError::new(
                ErrorCode::Conflict,
                format!("{kind} {id:?} already exists"),
            ),
            StoreError::PlanLimit { limit, max, plan } => ApiError::new(
                ErrorCode::PlanLimit,
                format!(
                    "plan {plan:?} allows at most {max} ({}); upgrade to create more",
                    limit.as_str()
                ),
            )
            .plan(limit, max, None, plan),
            StoreError::Downgrade {
                limit,
                usage,
                max,
                plan,
            } => ApiError::new(
                ErrorCode::DowngradeBlocked,
                format!(
                    "plan {plan:?} allows {max} ({}) but the tenant uses {usage}; remove some first",
                    limit.as_str()
                ),
            )
            .plan(limit, max, Some(usage), plan),
            StoreError::LastOwner => ApiError::new(
                ErrorCode::LastOwner,
                "the tenant's last owner cannot be removed or demoted",
            ),
            StoreError::Invalid(m) => ApiError::new(ErrorCode::ValidationFailed, m),
            other => ApiError::internal(&other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => {
                // serde's message names the field ("unknown field `x`", "invalid type …");
                // axum reads the body through serde_path_to_error, which knows its path.
                let source = std::error::Error::source(&e);
                let detail = source
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.body_text());
                let mut err = ApiError::new(ErrorCode::ValidationFailed, detail);
                // axum wraps it in its own error: look down the chain.
                let path_error = std::iter::successors(source, |e| e.source()).find_map(|e| {
                    e.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>()
                });
                if let Some(p) = path_error {
                    let path = p.path().to_string();
                    err.body.errors.push(FieldError {
                        path: if path == "." { String::new() } else { path },
                        message: p.inner().to_string(),
                    });
                }
                err
            }
            JsonRejection::JsonSyntaxError(e) => ApiError::new(
                ErrorCode::BadRequest,
                format!("malformed JSON: {}", e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
            }
            other => ApiError::new(ErrorCode::BadRequest, other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.body.error.status();
        let mut r = (status, Json(*self.body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;
