//! The WAF phase: after routing, before admission. Routes whose effective level is `off`
//! carry no WAF state and pay nothing; the others hold an interned [`RouteWaf`] (one per
//! distinct level, mode and exclusion list, shared by every route with it), which points at
//! the compiled rules set.
//!
//! The engine (libmodsecurity and its threads) starts when the first route needs it. If it
//! cannot be loaded, or a rules set does not compile, those routes follow
//! `waf.on_unavailable`: `deny` answers `503 waf_unavailable`, `allow` serves them
//! uninspected; both are logged when the route is built and counted per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tenantry_config::{WafLargeBody, WafSettings, WafUnavailable};
use tenantry_domain::{EffectiveWaf, Route, Tenant, WafLevel, WafMode};
use tenantry_waf::{Action, Inspection, RuleSet, RulesKey, Verdict, Waf, WafError};

use crate::body::ReqBody;
use crate::errors::ErrorCode;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A route's WAF: its level and mode, and the rules set (or why there is none).
#[derive(Debug)]
pub struct RouteWaf {
    /// The effective level (never `off`).
    pub level: WafLevel,
    /// Block or detect.
    pub mode: WafMode,
    /// The compiled set, or why it is missing.
    rules: Result<Arc<RuleSet>, Box<str>>,
}

/// The WAF as the data plane runs it.
pub struct WafPhase {
    settings: WafSettings,
    engine: OnceLock<Result<Waf, WafError>>,
    routes: Mutex<FastMap<EffectiveWaf, Weak<RouteWaf>>>,
}

impl std::fmt::Debug for WafPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WafPhase")
            .field("engine", &self.engine.get())
            .finish()
    }
}

impl WafPhase {
    /// A phase with these settings; nothing is loaded until a route needs it.
    pub fn new(settings: WafSettings) -> WafPhase {
        WafPhase {
            settings,
            engine: OnceLock::new(),
            routes: Mutex::default(),
        }
    }

    /// The engine, started on first call.
    pub fn engine(&self) -> Result<&Waf, &WafError> {
        self.engine
            .get_or_init(|| {
                let started = Waf::start(&self.settings);
                match &started {
                    Ok(w) => tracing::info!(
                        version = w.version(),
                        crs = %self.settings.crs_dir.display(),
                        "WAF engine loaded"
                    ),
                    Err(e) => tracing::error!(error = %e, "WAF engine could not be loaded"),
                }
                started
            })
            .as_ref()
    }

    /// The WAF of route `r` of tenant `t`; `None` when its level is `off`.
    pub(crate) fn for_route(&self, t: &Tenant, r: &Route) -> Option<Arc<RouteWaf>> {
        let eff = t.effective_waf(r);
        if eff.level == WafLevel::Off {
            return None;
        }
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = routes.get(&eff).and_then(Weak::upgrade) {
            return Some(w);
        }
        routes.retain(|_, w| w.strong_count() > 0);
        let rules = match self.engine() {
            Ok(engine) => engine
                .rules(&RulesKey {
                    level: eff.level,
                    mode: eff.mode,
                    exclusions: eff.exclusions.clone(),
                })
                .map_err(|e| e.to_string().into_boxed_str()),
            Err(e) => Err(e.to_string().into_boxed_str()),
        };
        if let Err(e) = &rules {
            let consequence = match self.settings.on_unavailable {
                WafUnavailable::Deny => "its routes answer 503 waf_unavailable",
                WafUnavailable::Allow => {
                    "its routes are served UNINSPECTED (on_unavailable: allow)"
                }
            };
            tracing::error!(
                tenant = %t.id,
                level = eff.level.as_str(),
                error = %e,
                "WAF level {} cannot be applied: {consequence}",
                eff.level.as_str()
            );
        }
        let w = Arc::new(RouteWaf {
            level: eff.level,
            mode: eff.mode,
            rules,
        });
        routes.insert(eff, Arc::downgrade(&w));
        Some(w)
    }

    /// The settings.
    pub fn settings(&self) -> &WafSettings {
        &self.settings
    }
}

/// The request body as the WAF phase leaves it.
pub(crate) struct Prefix {
    /// Bytes already read from the client (all of the body when `complete`).
    pub(crate) bytes: Bytes,
    /// Whether `bytes` is the whole body.
    pub(crate) complete: bool,
}

/// Why [`read_prefix`] stopped without a prefix.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client's body failed (malformed chunking, the client left).
    Body(hyper::Error),
    /// No bytes came for the allowed gap (the client's delay: `408`).
    Stalled,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Body(e) => write!(f, "{e}"),
            ReadError::Stalled => f.write_str("the body stopped arriving"),
        }
    }
}

impl ReadError {
    /// The answer to the client.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ReadError::Body(_) => ErrorCode::BadRequest,
            ReadError::Stalled => ErrorCode::RequestTimeout,
        }
    }
}

