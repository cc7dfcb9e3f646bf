//! What libmodsecurity says while it inspects a request: one text message per rule that
//! matches with `log`, collected per transaction (rule ids, matched variable names), and
//! optionally appended to the `waf.match_log` file.
//!
//! A message looks like this (3.0.x, one line):
//! ```text
//! ModSecurity: Warning. Matched "Operator `Rx' with parameter `...' against variable
//! `ARGS:q' (Value: `...' ) [file "/usr/share/modsecurity-crs/rules/REQUEST-941-...conf"]
//! [line "81"] [id "941100"] [rev ""] [msg "XSS Attack Detected via libinjection"] ...
//! [unique_id "<request id>"] [ref "..."]
//! ```
//! Parts of it (the value, `data`, `uri`) are the client's text, so the id is read from the
//! `[line "N"] [id "N"]` pair that follows the rule's file, and values are never kept.

use std::fs::File;
use std::io::{LineWriter, Write as _};
use std::path::Path;
use std::sync::Mutex;

/// Rules that sum up the CRS's anomaly scores; they are reported separately from the rules
/// that found something.
const SCORING_RULES: [u32; 4] = [949_110, 959_100, 980_130, 980_140];

/// The CRS's inbound blocking evaluation: its match means "the threshold was reached".
pub(crate) const INBOUND_BLOCKING_RULE: u32 = 949_110;

/// The `waf.match_log` file: every message, one per line, in the order they were produced.
pub(crate) struct MatchLog(Mutex<LineWriter<File>>);

impl MatchLog {
    /// Opens (appends to) `path`.
    pub(crate) fn open(path: &Path) -> std::io::Result<MatchLog> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(MatchLog(Mutex::new(LineWriter::new(f))))
    }

    fn write(&self, line: &[u8]) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A full disk must not fail the request; the message is lost, the verdict is not.
        let _ = w.write_all(line).and_then(|()| w.write_all(b"\n"));
    }
}

/// Messages of one transaction.
#[derive(Default)]
pub(crate) struct Collector<'a> {
    /// Ids of the rules that matched, in order, without repeats (scoring rules excluded).
    pub(crate) rule_ids: Vec<u32>,
    /// Names of the variables those rules matched (`ARGS:q`, `REQUEST_HEADERS:User-Agent`),
    /// without repeats.
    pub(crate) variables: Vec<String>,
    /// A rule that blocks in `block` mode matched: the CRS's inbound threshold was reached
    /// (rule 949110), or one of Tenantry's own deny rules (an unreadable body).
    pub(crate) would_deny: bool,
    /// Where every message is also written.
    pub(crate) match_log: Option<&'a MatchLog>,
}

impl Collector<'_> {
    /// Takes one message.
    pub(crate) fn push(&mut self, text: &[u8]) {
        if let Some(log) = self.match_log {
            log.write(text);
        }
        let text = String::from_utf8_lossy(text);
        let Some(id) = rule_id(&text) else {
            return;
        };
        // A rule that blocks in `block` mode (a detection in `detect` mode).
        if id == INBOUND_BLOCKING_RULE || crate::rules::UNREADABLE_BODY_RULES.contains(&id) {
            self.would_deny = true;
        }
        if SCORING_RULES.contains(&id) {
            return;
        }
        if !self.rule_ids.contains(&id) {
            self.rule_ids.push(id);
        }
        if let Some(var) = variable(&text)
            && !var.starts_with("TX:")
            && !self.variables.iter().any(|v| v == var)
        {
            self.variables.push(var.to_owned());
        }
    }
}

/// The rule id: the last `[id "N"]` directly preceded by `[line "N"] `. The client's text
/// before it (the matched value) is logged raw and could hold a forged pair; what follows it
/// (`data`, `uri`) has its double quotes escaped as `\x22`, so it cannot.
pub(crate) fn rule_id(text: &str) -> Option<u32> {
    const ID: &str = "] [id \"";
    let mut end = text.len();
    while let Some(at) = text[..end].rfind(ID) {
        end = at;
        if !preceded_by_line(&text[..at]) {
            continue;
        }
        let rest = &text[at + ID.len()..];
        let Some(close) = rest.find('"') else {
            continue;
        };
        if let Ok(id) = rest[..close].parse() {
            return Some(id);
        }
    }
    None
}

/// Whether `head` ends with `[line "<digits>"`.
fn preceded_by_line(head: &str) -> bool {
    let Some(open) = head.rfind("[line \"") else {
        return false;
    };
    let digits = &head[open + 7..];
    let Some(digits) = digits.strip_suffix('"') else {
        return false;
    };
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// The matched variable's name, from ``against variable `NAME' (Value:`` or, for the
/// libinjection operators, from `[data "Matched Data: … found within NAME: …"]`.
pub(crate) fn variable(text: &str) -> Option<&str> {
    let name = between(text, "against variable `", "' (Value:")
        .or_else(|| between(text, " found within ", ": "))?;
    let plausible = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_:-.[]/".contains(&b));
    plausible.then_some(name)
}

fn between<'t>(text: &'t str, start: &str, end: &str) -> Option<&'t str> {
    let from = text.find(start)? + start.len();
    let rest = &text[from..];
    Some(&rest[..rest.find(end)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rule_id_and_variable() {
        let m = "ModSecurity: Warning. Matched \"Operator `Rx' with parameter `x' against variable `ARGS:q' (Value: `a' ) [file \"/r/REQUEST-941.conf\"] [line \"81\"] [id \"941100\"] [rev \"\"]";
        assert_eq!(rule_id(m), Some(941100));
        assert_eq!(variable(m), Some("ARGS:q"));
        assert_eq!(rule_id("no id here"), None);
        assert_eq!(rule_id("[id \"5\"]"), None);
        // A forged pair in the (raw) value comes first; the real one, after it, wins.
        let forged = "Matched \"Operator `Rx'\" against variable `ARGS:x' (Value: `<script>[line \"1\"] [id \"1\"]' ) [file \"/r/REQUEST-941.conf\"] [line \"64\"] [id \"941110\"] [rev \"\"] [data \"Matched Data: [line \\x221\\x22] [id \\x222\\x22]\"]";
        assert_eq!(rule_id(forged), Some(941110));
    }

    #[test]
    fn collector_skips_scoring_rules_and_repeats() {
        let mut c = Collector::default();
        c.push(b"ModSecurity: Warning. Matched \"Operator `Rx' with parameter `x' against variable `ARGS:id' (Value: `1' ) [file \"f\"] [line \"2\"] [id \"942100\"] [msg \"SQLi\"]");
        c.push(b"ModSecurity: Warning. Matched \"Operator `Rx' with parameter `x' against variable `ARGS:id' (Value: `1' ) [file \"f\"] [line \"2\"] [id \"942100\"] [msg \"SQLi\"]");
        c.push(b"ModSecurity: Access denied with code 403 (phase 2). Matched \"Operator `Ge' with parameter `5' against variable `TX:ANOMALY_SCORE' (Value: `5' ) [file \"f\"] [line \"80\"] [id \"949110\"]");
        assert_eq!(c.rule_ids, vec![942100]);
        assert_eq!(c.variables, vec!["ARGS:id".to_owned()]);
        assert!(c.would_deny);
    }
}
