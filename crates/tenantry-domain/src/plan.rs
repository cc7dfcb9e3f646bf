//! Plans, their limits, and the limits a subscription derives from its plan and overrides.

/// WAF protection level (CRS paranoia and anomaly threshold are chosen by the WAF layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WafLevel {
    /// No inspection.
    #[default]
    Off,
    /// Paranoia level 1, anomaly threshold 10.
    Basic,
    /// Paranoia level 1, anomaly threshold 5.
    Standard,
    /// Paranoia level 2–3, anomaly threshold 5.
    Strict,
}

impl WafLevel {
    /// All levels.
    pub const ALL: [WafLevel; 4] = [
        WafLevel::Off,
        WafLevel::Basic,
        WafLevel::Standard,
        WafLevel::Strict,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WafLevel::Off => "off",
            WafLevel::Basic => "basic",
            WafLevel::Standard => "standard",
            WafLevel::Strict => "strict",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// What happens when a tenant reaches a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnQuota {
    /// Serve and record.
    #[default]
    Log,
    /// Answer 429.
    Throttle,
    /// Answer 403 `quota_exceeded`.
    Block,
    /// Serve and emit an upgrade event for the owner.
    Notify,
}

impl OnQuota {
    /// All policies.
    pub const ALL: [OnQuota; 4] = [
        OnQuota::Log,
        OnQuota::Throttle,
        OnQuota::Block,
        OnQuota::Notify,
    ];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnQuota::Log => "log",
            OnQuota::Throttle => "throttle",
            OnQuota::Block => "block",
            OnQuota::Notify => "notify",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// The limits of a plan. `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PlanLimits {
    /// Users in the tenant.
    pub max_users: Option<u64>,
    /// Routes in the tenant.
    pub max_routes: Option<u64>,
    /// Backends per route.
    pub max_backends_per_route: Option<u64>,
    /// Distinct hosts (domains) across the tenant's routes.
    pub max_domains: Option<u64>,
    /// Workers (isolation units).
    pub max_workers: Option<u64>,
    /// Requests per minute (rate limit).
    pub requests_per_minute: Option<u64>,
    /// Requests allowed at once (the rate limiter's bucket); `None` means `requests_per_minute`.
    pub burst: Option<u64>,
    /// LLM tokens per minute.
    pub tokens_per_minute: Option<u64>,
    /// Bandwidth per billing month, in GB.
    pub bandwidth_gb_month: Option<u64>,
    /// WAF level.
    pub waf_level: WafLevel,
    /// Whether workers may run on dedicated instances.
    pub dedicated_allowed: bool,
    /// What happens at a quota.
    pub on_quota: OnQuota,
}

/// Per-tenant overrides set by the platform admin; each `Some` replaces the plan's value
/// (`Some(None)` makes a numeric limit unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct LimitOverrides {
    /// See [`PlanLimits::max_users`].
    pub max_users: Option<Option<u64>>,
    /// See [`PlanLimits::max_routes`].
    pub max_routes: Option<Option<u64>>,
    /// See [`PlanLimits::max_backends_per_route`].
    pub max_backends_per_route: Option<Option<u64>>,
    /// See [`PlanLimits::max_domains`].
    pub max_domains: Option<Option<u64>>,
    /// See [`PlanLimits::max_workers`].
    pub max_workers: Option<Option<u64>>,
    /// See [`PlanLimits::requests_per_minute`].
    pub requests_per_minute: Option<Option<u64>>,
    /// See [`PlanLimits::burst`].
    pub burst: Option<Option<u64>>,
    /// See [`PlanLimits::tokens_per_minute`].
    pub tokens_per_minute: Option<Option<u64>>,
    /// See [`PlanLimits::bandwidth_gb_month`].
    pub bandwidth_gb_month: Option<Option<u64>>,
    /// See [`PlanLimits::waf_level`].
    pub waf_level: Option<WafLevel>,
    /// See [`PlanLimits::dedicated_allowed`].
    pub dedicated_allowed: Option<bool>,
    /// See [`PlanLimits::on_quota`].
    pub on_quota: Option<OnQuota>,
}

