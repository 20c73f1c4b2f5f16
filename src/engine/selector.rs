//! Label selectors in Kubernetes' grammar, matched on the labels of a pool and of the disk
//! or path a volume would land on. Requirements are joined by commas (all must hold):
//! `key=value` (or `key==value`), `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`
//! (the label is set) and `!key` (it is not). As in Kubernetes, `!=` and `notin` also hold
//! where the label is absent.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::labels::{key_error, value_error};

/// A parsed selector; it keeps the requirements in the order written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Requirement {
    key: String,
    op: Operator,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Operator {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Parses a selector; the error says which requirement is wrong and how.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("a selector needs at least one requirement, such as media=ssd".into());
        }
        let requirements = split_top_level(text)?
            .into_iter()
            .enumerate()
            .map(|(index, part)| {
                parse_requirement(part.trim())
                    .map_err(|why| format!("requirement {} {:?}: {why}", index + 1, part.trim()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { requirements })
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.unmet(labels).is_none()
    }

    /// The first requirement `labels` fail, written as in the selector.
    pub fn unmet(&self, labels: &BTreeMap<String, String>) -> Option<String> {
        self.requirements
            .iter()
            .find(|r| !r.holds(labels.get(&r.key).map(String::as_str)))
            .map(Requirement::to_string)
    }
}

impl Requirement {
    fn holds(&self, value: Option<&str>) -> bool {
        let among = |set: &[String]| value.is_some_and(|v| set.iter().any(|s| s == v));
        match &self.op {
            Operator::Equals(wanted) => value == Some(wanted.as_str()),
            Operator::NotEquals(unwanted) => value != Some(unwanted.as_str()),
            Operator::In(set) => among(set),
            Operator::NotIn(set) => !among(set),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// Splits at the commas that are not inside a `( )` value set.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, c) in text.char_indices() {
        match c {
            '(' if depth == 0 => depth = 1,
            '(' => return Err("value sets cannot be nested: \"((\"".into()),
            ')' if depth == 0 => return Err("\")\" without a matching \"(\"".into()),
            ')' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("\"(\" without a matching \")\"".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    if text.is_empty() {
        return Err("empty requirement; write requirements separated by single commas".into());
    }
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Requirement {
            key: checked_key(key.trim())?,
            op: Operator::DoesNotExist,
        });
    }
    let key_end = text
        .find(|c: char| c.is_whitespace() || "=!()".contains(c))
        .unwrap_or(text.len());
    let key = checked_key(&text[..key_end])?;
    let rest = text[key_end..].trim_start();
    let op = if rest.is_empty() {
        Operator::Exists
    } else if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        Operator::Equals(checked_value(value.trim())?)
    } else if let Some(value) = rest.strip_prefix("!=") {
        Operator::NotEquals(checked_value(value.trim())?)
    } else if let Some(set) = keyword(rest, "notin") {
        Operator::NotIn(value_set(set)?)
    } else if let Some(set) = keyword(rest, "in") {
        Operator::In(value_set(set)?)
    } else {
        return Err(format!(
            "expected =, ==, !=, in or notin after the key, got {rest:?}"
        ));
    };
    Ok(Requirement { key, op })
}

/// The text after `word` when `rest` starts with it as a whole word.
fn keyword<'t>(rest: &'t str, word: &str) -> Option<&'t str> {
    let after = rest.strip_prefix(word)?;
    (after.is_empty() || after.starts_with(|c: char| c.is_whitespace() || c == '('))
        .then(|| after.trim())
}

fn value_set(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| {
            format!("in and notin take a set in parentheses, such as (a,b); got {text:?}")
        })?;
    if inner.trim().is_empty() {
        return Err("the value set is empty; name at least one value".into());
    }
    inner.split(',').map(|v| checked_value(v.trim())).collect()
}

fn checked_key(key: &str) -> Result<String, String> {
    if key.is_empty() {
        return Err("a requirement starts with a label key".into());
    }
    match key_error(key) {
        Some(why) => Err(why),
        None => Ok(key.to_string()),
    }
}

