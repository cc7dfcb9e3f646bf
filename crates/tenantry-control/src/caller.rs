//! Who is calling: the one middleware that authenticates every request (JWT or API key) and
//! checks tenant and role against the route's policy before any handler runs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::request::Parts;
use http::{Method, header};
use tenantry_domain::{Access, Action, Principal, Role, TenantId, authorize};
use tenantry_store::{Actor, TenantStatus};

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// What an endpoint requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Anyone (login, sign-up, the OpenAPI document).
    Public,
    /// Any authenticated caller (e.g. `GET /api/me`, reading plans).
    Authenticated,
    /// An action on the tenant named by the `{tenant_id}` path segment.
    Tenant(Action),
    /// Platform administrators only.
    Platform,
}

/// The policy of every endpoint, by method and route pattern. `None`: the endpoint is not in
/// the table, and the middleware treats it as platform-only (deny by default); a test checks
/// that every documented endpoint has an entry.
pub fn policy(method: &Method, path: &str) -> Option<Policy> {
    use Action::*;
    let p = match (method.as_str(), path) {
        ("POST", "/api/auth/login" | "/api/signup") | ("GET", "/api/openapi.json") => {
            Policy::Public
        }
        ("GET", "/api/me" | "/api/plans" | "/api/plans/{plan}" | "/api/tenants")
        | ("POST", "/api/me/password") => Policy::Authenticated,
        (
            "GET",
            "/api/tenants/{tenant_id}"
            | "/api/tenants/{tenant_id}/users"
            | "/api/tenants/{tenant_id}/users/{user_id}"
            | "/api/tenants/{tenant_id}/routes"
            | "/api/tenants/{tenant_id}/routes/{route_id}"
            | "/api/tenants/{tenant_id}/api-keys"
            | "/api/tenants/{tenant_id}/subscription"
            | "/api/tenants/{tenant_id}/policy"
            | "/api/tenants/{tenant_id}/waf"
            | "/api/tenants/{tenant_id}/usage"
            | "/api/tenants/{tenant_id}/audit",
        ) => Policy::Tenant(Read),
        ("POST", "/api/tenants/{tenant_id}/routes")
        | ("PUT" | "DELETE", "/api/tenants/{tenant_id}/routes/{route_id}")
        | (
            "POST",
            "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/drain"
            | "/api/tenants/{tenant_id}/routes/{route_id}/backends/{address}/activate",
        ) => Policy::Tenant(WriteRoutes),
        ("POST", "/api/tenants/{tenant_id}/users" | "/api/tenants/{tenant_id}/api-keys")
        | ("PATCH" | "DELETE", "/api/tenants/{tenant_id}/users/{user_id}")
        | ("DELETE", "/api/tenants/{tenant_id}/api-keys/{key_id}") => Policy::Tenant(ManageAccess),
        ("PATCH", "/api/tenants/{tenant_id}")
        | (
            "PUT",
            "/api/tenants/{tenant_id}/subscription"
            | "/api/tenants/{tenant_id}/policy"
            | "/api/tenants/{tenant_id}/waf",
        )
        | ("GET", "/api/tenants/{tenant_id}/export") => Policy::Tenant(ManageTenant),
        ("POST", "/api/tenants" | "/api/plans")
        | ("PUT", "/api/plans/{plan}" | "/api/tenants/{tenant_id}/limits")
        | ("POST", "/api/tenants/{tenant_id}/suspend" | "/api/tenants/{tenant_id}/reactivate")
        | ("DELETE", "/api/tenants/{tenant_id}")
        | ("GET", "/api/audit") => Policy::Platform,
        _ => return None,
    };
    Some(p)
}

/// The authenticated caller, available to handlers as an extractor.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Role and tenant.
    pub principal: Principal,
    /// The user id (JWT) or API key id.
    pub actor_id: String,
    /// Whether the credential is an API key.
    pub api_key: bool,
    /// Client address.
    pub ip: String,
}

impl Caller {
    /// The audit actor for writes.
    pub fn actor(&self) -> Actor {
        Actor {
            id: self.actor_id.clone(),
            ip: Some(self.ip.clone()),
        }
    }

    /// Whether the caller is a platform admin.
    pub fn is_platform(&self) -> bool {
        self.principal.role == Role::PlatformAdmin
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("authentication required"))
    }
}

/// The client's address, put into each request's extensions by [`crate::handle`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .ok_or_else(|| ApiError::internal(&"client address missing"))
    }
}

/// The client's address as a string (for audit and throttling).
pub fn client_ip(parts: &http::Extensions) -> String {
    parts
        .get::<ClientAddr>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The middleware: authenticate, then enforce [`policy`] for the matched route.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let policy = policy(req.method(), &path).unwrap_or(Policy::Platform);
    if policy == Policy::Public {
        return Ok(next.run(req).await);
    }
    let ip = client_ip(req.extensions());
    let caller = resolve(&state, req.headers(), ip).await?;
    match policy {
        Policy::Public | Policy::Authenticated => {}
        Policy::Platform => {
            if !caller.is_platform() {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "this action needs the platform_admin role",
                ));
            }
        }
        Policy::Tenant(action) => {
            let (mut parts, body) = req.into_parts();
            let tenant = tenant_param(&mut parts, &state).await?;
            check(&caller, action, &tenant)?;
            if parts.method != Method::GET && !caller.is_platform() {
                // A suspended tenant's members may read (and export) but not change anything.
                let scope = state.store.tenant(&tenant);
                if let Some(t) = scope.get().await?
                    && t.status == TenantStatus::Suspended
                {
                    return Err(ApiError::new(
                        ErrorCode::TenantSuspended,
                        format!("tenant {tenant} is suspended"),
                    ));
                }
            }
            req = Request::from_parts(parts, body);
        }
    }
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Turns the access decision into an error. A tenant that is not the caller's answers 404,
/// exactly like one that does not exist, so tenant ids cannot be probed.
pub fn check(caller: &Caller, action: Action, tenant: &TenantId) -> Result<(), ApiError> {
    match authorize(&caller.principal, action, Some(tenant)) {
        Access::Allowed => Ok(()),
        Access::ForeignTenant => Err(ApiError::not_found("tenant", tenant.as_str())),
        Access::RoleTooLow { needed } => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this action needs the {} role or higher", needed.as_str()),
        )),
    }
}

