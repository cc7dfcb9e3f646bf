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
                tokens_per_minute: Some(2_000_000),
                bandwidth_gb_month: None,
                waf_level: WafLevel::Strict,
                dedicated_allowed: true,
                on_quota: OnQuota::Log,
            },
        ),
    ]
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

    #[test]
    fn counts_over_max_are_refused() {
        let free = default_plans().remove(0).1;
        assert_eq!(check_count(&free, CountedLimit::Users, 3), Ok(()));
        assert_eq!(check_count(&free, CountedLimit::Users, 4), Err(3));
        let ent = default_plans().remove(2).1;
        assert_eq!(check_count(&ent, CountedLimit::Users, 1_000_000), Ok(()));
    }
}
