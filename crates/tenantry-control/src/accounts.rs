//! Log-in, self-service sign-up, the caller's own profile and password change.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantry_domain::{Role, TenantId};
use tenantry_store::{Actor, NewTenant, NewUser, UserPatch};
use utoipa::ToSchema;

use crate::caller::{Body, Caller, ClientAddr};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::{AppState, now_ms, now_secs};

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/auth/login", post(login))
        .route("/api/signup", post(signup))
        .route("/api/me", get(me))
        .route("/api/me/password", post(change_password))
}

/// `POST /api/auth/login` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The account's email.
    pub email: String,
    /// The password.
    pub password: String,
}

/// An access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// JWT to send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// `POST /api/signup` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    /// Slug for the new tenant, `[a-z0-9-]{1,63}`.
    pub tenant_id: String,
    /// Display name.
    pub tenant_name: String,
    /// The owner's email.
    pub email: String,
    /// The owner's password (at least 12 characters, not the email).
    pub password: String,
}

/// `POST /api/signup` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignupResponse {
    /// The new tenant.
    pub tenant_id: String,
    /// A token for the owner.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// `GET /api/me` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeResponse {
    /// User id, or API key id.
    pub id: String,
    /// Email (users only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Role.
    pub role: String,
    /// Tenant (absent for platform admins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// `user` or `api_key`.
    pub kind: &'static str,
}

/// `POST /api/me/password` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The current password.
    pub current_password: String,
    /// The new password.
    pub new_password: String,
}

/// Emails are compared lowercased; a minimal shape check keeps garbage out.
pub(crate) fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(ApiError::invalid("email", "not a valid email address"))
    }
}

pub(crate) fn check_password(password: &str, email: &str) -> Result<(), ApiError> {
    tenantry_auth::check_password_policy(password, email)
        .map_err(|e| ApiError::new(ErrorCode::WeakPassword, e.to_string()))
}

pub(crate) fn hash(password: &str) -> Result<String, ApiError> {
    tenantry_auth::hash_password(password).map_err(|e| ApiError::internal(&e))
}

fn throttled(state: &AppState, keys: &[&str]) -> Result<(), ApiError> {
    state
        .throttle
        .check(keys, now_ms())
        .map_err(|wait| ApiError::rate_limited(wait.as_secs_f64().ceil() as u64))
}

/// Log in with email and password.
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse),
              (status = 401, description = "invalid_credentials", body = ErrorBody),
              (status = 429, description = "rate_limited (Retry-After)", body = ErrorBody)))]
pub(crate) async fn login(
    State(state): State<Arc<AppState>>,
    ClientAddr(peer): ClientAddr,
    Body(req): Body<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let email = req.email.trim().to_lowercase();
    let ip_key = format!("login-ip:{}", peer.ip());
    let acct_key = format!("login-acct:{email}");
    let keys = [ip_key.as_str(), acct_key.as_str()];
    throttled(&state, &keys)?;
    let user = state.store.platform().find_user_by_email(&email).await?;
    // The same work and the same answer whether or not the email exists.
    let ok = match &user {
        Some(u) => tenantry_auth::verify_password(&u.password_hash, &req.password),
        None => {
            tenantry_auth::verify_dummy(&req.password);
            false
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        state.throttle.fail(&keys, now_ms());
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "invalid email or password",
        ));
    };
    state.throttle.succeed(&[acct_key.as_str()]);
    let (token, expires_in) = state
        .tokens
        .issue(
            &user.id,
            user.tenant.as_ref().map(TenantId::as_str),
            user.role,
            user.token_version,
            now_secs(),
        )
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in,
    }))
}

/// Self-service onboarding: a tenant on the Free plan with its owner.
#[utoipa::path(post, path = "/api/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = SignupResponse),
              (status = 409, description = "conflict: tenant id or email taken", body = ErrorBody),
              (status = 422, description = "validation_failed or weak_password", body = ErrorBody),
              (status = 429, description = "rate_limited", body = ErrorBody)))]