/// Reads up to `max` bytes of the body (all of it when shorter). A body still arriving from
/// the client (hyper's) must send its next bytes within `gap` (nginx's
/// `client_body_timeout`); a body already read has none to wait for.
pub(crate) async fn read_prefix(
    body: &mut ReqBody,
    max: usize,
    gap: Duration,
) -> Result<Prefix, ReadError> {
    let streaming = matches!(body, ReqBody::Hyper(_));
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if have >= max {
            break;
        }
        let frame = if streaming {
            tokio::time::timeout(gap, body.frame())
                .await
                .map_err(|_| ReadError::Stalled)?
        } else {
            body.frame().await
        };
        match frame {
            None => {
                return Ok(Prefix {
                    bytes: first.unwrap_or_else(|| buf.freeze()),
                    complete: true,
                });
            }
            Some(Err(e)) => return Err(ReadError::Body(e)),
            Some(Ok(frame)) => {
                // Trailers end the body as far as the WAF is concerned.
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                // The common case, one chunk, is kept without a copy.
                match first.take() {
                    None if buf.is_empty() => first = Some(data),
                    Some(f) => {
                        buf.extend_from_slice(&f);
                        buf.extend_from_slice(&data);
                    }
                    None => buf.extend_from_slice(&data),
                }
            }
        }
    }
    let bytes = first.unwrap_or_else(|| buf.freeze());
    Ok(Prefix {
        complete: body.is_end_stream(),
        bytes,
    })
}

/// What the phase decided.
pub(crate) enum Outcome {
    /// Go on (inspected and passed, detected in `detect` mode, unavailable under `allow`, or
    /// not inspected in `detect` mode).
    Continue(crate::metrics::WafOutcome, Option<Verdict>),
    /// Answer this error (with `rule_ids` for a block).
    Refuse(ErrorCode, Option<Verdict>),
}

/// Everything the inspection needs from the request.
pub(crate) struct Subject<'a> {
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) client: std::net::SocketAddr,
    pub(crate) server: std::net::SocketAddr,
    pub(crate) method: &'a http::Method,
    pub(crate) uri: &'a http::Uri,
    pub(crate) version: http::Version,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) host: Option<&'a HeaderValue>,
}

impl WafPhase {
    /// Inspects a request with the route's rules.
    pub(crate) async fn inspect(
        &self,
        w: &RouteWaf,
        tenant: &tenantry_domain::TenantId,
        s: Subject<'_>,
        body: Option<&Prefix>,
    ) -> Outcome {
        use crate::metrics::WafOutcome;
        // `detect` never blocks: a tenant being onboarded is served (and the miss counted)
        // also when its inspection cannot run.
        let detect = w.mode == WafMode::Detect;
        let unavailable = || match self.settings.on_unavailable {
            WafUnavailable::Deny if !detect => Outcome::Refuse(ErrorCode::WafUnavailable, None),
            _ => Outcome::Continue(WafOutcome::Unavailable, None),
        };
        let (Ok(rules), Ok(engine)) = (&w.rules, self.engine()) else {
            return unavailable();
        };
        let mut headers = s.headers.clone();
        if !headers.contains_key(header::HOST)
            && let Some(h) = s.host
        {
            headers.insert(header::HOST, h.clone());
        }
        let uri = s
            .uri
            .path_and_query()
            .map_or_else(|| s.uri.to_string(), |pq| pq.as_str().to_owned());
        let (bytes, partial) = match body {
            Some(p) if p.bytes.len() > self.settings.max_body => {
                (p.bytes.slice(..self.settings.max_body), true)
            }
            Some(p) => (p.bytes.clone(), !p.complete),
            None => (Bytes::new(), false),
        };
        let inspection = Inspection {
            request_id: s.request_id.to_str().unwrap_or("").to_owned(),
            client: s.client,
            server: s.server,
            method: s.method.clone(),
            uri,
            version: s.version,
            headers,
            body: bytes,
            body_partial: partial,
        };
        match engine.inspect(rules, tenant, inspection).await {
            Ok(v) => match v.action {
                Action::Pass => Outcome::Continue(WafOutcome::Pass, Some(v)),
                Action::Detect => Outcome::Continue(WafOutcome::Detect, Some(v)),
                Action::Block => Outcome::Refuse(ErrorCode::WafBlocked, Some(v)),
            },
            Err(WafError::Busy) if detect => Outcome::Continue(WafOutcome::Busy, None),
            Err(WafError::Busy) => Outcome::Refuse(ErrorCode::WafBusy, None),
            Err(e) => {
                tracing::error!(tenant = %tenant, error = %e, "WAF inspection failed");
                unavailable()
            }
        }
    }

    /// Whether a body longer than `waf.max_body` is refused rather than partly inspected.
    pub(crate) fn rejects_large_bodies(&self) -> bool {
        self.settings.on_large_body == WafLargeBody::Reject
    }

    /// The most body bytes inspected.
    pub(crate) fn max_body(&self) -> usize {
        self.settings.max_body
    }
}

/// `,"rule_ids":[942100,941100]` for the error body.
pub(crate) fn rule_ids_member(v: &Verdict) -> String {
    let ids: Vec<String> = v.rule_ids.iter().map(u32::to_string).collect();
    format!(",\"rule_ids\":[{}]", ids.join(","))
}