fn checked_value(value: &str) -> Result<String, String> {
    match value_error(value) {
        Some(why) => Err(why),
        None => Ok(value.to_string()),
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match &self.op {
            Operator::Equals(v) => write!(f, "{key}={v}"),
            Operator::NotEquals(v) => write!(f, "{key}!={v}"),
            Operator::In(set) => write!(f, "{key} in ({})", set.join(",")),
            Operator::NotIn(set) => write!(f, "{key} notin ({})", set.join(",")),
            Operator::Exists => write!(f, "{key}"),
            Operator::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl TryFrom<String> for LabelSelector {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<LabelSelector> for String {
    fn from(selector: LabelSelector) -> String {
        selector.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn verdicts(selector: &str, sets: &[&[(&str, &str)]]) -> Vec<bool> {
        let parsed = LabelSelector::parse(selector).unwrap();
        sets.iter()
            .map(|set| parsed.matches(&labels(set)))
            .collect()
    }

    const SSD: &[(&str, &str)] = &[("media", "ssd"), ("rack", "r1")];
    const HDD: &[(&str, &str)] = &[("media", "hdd"), ("rack", "r3")];
    const BARE: &[(&str, &str)] = &[];

    #[test]
    fn each_operator_matches_as_in_kubernetes() {
        let sets = [SSD, HDD, BARE];
        assert_eq!(verdicts("media=ssd", &sets), [true, false, false]);
        assert_eq!(verdicts("media==ssd", &sets), [true, false, false]);
        assert_eq!(verdicts("media!=ssd", &sets), [false, true, true]);
        assert_eq!(verdicts("rack in (r1,r2)", &sets), [true, false, false]);
        assert_eq!(verdicts("rack notin (r1,r2)", &sets), [false, true, true]);
        assert_eq!(verdicts("media", &sets), [true, true, false]);
        assert_eq!(verdicts("!media", &sets), [false, false, true]);
        assert_eq!(
            verdicts(" media = ssd , rack in ( r1 , r2 ) ", &sets),
            [true, false, false]
        );
        assert_eq!(verdicts("media=ssd,rack=r3", &sets), [false, false, false]);
    }

    #[test]
    fn unmet_names_the_failing_requirement() {
        let selector = LabelSelector::parse("media=ssd,rack in (r1,r2)").unwrap();
        assert_eq!(
            selector.unmet(&labels(&[("media", "ssd"), ("rack", "r9")])),
            Some("rack in (r1,r2)".into())
        );
        assert_eq!(selector.unmet(&labels(SSD)), None);
    }

    #[test]
    fn written_form_round_trips_through_serde() {
        let selector = LabelSelector::parse("a=b , c notin (d,e),!f,g, h!=i").unwrap();
        assert_eq!(selector.to_string(), "a=b,c notin (d,e),!f,g,h!=i");
        let json = serde_json::to_string(&selector).unwrap();
        assert_eq!(json, "\"a=b,c notin (d,e),!f,g,h!=i\"");
        assert_eq!(
            serde_json::from_str::<LabelSelector>(&json).unwrap(),
            selector
        );
        assert!(serde_json::from_str::<LabelSelector>("\"a in\"").is_err());
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let cases = [
            ("", "at least one requirement"),
            ("  ", "at least one requirement"),
            ("a=b,,c", "requirement 2 \"\": empty requirement"),
            ("a=b,", "requirement 2"),
            ("rack in (r1", "without a matching \")\""),
            ("rack in r1)", "without a matching \"(\""),
            ("rack in ((r1))", "cannot be nested"),
            ("rack in ()", "value set is empty"),
            ("rack in r1", "in parentheses"),
            ("rack notin", "in parentheses"),
            ("rack < 3", "expected =, ==, !=, in or notin"),
            ("rack inside (a)", "expected =, ==, !=, in or notin"),
            ("=ssd", "starts with a label key"),
            ("!", "starts with a label key"),
            ("me dia=ssd", "expected =, ==, !=, in or notin"),
            ("-media=ssd", "label key \"-media\""),
            ("media=s s d", "label value \"s s d\""),
            ("rack in (r1,r 2)", "label value \"r 2\""),
        ];
        for (text, needle) in cases {
            let error = LabelSelector::parse(text).expect_err(text);
            assert!(error.contains(needle), "{text:?}: {error}");
        }
    }
}