pub(crate) async fn signup(
    State(state): State<Arc<AppState>>,
    ClientAddr(peer): ClientAddr,
    Body(req): Body<SignupRequest>,
) -> ApiResult<(StatusCode, Json<SignupResponse>)> {
    let ip_key = format!("signup-ip:{}", peer.ip());
    throttled(&state, &[ip_key.as_str()])?;
    // Every attempt counts: a burst of sign-ups from one address backs off.
    state.throttle.fail(&[ip_key.as_str()], now_ms());
    let id = TenantId::parse(&req.tenant_id)
        .map_err(|e| ApiError::invalid("tenant_id", format!("invalid tenant id: {e}")))?;
    let name = req.tenant_name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "tenant_name",
            "must be 1 to 200 characters",
        ));
    }
    let email = normalize_email(&req.email)?;
    check_password(&req.password, &email)?;
    let user_id = tenantry_auth::random_id("u").map_err(|e| ApiError::internal(&e))?;
    let password_hash = hash(&req.password)?;
    let actor = Actor {
        id: user_id.clone(),
        ip: Some(peer.ip().to_string()),
    };
    state
        .store
        .platform()
        .create_tenant(
            &actor,
            NewTenant {
                id: id.clone(),
                name: name.to_owned(),
                plan: "free".to_owned(),
            },
            Some(NewUser {
                id: user_id.clone(),
                email,
                password_hash,
                role: Role::Owner,
            }),
        )
        .await?;
    state.sync_tenant(&id).await?;
    // A new user starts at token version 0.
    let (token, expires_in) = state
        .tokens
        .issue(&user_id, Some(id.as_str()), Role::Owner, 0, now_secs())
        .map_err(|e| ApiError::internal(&e))?;
    Ok((
        StatusCode::CREATED,
        Json(SignupResponse {
            tenant_id: id.to_string(),
            access_token: token,
            token_type: "Bearer",
            expires_in,
        }),
    ))
}

/// Who am I.
#[utoipa::path(get, path = "/api/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = ErrorBody)))]
pub(crate) async fn me(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> ApiResult<Json<MeResponse>> {
    let email = if caller.api_key {
        None
    } else {
        state
            .store
            .platform()
            .get_user(&caller.actor_id)
            .await?
            .map(|u| u.email)
    };
    Ok(Json(MeResponse {
        id: caller.actor_id.clone(),
        email,
        role: caller.principal.role.as_str().to_owned(),
        tenant_id: caller.principal.tenant.as_ref().map(ToString::to_string),
        kind: if caller.api_key { "api_key" } else { "user" },
    }))
}

/// Change one's own password; every token issued before stops working. Returns a new token.
#[utoipa::path(post, path = "/api/me/password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn change_password(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Body(req): Body<ChangePasswordRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if caller.api_key {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "API keys have no password",
        ));
    }
    let acct_key = format!("login-acct:{}", caller.actor_id);
    throttled(&state, &[acct_key.as_str()])?;
    let user = state
        .store
        .platform()
        .get_user(&caller.actor_id)
        .await?
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    if !tenantry_auth::verify_password(&user.password_hash, &req.current_password) {
        state.throttle.fail(&[acct_key.as_str()], now_ms());
        return Err(ApiError::new(
            ErrorCode::InvalidCredentials,
            "current password is wrong",
        ));
    }
    check_password(&req.new_password, &user.email)?;
    let patch = UserPatch {
        role: None,
        password_hash: Some(hash(&req.new_password)?),
    };
    let updated = match &user.tenant {
        Some(t) => {
            state
                .store
                .tenant(t)
                .update_user(&caller.actor(), &user.id, patch)
                .await?
        }
        None => {
            state
                .store
                .platform()
                .update_platform_user(&caller.actor(), &user.id, patch)
                .await?
        }
    };
    let (token, expires_in) = state
        .tokens
        .issue(
            &updated.id,
            updated.tenant.as_ref().map(TenantId::as_str),
            updated.role,
            updated.token_version,
            now_secs(),
        )
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in,
    }))
}