async fn tenant_param(parts: &mut Parts, state: &Arc<AppState>) -> Result<TenantId, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "invalid path"))?;
    let raw = params
        .iter()
        .find(|(k, _)| *k == "tenant_id")
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default();
    // An invalid slug cannot name any tenant: 404, like a foreign one.
    TenantId::parse(&raw).map_err(|_| ApiError::not_found("tenant", &raw))
}

async fn resolve(
    state: &AppState,
    headers: &http::HeaderMap,
    ip: String,
) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing Authorization: Bearer <token>",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <token>"))?;
    if tenantry_auth::looks_like_api_key(token) {
        let hash = tenantry_auth::hash_api_key(token);
        let key = state
            .store
            .platform()
            .find_api_key(&hash)
            .await?
            .filter(|k| k.revoked_at.is_none())
            .ok_or_else(|| ApiError::unauthorized("invalid or revoked API key"))?;
        return Ok(Caller {
            principal: Principal {
                role: key.role,
                tenant: Some(key.tenant),
            },
            actor_id: key.id,
            api_key: true,
            ip,
        });
    }
    let claims = state
        .tokens
        .verify(token, crate::now_secs())
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    // The token must still match the user: removed users, role changes and password changes
    // (each bumps the token version) invalidate every token issued before.
    let user = state
        .store
        .platform()
        .get_user(&claims.sub)
        .await?
        .ok_or_else(|| ApiError::unauthorized("invalid token: user no longer exists"))?;
    if user.token_version != claims.ver
        || user.role.as_str() != claims.role
        || user.tenant.as_ref().map(TenantId::as_str) != claims.tenant_id.as_deref()
    {
        return Err(ApiError::unauthorized(
            "invalid token: revoked (role, password or membership changed); log in again",
        ));
    }
    Ok(Caller {
        principal: Principal {
            role: user.role,
            tenant: user.tenant,
        },
        actor_id: user.id,
        api_key: false,
        ip,
    })
}

/// JSON body extractor whose rejections use the API's error shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body<T>(pub T);

/// How long a request body may take to arrive (API bodies are at most a few hundred KiB).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl<S, T> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .is_some_and(|m| m == "application/json" || m.ends_with("+json"));
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "expected Content-Type: application/json",
            ));
        }
        let read = tokio::time::timeout(BODY_TIMEOUT, bytes::Bytes::from_request(req, state));
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} s",
                        BODY_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(ErrorCode::PayloadTooLarge, "request body too large")
                } else {
                    ApiError::new(ErrorCode::BadRequest, e.body_text())
                }
            })?;
        // JSON can only carry NUL as an escape; no field of ours accepts it (PostgreSQL
        // cannot even store it), so refuse it up front with a clear answer.
        if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "strings must not contain NUL characters",
            ));
        }
        // Every body of the API is an object. serde would also fill a struct from an array,
        // by position (`["off"]` as a WAF setting): refuse that instead of guessing.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "the body must be a JSON object, not an array",
            ));
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(v)| Body(v))
            .map_err(ApiError::from)
    }
}

/// Refuses NUL (`%00`) anywhere in the path or query: no id or parameter can contain it.
pub async fn reject_nul(req: Request, next: Next) -> Result<Response, ApiError> {
    let uri = req.uri();
    let has_nul = |s: &str| s.contains("%00");
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "NUL characters are not allowed in the URL",
        ));
    }
    Ok(next.run(req).await)
}

/// Query-string extractor whose rejections use the API's error shape (axum's own `Query`
/// answers a plain-text 400).
#[derive(Debug, Clone, Copy, Default)]
pub struct Params<T>(pub T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Params(v))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every documented operation has an explicit policy: nothing is platform-only by
    /// accident, and nothing new ships without a decision.
    #[test]
    fn every_documented_endpoint_has_a_policy() {
        let doc: serde_json::Value =
            serde_json::from_str(&crate::openapi_json()).expect("valid OpenAPI JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut n = 0;
        for (path, item) in paths {
            for method in item.as_object().expect("operations").keys() {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                assert!(
                    policy(&m, path).is_some(),
                    "{method} {path} has no entry in caller::policy"
                );
                n += 1;
            }
        }
        assert!(n >= 36, "only {n} operations documented");
    }

    #[test]
    fn unknown_endpoints_are_not_public() {
        assert_eq!(policy(&Method::GET, "/api/secret"), None);
        assert_eq!(
            policy(&Method::DELETE, "/api/tenants/{tenant_id}"),
            Some(Policy::Platform)
        );
        assert_eq!(
            policy(&Method::GET, "/api/tenants/{tenant_id}/routes"),
            Some(Policy::Tenant(Action::Read))
        );
    }
}
