//! Tenantry's engine configuration and the CRS set-up of each level, written as the text of
//! one rules set. Nothing is copied from `modsecurity.conf-recommended` or `crs-setup.conf`:
//! the directives below are the few the gateway needs, with values that follow from its own
//! settings (the body bound, the level's paranoia and threshold).

use std::fmt::Write as _;

use tenantry_config::{WafLevelTuning, WafSettings};
use tenantry_domain::{WafLevel, WafMode};

/// Which rules set a route uses: routes with the same key share one compiled set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RulesKey {
    /// The level (never `Off`: such routes have no set).
    pub level: WafLevel,
    /// `Detect` runs the level's rules under `SecRuleEngine DetectionOnly`.
    pub mode: WafMode,
    /// Rule ids removed from the set (`SecRuleRemoveById`).
    pub exclusions: Box<[u32]>,
}

/// Id of Tenantry's own rules (below the CRS's 900000–999999 range).
pub(crate) const RULE_JSON_BODY: u32 = 10_001;
/// Sends XML bodies to the XML parser.
pub(crate) const RULE_XML_BODY: u32 = 10_002;
/// Refuses a complete body the parser could not read (an evasion otherwise: nothing of it
/// would reach `ARGS`).
pub(crate) const RULE_BODY_ERROR: u32 = 10_003;
/// Refuses a multipart body with an ambiguous structure (same reason).
pub(crate) const RULE_MULTIPART_ERROR: u32 = 10_004;
/// Tenantry's own rules that deny: an unreadable body.
pub(crate) const UNREADABLE_BODY_RULES: [u32; 2] = [RULE_BODY_ERROR, RULE_MULTIPART_ERROR];

/// The header through which Tenantry tells its own rules that the body was cut at
/// `waf.max_body` (a client's header of that name is never passed on to the engine).
pub(crate) const PARTIAL_BODY_HEADER: &str = "tenantry-waf-partial-body";

/// The tuning of a level.
pub(crate) fn tuning(s: &WafSettings, level: WafLevel) -> WafLevelTuning {
    match level {
        WafLevel::Basic | WafLevel::Off => s.basic,
        WafLevel::Standard => s.standard,
        WafLevel::Strict => s.strict,
    }
}

/// The directives that make `key`'s set out of its level's blocking set (parsed before that
/// set is merged in, so the engine mode set here wins; the removals apply as rules run).
pub(crate) fn head(key: &RulesKey) -> String {
    let mut out = String::new();
    if key.mode == WafMode::Detect {
        out.push_str("SecRuleEngine DetectionOnly\n");
    }
    if !key.exclusions.is_empty() {
        out.push_str("SecRuleRemoveById");
        for id in &key.exclusions {
            let _ = write!(out, " {id}");
        }
        out.push('\n');
    }
    out
}

/// The text of `level`'s blocking set without exclusions, the one set per level compiled
/// whole (every other key of the level derives from it with [`head`]).
pub(crate) fn text(s: &WafSettings, level: WafLevel) -> String {
    let t = tuning(s, level);
    // ModSecurity's own body limit sits above ours: the proxy never hands it more than
    // `max_body` bytes, and says so when it cut the body.
    let limit = s.max_body.saturating_add(1);
    let crs = s.crs_dir.join("rules");
    let mut out = String::with_capacity(2048);
    let _ = write!(
        out,
        r#"SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit {limit}
SecRequestBodyNoFilesLimit {limit}
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecArgumentSeparator &
SecCookieFormat 0
SecPcreMatchLimit 100000
SecPcreMatchLimitRecursion 100000
SecAuditEngine Off
SecStatusEngine Off
SecRule REQUEST_HEADERS:Content-Type "@rx ^application/(?:[a-z0-9.+-]+\+)?json" "id:{RULE_JSON_BODY},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQUEST_HEADERS:Content-Type "@rx ^(?:application(?:/soap\+|/)|text/)xml" "id:{RULE_XML_BODY},phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQBODY_ERROR "!@eq 0" "id:{RULE_BODY_ERROR},phase:2,t:none,log,deny,status:400,msg:'Request body could not be parsed',chain"
  SecRule &REQUEST_HEADERS:{PARTIAL_BODY_HEADER} "@eq 0" "t:none"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:{RULE_MULTIPART_ERROR},phase:2,t:none,log,deny,status:400,msg:'Multipart body is ambiguous',chain"
  SecRule &REQUEST_HEADERS:{PARTIAL_BODY_HEADER} "@eq 0" "t:none"
SecDefaultAction "phase:1,log,auditlog,pass"
SecDefaultAction "phase:2,log,auditlog,pass"
SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level={pl}"
SecAction "id:900001,phase:1,nolog,pass,t:none,setvar:tx.executing_paranoia_level={epl}"
SecAction "id:900110,phase:1,nolog,pass,t:none,setvar:tx.inbound_anomaly_score_threshold={threshold},setvar:tx.outbound_anomaly_score_threshold=4"
SecAction "id:900990,phase:1,nolog,pass,t:none,setvar:tx.crs_setup_version=334"
Include {crs}/*.conf
"#,
        pl = t.paranoia,
        epl = t.executing_paranoia.max(t.paranoia),
        threshold = t.threshold,
        crs = crs.display(),
    );
    for p in &s.extra_rules {
        let _ = writeln!(out, "Include {}", p.display());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_follows_level_mode_and_exclusions() {
        let s = WafSettings::default();
        // The level in the compiled text; the mode and exclusions in the derived head.
        let t = text(&s, WafLevel::Strict);
        let h = head(&RulesKey {
            level: WafLevel::Strict,
            mode: WafMode::Detect,
            exclusions: vec![942100, 941100].into(),
        });
        assert!(h.contains("SecRuleEngine DetectionOnly\n"));
        assert!(t.contains("tx.paranoia_level=2\""));
        assert!(t.contains("tx.executing_paranoia_level=3\""));
        assert!(t.contains("tx.inbound_anomaly_score_threshold=5,"));
        assert!(t.contains("Include /usr/share/modsecurity-crs/rules/*.conf\n"));
        assert!(h.ends_with("SecRuleRemoveById 942100 941100\n"));
        let b = text(&s, WafLevel::Basic);
        let bh = head(&RulesKey {
            level: WafLevel::Basic,
            mode: WafMode::Block,
            exclusions: Box::default(),
        });
        assert!(b.contains("SecRuleEngine On\n"));
        assert!(b.contains("tx.inbound_anomaly_score_threshold=10,"));
        assert!(!b.contains("SecRuleRemoveById"));
        assert!(bh.is_empty());
    }
}