/// A subscription's effective limits: the plan's, with the tenant's overrides on top.
pub fn derive_limits(plan: &PlanLimits, overrides: &LimitOverrides) -> PlanLimits {
    PlanLimits {
        max_users: overrides.max_users.unwrap_or(plan.max_users),
        max_routes: overrides.max_routes.unwrap_or(plan.max_routes),
        max_backends_per_route: overrides
            .max_backends_per_route
            .unwrap_or(plan.max_backends_per_route),
        max_domains: overrides.max_domains.unwrap_or(plan.max_domains),
        max_workers: overrides.max_workers.unwrap_or(plan.max_workers),
        requests_per_minute: overrides
            .requests_per_minute
            .unwrap_or(plan.requests_per_minute),
        burst: overrides.burst.unwrap_or(plan.burst),
        tokens_per_minute: overrides
            .tokens_per_minute
            .unwrap_or(plan.tokens_per_minute),
        bandwidth_gb_month: overrides
            .bandwidth_gb_month
            .unwrap_or(plan.bandwidth_gb_month),
        waf_level: overrides.waf_level.unwrap_or(plan.waf_level),
        dedicated_allowed: overrides
            .dedicated_allowed
            .unwrap_or(plan.dedicated_allowed),
        on_quota: overrides.on_quota.unwrap_or(plan.on_quota),
    }
}

/// Which countable limit a creation would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountedLimit {
    /// `max_users`.
    Users,
    /// `max_routes`.
    Routes,
    /// `max_backends_per_route`.
    BackendsPerRoute,
    /// `max_domains`.
    Domains,
    /// `max_workers`.
    Workers,
}

impl CountedLimit {
    /// The limit's wire name, e.g. `max_users`.
    pub fn as_str(self) -> &'static str {
        match self {
            CountedLimit::Users => "max_users",
            CountedLimit::Routes => "max_routes",
            CountedLimit::BackendsPerRoute => "max_backends_per_route",
            CountedLimit::Domains => "max_domains",
            CountedLimit::Workers => "max_workers",
        }
    }

    /// The limit's value in `limits`.
    pub fn max(self, limits: &PlanLimits) -> Option<u64> {
        match self {
            CountedLimit::Users => limits.max_users,
            CountedLimit::Routes => limits.max_routes,
            CountedLimit::BackendsPerRoute => limits.max_backends_per_route,
            CountedLimit::Domains => limits.max_domains,
            CountedLimit::Workers => limits.max_workers,
        }
    }
}

/// Whether having `count` of something is within the limit: `Err(max)` when it is over.
pub fn check_count(limits: &PlanLimits, limit: CountedLimit, count: u64) -> Result<(), u64> {
    match limit.max(limits) {
        Some(max) if count > max => Err(max),
        _ => Ok(()),
    }
}

