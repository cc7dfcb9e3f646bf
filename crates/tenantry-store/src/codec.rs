//! How domain values are stored as JSON text (the domain types are not `Serialize`: their
//! stored format is written out here, explicitly). Limit keys are the wire names used by
//! [`CountedLimit::as_str`](tenantry_domain::CountedLimit::as_str).

use serde_json::{Map, Value};
use tenantry_domain::{LimitOverrides, OnQuota, PlanLimits, WafLevel};

use crate::StoreError;
use crate::error::corrupt;

const NUMERIC: [&str; 9] = [
    "max_users",
    "max_routes",
    "max_backends_per_route",
    "max_domains",
    "max_workers",
    "requests_per_minute",
    "burst",
    "tokens_per_minute",
    "bandwidth_gb_month",
];

fn numeric(l: &PlanLimits) -> [Option<u64>; 9] {
    [
        l.max_users,
        l.max_routes,
        l.max_backends_per_route,
        l.max_domains,
        l.max_workers,
        l.requests_per_minute,
        l.burst,
        l.tokens_per_minute,
        l.bandwidth_gb_month,
    ]
}

fn numeric_slots(l: &mut PlanLimits) -> [&mut Option<u64>; 9] {
    [
        &mut l.max_users,
        &mut l.max_routes,
        &mut l.max_backends_per_route,
        &mut l.max_domains,
        &mut l.max_workers,
        &mut l.requests_per_minute,
        &mut l.burst,
        &mut l.tokens_per_minute,
        &mut l.bandwidth_gb_month,
    ]
}

fn override_numeric(o: &LimitOverrides) -> [Option<Option<u64>>; 9] {
    [
        o.max_users,
        o.max_routes,
        o.max_backends_per_route,
        o.max_domains,
        o.max_workers,
        o.requests_per_minute,
        o.burst,
        o.tokens_per_minute,
        o.bandwidth_gb_month,
    ]
}

fn override_slots(o: &mut LimitOverrides) -> [&mut Option<Option<u64>>; 9] {
    [
        &mut o.max_users,
        &mut o.max_routes,
        &mut o.max_backends_per_route,
        &mut o.max_domains,
        &mut o.max_workers,
        &mut o.requests_per_minute,
        &mut o.burst,
        &mut o.tokens_per_minute,
        &mut o.bandwidth_gb_month,
    ]
}

/// `{"max_users": 3, "max_routes": null, …, "waf_level": "basic", …}`; `null` is unlimited.
pub(crate) fn limits_to_json(l: &PlanLimits) -> Value {
    let mut m = Map::new();
    for (k, v) in NUMERIC.iter().zip(numeric(l)) {
        m.insert((*k).to_owned(), v.map_or(Value::Null, Value::from));
    }
    m.insert("waf_level".into(), l.waf_level.as_str().into());
    m.insert("dedicated_allowed".into(), l.dedicated_allowed.into());
    m.insert("on_quota".into(), l.on_quota.as_str().into());
    Value::Object(m)
}

fn number(key: &str, v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be a non-negative integer or null")),
    }
}

fn waf(v: &Value) -> Result<WafLevel, String> {
    v.as_str()
        .and_then(WafLevel::parse)
        .ok_or_else(|| format!("unknown waf_level {v}"))
}

fn on_quota(v: &Value) -> Result<OnQuota, String> {
    v.as_str()
        .and_then(OnQuota::parse)
        .ok_or_else(|| format!("unknown on_quota {v}"))
}

fn flag(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| "dedicated_allowed must be a boolean".to_owned())
}

/// Parses [`limits_to_json`]'s output; a missing numeric key is unlimited.
pub(crate) fn limits_from_json(v: &Value) -> Result<PlanLimits, String> {
    let m = v.as_object().ok_or("limits must be an object")?;
    let mut l = PlanLimits::default();
    for (k, slot) in NUMERIC.iter().zip(numeric_slots(&mut l)) {
        if let Some(v) = m.get(*k) {
            *slot = number(k, v)?;
        }
    }
    if let Some(v) = m.get("waf_level") {
        l.waf_level = waf(v)?;
    }
    if let Some(v) = m.get("dedicated_allowed") {
        l.dedicated_allowed = flag(v)?;
    }
    if let Some(v) = m.get("on_quota") {
        l.on_quota = on_quota(v)?;
    }
    Ok(l)
}

/// Only the overridden keys; `null` overrides a limit to unlimited.
pub(crate) fn overrides_to_json(o: &LimitOverrides) -> Value {
    let mut m = Map::new();
    for (k, v) in NUMERIC.iter().zip(override_numeric(o)) {
        if let Some(v) = v {
            m.insert((*k).to_owned(), v.map_or(Value::Null, Value::from));
        }
    }
    if let Some(w) = o.waf_level {
        m.insert("waf_level".into(), w.as_str().into());
    }
    if let Some(d) = o.dedicated_allowed {
        m.insert("dedicated_allowed".into(), d.into());
    }
    if let Some(q) = o.on_quota {
        m.insert("on_quota".into(), q.as_str().into());
    }
    Value::Object(m)
}

/// Parses [`overrides_to_json`]'s output.
pub(crate) fn overrides_from_json(v: &Value) -> Result<LimitOverrides, String> {
    let m = v.as_object().ok_or("overrides must be an object")?;
    let mut o = LimitOverrides::default();
    for (k, slot) in NUMERIC.iter().zip(override_slots(&mut o)) {
        if let Some(v) = m.get(*k) {
            *slot = Some(number(k, v)?);
        }
    }
    if let Some(v) = m.get("waf_level") {
        o.waf_level = Some(waf(v)?);
    }
    if let Some(v) = m.get("dedicated_allowed") {
        o.dedicated_allowed = Some(flag(v)?);
    }
    if let Some(v) = m.get("on_quota") {
        o.on_quota = Some(on_quota(v)?);
    }
    Ok(o)
}

/// Parses stored JSON text.
pub(crate) fn parse_text(what: &str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

/// Serialises a value for a TEXT column.
pub(crate) fn to_text<T: serde::Serialize + ?Sized>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("cannot encode: {e}")))
}

/// Parses a stored JSON column into a spec type.
pub(crate) fn from_text<T: serde::de::DeserializeOwned>(
    what: &str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantry_domain::default_plans;

    #[test]
    fn limits_round_trip() {
        for (_, l) in default_plans() {
            let v = limits_to_json(&l);
            assert_eq!(limits_from_json(&v).unwrap(), l);
        }
    }

    #[test]
    fn overrides_round_trip_keeps_unlimited_apart_from_absent() {
        let o = LimitOverrides {
            max_users: Some(Some(7)),
            max_routes: Some(None),
            waf_level: Some(WafLevel::Strict),
            dedicated_allowed: Some(true),
            ..LimitOverrides::default()
        };
        let v = overrides_to_json(&o);
        assert_eq!(v["max_routes"], Value::Null);
        assert!(v.get("max_domains").is_none());
        assert_eq!(overrides_from_json(&v).unwrap(), o);
        assert_eq!(
            overrides_from_json(&Value::Object(Map::new())).unwrap(),
            LimitOverrides::default()
        );
    }

    #[test]
    fn rejects_bad_values() {
        assert!(limits_from_json(&serde_json::json!({"max_users": -1})).is_err());
        assert!(limits_from_json(&serde_json::json!({"waf_level": "max"})).is_err());
        assert!(overrides_from_json(&serde_json::json!([])).is_err());
    }
}
