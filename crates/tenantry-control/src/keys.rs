//! A tenant's API keys for machines: created with a role (shown once, stored hashed),
//! listed without secrets, revoked.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{delete, get};
use axum::{Json, Router};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tenantry_store::{ApiKeyRecord, NewApiKey};
use utoipa::ToSchema;

use crate::AppState;
use crate::caller::{Body, Caller};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::tenants::tenant_path;
use crate::users::tenant_role;

pub(crate) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/tenants/{tenant_id}/api-keys", get(list).post(create))
        .route("/api/tenants/{tenant_id}/api-keys/{key_id}", delete(revoke))
}

/// An API key's metadata (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyResponse {
    /// Id.
    pub id: String,
    /// Label.
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// Role the key acts with.
    pub role: String,
    /// Who created it.
    pub created_by: String,
    /// Creation time, Unix ms.
    pub created_at: i64,
    /// Revocation time, Unix ms.
    pub revoked_at: Option<i64>,
}

impl From<ApiKeyRecord> for ApiKeyResponse {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            role: k.role.as_str().to_owned(),
            created_by: k.created_by,
            created_at: k.created_at,
            revoked_at: k.revoked_at,
        }
    }
}

/// A new key: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKeyResponse {
    /// The secret, `tn_…`: store it now, it cannot be read again.
    pub key: String,
    /// Metadata.
    #[serde(flatten)]
    pub meta: ApiKeyResponse,
}

/// `POST /api/tenants/{tenant_id}/api-keys` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// Label.
    pub name: String,
    /// `owner`, `member` or `viewer` (default `viewer`); not above the caller's own role.
    #[serde(default)]
    pub role: Option<String>,
}

/// The tenant's API keys.
#[utoipa::path(get, path = "/api/tenants/{tenant_id}/api-keys", tag = "api-keys",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    responses((status = 200, body = [ApiKeyResponse]), (status = 404, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Path(tenant_id): Path<String>,
) -> ApiResult<Json<Vec<ApiKeyResponse>>> {
    let id = tenant_path(&tenant_id)?;
    let keys = state.store.tenant(&id).list_api_keys().await?;
    Ok(Json(keys.into_iter().map(Into::into).collect()))
}

/// Create an API key (owners).
#[utoipa::path(post, path = "/api/tenants/{tenant_id}/api-keys", tag = "api-keys",
    security(("bearer" = [])), params(("tenant_id" = String, Path)),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKeyResponse), (status = 403, body = ErrorBody),
              (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(tenant_id): Path<String>,
    Body(req): Body<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKeyResponse>)> {
    let id = tenant_path(&tenant_id)?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::invalid("name", "must be 1 to 100 characters"));
    }
    let role = tenant_role(req.role.as_deref().unwrap_or("viewer"), "role")?;
    if role > caller.principal.role {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "an API key cannot have a higher role than its creator",
        ));
    }
    let generated = tenantry_auth::generate_api_key().map_err(|e| ApiError::internal(&e))?;
    let record = state
        .store
        .tenant(&id)
        .create_api_key(
            &caller.actor(),
            NewApiKey {
                id: tenantry_auth::random_id("k").map_err(|e| ApiError::internal(&e))?,
                name: name.to_owned(),
                prefix: generated.prefix.clone(),
                hash: generated.hash.clone(),
                role,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyResponse {
            key: generated.secret.clone(),
            meta: record.into(),
        }),
    ))
}

/// Revoke an API key (owners); it stops working at once.
#[utoipa::path(delete, path = "/api/tenants/{tenant_id}/api-keys/{key_id}", tag = "api-keys",
    security(("bearer" = [])), params(("tenant_id" = String, Path), ("key_id" = String, Path)),
    responses((status = 200, body = ApiKeyResponse), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((tenant_id, key_id)): Path<(String, String)>,
) -> ApiResult<Json<ApiKeyResponse>> {
    let id = tenant_path(&tenant_id)?;
    let k = state
        .store
        .tenant(&id)
        .revoke_api_key(&caller.actor(), &key_id)
        .await?;
    Ok(Json(k.into()))
}
