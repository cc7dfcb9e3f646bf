//! A tenant's users: list, add (within `max_users`), change role or password, remove. Any
//! change to a user invalidates that user's tokens.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantry_domain::Role;
use tenantry_store::{NewUser, UserPatch, UserRecord};
use utoipa::ToSchema;

use crate::AppState;
use crate::accounts::{check_password, hash, normalize_email};
use crate::caller::{Body, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::tenants::tenant_path;

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/tenants/{tenant_id}/users", get(list).post(create))
        .route(
            "/api/tenants/{tenant_id}/users/{user_id}",
            get(read).patch(update).delete(remove),
        )
}

/// A user (never with a password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserResponse {
    /// Id.
    pub id: String,
    /// Email.
    pub email: String,
    /// `owner`, `member` or `viewer`.
    pub role: String,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// Creation time, Unix ms.
    pub created_at: i64,
}

impl From<UserRecord> for UserResponse {
    fn from(u: UserRecord) -> Self {
        Self {
            id: u.id,
            email: u.email,
            role: u.role.as_str().to_owned(),
            tenant_id: u.tenant.map(|t| t.to_string()),
            created_at: u.created_at,
        }
    }
}

/// `POST /api/tenants/{tenant_id}/users` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Email (unique across the platform).
    pub email: String,
    /// Initial password.
    pub password: String,
    /// `owner`, `member` or `viewer`.
    pub role: String,
}

/// `PATCH /api/tenants/{tenant_id}/users/{user_id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// New role.
    #[serde(default)]
    pub role: Option<String>,
    /// New password (an owner's reset).
    #[serde(default)]
    pub password: Option<String>,
}

pub(crate) fn tenant_role(raw: &str, path: &str) -> Result<Role, ApiError> {
    match Role::parse(raw) {
        Some(r) if r.is_tenant_role() => Ok(r),
        _ => Err(ApiError::invalid(
            path,
            format!("invalid role {raw:?} (expected owner, member or viewer)"),
        )),
    }
}

/// The tenant's users.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/users", tag = "users",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [UserResponse]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<UserResponse>>> {
    let id = tenant_path(&tenant_id)?;
    let users = state.store.tenant(&id).list_users().await?;
    Ok(Json(users.into_iter().map(Into::into).collect()))
}

/// Add a user (owners), within the plan's `max_users`.
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/users", tag = "users",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    request_body = CreateUserRequest,
    responses((status = 201, body = UserResponse),
              (status = 403, description = "forbidden or plan_limit", body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<UserResponse>)> {
    let id = tenant_path(&tenant_id)?;
    let email = normalize_email(&req.email)?;
    let role = tenant_role(&req.role, "role")?;
    check_password(&req.password, &email)?;
    let user = state
        .store
        .tenant(&id)
        .create_user(
            &caller.actor(),
            NewUser {
                id: tenantry_auth::random_id("u").map_err(|e| ApiError::internal(&e))?,
                email,
                password_hash: hash(&req.password)?,
                role,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// One user.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/users/{user_id}", tag = "users",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 200, body = UserResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn read(
    State(state): State<Arc<AppState>>,
    Path((tenant_id, user_id)): Path<(String, String)>,
) -> ApiResult<Json<UserResponse>> {
    let id = tenant_path(&tenant_id)?;
    let user = state
        .store
        .tenant(&id)
        .get_user(&user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("user", &user_id))?;
    Ok(Json(user.into()))
}

/// Change a user's role or password (owners). The user's tokens stop working.
#[utoipa::path(patch, path = "/api/tenants/{tenant_id}/users/{user_id}", tag = "users",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("user_id" = String, Path)),
    request_body = UpdateUserRequest,
    responses((status = 200, body = UserResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, description = "last_owner", body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, user_id)): Path<(String, String)>,
    Body(req): Body<UpdateUserRequest>,
) -> ApiResult<Json<UserResponse>> {
    let id = tenant_path(&tenant_id)?;
    let scope = state.store.tenant(&id);
    let role = req
        .role
        .as_deref()
        .map(|r| tenant_role(r, "role"))
        .transpose()?;
    let password_hash = match &req.password {
        Some(p) => {
            let user = scope
                .get_user(&user_id)
                .await?
                .ok_or_else(|| ApiError::not_found("user", &user_id))?;
            check_password(p, &user.email)?;
            Some(hash(p)?)
        }
        None => None,
    };
    if role.is_none() && password_hash.is_none() {
        return Err(ApiError::invalid(
            "",
            "nothing to change: give role or password",
        ));
    }
    let user = scope
        .update_user(
            &caller.actor(),
            &user_id,
            UserPatch {
                role,
                password_hash,
            },
        )
        .await?;
    Ok(Json(user.into()))
}

/// Remove a user (owners). Their tokens stop working at once.
#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/users/{user_id}", tag = "users",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "last_owner", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = tenant_path(&tenant_id)?;
    state
        .store
        .tenant(&id)
        .delete_user(&caller.actor(), &user_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
