//! The closed set of error codes the proxy answers with. They are part of the contract: the
//! body is always `{"error":"<code>"}` (plus `request_id`), never an internal cause.

use http::StatusCode;

/// An error the proxy answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// No tenant serves this host (404).
    UnknownHost,
    /// The host is known but no route prefix matches the path (404).
    NoRoute,
    /// The host's tenant is suspended by the platform operator (403).
    TenantSuspended,
    /// Every backend of the route is down or draining (503).
    NoHealthyBackend,
    /// The upstream failed (connection refused or reset, invalid response) (502).
    BadGateway,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The request uses a transfer coding other than `chunked` (501): the proxy would have to
    /// drop or decode it.
    NotImplemented,
    /// The client's request body did not finish arriving within the response timeout (408):
    /// the client's delay, not the backend's.
    RequestTimeout,
    /// The request is malformed or ambiguous, e.g. both Content-Length and
    /// Transfer-Encoding (400).
    BadRequest,
    /// The route's or tenant's rate limit is spent (429, with `Retry-After`).
    RateLimited,
    /// A quota is spent and the plan's `on_quota` is `block` (403).
    QuotaExceeded,
    /// A quota is spent and the plan's `on_quota` is `throttle` (429, code `quota_exceeded`).
    QuotaThrottled,
    /// The tenant's policy does not allow the requested model or tool (403).
    PolicyDenied,
    /// An LLM route's request body is not a JSON object (400).
    InvalidBody,
    /// The request body is larger than the route accepts (413).
    PayloadTooLarge,
    /// The method is not served by the gateway: `CONNECT` (405).
    MethodNotAllowed,
    /// The WAF's rules condemned the request (403, with the matched `rule_ids`).
    WafBlocked,
    /// Every WAF inspection slot is taken, or the tenant holds its share of them (503, with
    /// `Retry-After`).
    WafBusy,
    /// The route needs the WAF but it could not be loaded, and `waf.on_unavailable` is
    /// `deny` (503).
    WafUnavailable,
}

impl ErrorCode {
    /// The `snake_case` code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::UnknownHost => "unknown_host",
            ErrorCode::NoRoute => "no_route",
            ErrorCode::TenantSuspended => "tenant_suspended",
            ErrorCode::NoHealthyBackend => "no_healthy_backend",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded | ErrorCode::QuotaThrottled => "quota_exceeded",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::WafBlocked => "waf_blocked",
            ErrorCode::WafBusy => "waf_busy",
            ErrorCode::WafUnavailable => "waf_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::UnknownHost | ErrorCode::NoRoute => StatusCode::NOT_FOUND,
            ErrorCode::TenantSuspended => StatusCode::FORBIDDEN,
            ErrorCode::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::NotImplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorCode::BadRequest | ErrorCode::InvalidBody => StatusCode::BAD_REQUEST,
            ErrorCode::RateLimited | ErrorCode::QuotaThrottled => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::QuotaExceeded | ErrorCode::PolicyDenied | ErrorCode::WafBlocked => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::WafBusy | ErrorCode::WafUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}