/// The plans seeded into an empty store (operators edit them afterwards).
pub fn default_plans() -> Vec<(&'static str, PlanLimits)> {
    vec![
        (
            "free",
            PlanLimits {
                max_users: Some(3),
                max_routes: Some(5),
                max_backends_per_route: Some(2),
                max_domains: Some(1),
                max_workers: Some(1),
                requests_per_minute: Some(600),
                burst: Some(100),
                tokens_per_minute: Some(10_000),
                bandwidth_gb_month: Some(10),
                waf_level: WafLevel::Basic,
                dedicated_allowed: false,
                on_quota: OnQuota::Throttle,
            },
        ),
        (
            "pro",
            PlanLimits {
                max_users: Some(10),
                max_routes: Some(50),
                max_backends_per_route: Some(10),
                max_domains: Some(10),
                max_workers: Some(5),
                requests_per_minute: Some(6_000),
                burst: Some(1_000),
                tokens_per_minute: Some(200_000),
                bandwidth_gb_month: Some(500),
                waf_level: WafLevel::Standard,
                dedicated_allowed: false,
                on_quota: OnQuota::Notify,
            },
        ),
        (
            "enterprise",
            PlanLimits {
                max_users: None,
                max_routes: None,
                max_backends_per_route: None,
                max_domains: None,
                max_workers: None,
                requests_per_minute: Some(60_000),
                burst: Some(10_000),
                tokens_per_minute: Some(2_000_000),
                bandwidth_gb_month: None,
                waf_level: WafLevel::Strict,
                dedicated_allowed: true,
                on_quota: OnQuota::Log,
            },
        ),
    ]
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01 (`days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// The anchor moved `months` months on, keeping its day of month (clamped to the month's
/// length: a period anchored on the 31st renews on the 30th, or the 28th/29th in February)
/// and its time of day.
fn add_months(anchor_ms: i64, months: i64) -> i64 {
    let days = anchor_ms.div_euclid(DAY_MS);
    let time = anchor_ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let total = y * 12 + i64::from(m) - 1 + months;
    let (ny, nm) = (total.div_euclid(12), (total.rem_euclid(12) + 1) as u32);
    days_from_civil(ny, nm, d.min(days_in_month(ny, nm))) * DAY_MS + time
}

/// The monthly billing period containing `now_ms`, as `(start, end)` in unix ms, anchored
/// on the subscription's start: periods begin on the anchor's day of month (UTC), not on a
/// rolling 30-day window. Without an anchor, calendar months.
pub fn billing_period(anchor_ms: Option<u64>, now_ms: u64) -> (u64, u64) {
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX / 2);
    let anchor = match anchor_ms {
        Some(a) => i64::try_from(a).unwrap_or(0),
        None => {
            let (y, m, _) = civil_from_days(now.div_euclid(DAY_MS));
            days_from_civil(y, m, 1) * DAY_MS
        }
    };
    // Estimate the month count, then step to the exact period.
    let mut k = (now - anchor).div_euclid(DAY_MS * 31);
    while add_months(anchor, k + 1) <= now {
        k += 1;
    }
    while k > i64::MIN / 2 && add_months(anchor, k) > now {
        k -= 1;
    }
    let start = add_months(anchor, k);
    let end = add_months(anchor, k + 1);
    (start.max(0) as u64, end.max(0) as u64)
}

/// `2026-11-24T09:30:00Z` for a unix time in milliseconds (UTC, whole seconds).
pub fn rfc3339(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    let secs = ms.rem_euclid(DAY_MS) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_plan_values() {
        let free = default_plans().remove(0).1;
        let o = LimitOverrides {
            max_users: Some(Some(5)),
            max_routes: Some(None),
            waf_level: Some(WafLevel::Strict),
            ..LimitOverrides::default()
        };
        let d = derive_limits(&free, &o);
        assert_eq!(d.max_users, Some(5));
        assert_eq!(d.max_routes, None);
        assert_eq!(d.max_domains, Some(1));
        assert_eq!(d.waf_level, WafLevel::Strict);
        assert_eq!(derive_limits(&free, &LimitOverrides::default()), free);
    }

    fn ms(y: i64, m: u32, d: u32, h: i64) -> u64 {
        (days_from_civil(y, m, d) * DAY_MS + h * 3_600_000) as u64
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(
            rfc3339(ms(2026, 11, 24, 9) + 61_500),
            "2026-11-24T09:01:01Z"
        );
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn billing_periods_follow_the_anchor_day() {
        let anchor = Some(ms(2026, 1, 31, 12));
        assert_eq!(
            billing_period(anchor, ms(2026, 2, 10, 0)),
            (ms(2026, 1, 31, 12), ms(2026, 2, 28, 12))
        );
        assert_eq!(
            billing_period(anchor, ms(2026, 3, 1, 0)),
            (ms(2026, 2, 28, 12), ms(2026, 3, 31, 12))
        );
        assert_eq!(
            billing_period(anchor, ms(2026, 3, 31, 12)),
            (ms(2026, 3, 31, 12), ms(2026, 4, 30, 12))
        );
        // Leap year.
        assert_eq!(
            billing_period(anchor, ms(2028, 2, 29, 13)),
            (ms(2028, 2, 29, 12), ms(2028, 3, 31, 12))
        );
        // No anchor: calendar months.
        assert_eq!(
            billing_period(None, ms(2026, 11, 24, 9)),
            (ms(2026, 11, 1, 0), ms(2026, 12, 1, 0))
        );
        // Before the anchor (clock skew): still a well-formed period.
        let (s, e) = billing_period(anchor, ms(2025, 12, 15, 0));
        assert!(s <= ms(2025, 12, 15, 0) && ms(2025, 12, 15, 0) < e);
        for d in [1_u64, 100, 1000, 10_000] {
            let now = ms(2026, 1, 31, 12) + d * DAY_MS as u64 / 3;
            let (s, e) = billing_period(anchor, now);
            assert!(s <= now && now < e, "{d}");
        }
    }

    #[test]
    fn counts_over_max_are_refused() {
        let free = default_plans().remove(0).1;
        assert_eq!(check_count(&free, CountedLimit::Users, 3), Ok(()));
        assert_eq!(check_count(&free, CountedLimit::Users, 4), Err(3));
        let ent = default_plans().remove(2).1;
        assert_eq!(check_count(&ent, CountedLimit::Users, 1_000_000), Ok(()));
    }
}
