//! The syntax of label keys and values, Kubernetes' own, for every label berth stores or
//! matches: a volume's labels, a pool's and a disk's, and the keys and values of a
//! selector. One rule everywhere, so a label set through Docker or Marathon can be printed
//! on a Kubernetes PersistentVolume and matched by a claim's selector unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A volume's labels: pairs in key order, each key once, in one allocation sized to fit.
///
/// Why not a `BTreeMap`: every volume record in memory carries its labels, and a map's
/// smallest node holds room for eleven pairs (over 500 bytes for one or two labels). Keys
/// repeat from volume to volume (Kubernetes puts the same two on every claim's volume), so
/// they are shared ([`shared_key`]). Stored and shown exactly as a map (`{"team": "db"}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSet(Box<[(Arc<str>, Box<str>)]>);

/// The most distinct label keys kept shared; keys beyond them are each volume's own, so
/// a stream of made-up keys cannot grow the daemon.
const MAX_SHARED_KEYS: usize = 256;

/// `key`, shared with every other label of the same key while fewer than
/// [`MAX_SHARED_KEYS`] keys are.
fn shared_key(key: &str) -> Arc<str> {
    static KEYS: Mutex<BTreeSet<Arc<str>>> = Mutex::new(BTreeSet::new());
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = keys.get(key) {
        return Arc::clone(shared);
    }
    let key: Arc<str> = Arc::from(key);
    if keys.len() < MAX_SHARED_KEYS {
        keys.insert(Arc::clone(&key));
    }
    key
}

impl LabelSet {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find(key).ok().map(|i| &*self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `key` to `value`, replacing what it had.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        let mut pairs = std::mem::take(&mut self.0).into_vec();
        match pairs.binary_search_by(|(k, _)| (**k).cmp(key.as_str())) {
            Ok(i) => pairs[i].1 = value.into_boxed_str(),
            Err(i) => pairs.insert(i, (shared_key(&key), value.into_boxed_str())),
        }
        self.0 = pairs.into_boxed_slice();
    }

    /// Every pair in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.into_iter()
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for LabelSet {
    /// A key given twice keeps its last value, as a map would.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut pairs: Vec<(Arc<str>, Box<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (shared_key(&k.into()), v.into().into_boxed_str()))
            .collect();
        // Stable: of equal keys the last given sorts last, and is the one kept.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(Arc<str>, Box<str>)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match kept.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => kept.push(pair),
            }
        }
        Self(kept.into_boxed_slice())
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for LabelSet {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, pairs: I) {
        let old = std::mem::take(&mut self.0).into_vec();
        *self = old
            .into_iter()
            .map(|(k, v)| (k.to_string(), String::from(v)))
            .chain(pairs.into_iter().map(|(k, v)| (k.into(), v.into())))
            .collect();
    }
}

impl<'a> IntoIterator for &'a LabelSet {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Arc<str>, Box<str>)>,
        fn(&'a (Arc<str>, Box<str>)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for LabelSet {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for LabelSet {
    fn from(map: BTreeMap<String, String>) -> Self {
        map.into_iter().collect()
    }
}

impl std::ops::Index<&str> for LabelSet {
    type Output = str;

    fn index(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("no label {key:?}"))
    }
}

impl Serialize for LabelSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = LabelSet;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of label keys to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LabelSet, A::Error> {
                let mut pairs: Vec<(String, String)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// The longest label name and value (the part after a key's `prefix/`).
const MAX_NAME: usize = 63;
/// The longest key prefix, a DNS subdomain.
const MAX_PREFIX: usize = 253;

/// Why `key` is not a label key, or `None` when it is: an optional DNS-subdomain prefix and
/// `/`, then a name of 1 to 63 letters, digits, `-`, `_` and `.`, starting and ending with a
/// letter or digit (`team`, `app.kubernetes.io/name`).
pub fn key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let subdomain = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && prefix
                .split('.')
                .all(|part| !part.is_empty() && !part.starts_with('-') && !part.ends_with('-'));
        if !subdomain {
            return Some(format!(
                "label key {key:?}: the prefix before \"/\" must be a DNS subdomain such as example.com"
            ));
        }
    }
    if name.is_empty() {
        return Some(format!("label key {key:?} has an empty name"));
    }
    if !valid_name(name) {
        return Some(format!(
            "label key {key:?}: a name is at most {MAX_NAME} letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    None
}

/// Why `value` is not a label value, or `None`: empty, or like a key's name.
pub fn value_error(value: &str) -> Option<String> {
    if value.is_empty() || valid_name(value) {
        return None;
    }
    Some(format!(
        "label value {value:?}: a value is empty or at most {MAX_NAME} letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    ))
}

fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_set_is_a_map_in_key_order() {
        let mut set: LabelSet = [("team", "db"), ("app", "x"), ("team", "web")]
            .into_iter()
            .collect();
        assert_eq!(set.get("team"), Some("web"), "the last value given wins");
        assert_eq!(set.len(), 2);
        set.insert("rack", "r1");
        set.insert("app", "y");
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [("app", "y"), ("rack", "r1"), ("team", "web")]
        );
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"{"app":"y","rack":"r1","team":"web"}"#);
        let back: LabelSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.to_map(), set.to_map());
        assert!(!back.contains_key("nope") && back.contains_key("rack"));
        let dup: LabelSet = serde_json::from_str(r#"{"a":"1","a":"2"}"#).unwrap();
        assert_eq!(dup.get("a"), Some("2"));
        set.extend([("app", "z"), ("b", "1")]);
        assert_eq!(set.get("app"), Some("z"));
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn keys_are_shared_up_to_a_bound() {
        let a: LabelSet = [("shared.example.com/k", "1")].into();
        let b: LabelSet = [("shared.example.com/k", "2")].into();
        assert!(
            Arc::ptr_eq(&a.0[0].0, &b.0[0].0),
            "one copy of a repeated key"
        );
        // Made-up keys past the bound are each set's own; the bound holds.
        for i in 0..MAX_SHARED_KEYS + 10 {
            let _: LabelSet = [(format!("k{i}"), "v")].into();
        }
        let late = format!("k{}", MAX_SHARED_KEYS + 5);
        let c: LabelSet = [(late.as_str(), "v")].into();
        let d: LabelSet = [(late.as_str(), "v")].into();
        assert_eq!(c, d);
        assert!(!Arc::ptr_eq(&c.0[0].0, &d.0[0].0));
    }

    #[test]
    fn kubernetes_keys_pass_and_others_say_why() {
        for good in [
            "team",
            "app.kubernetes.io/name",
            "a",
            "rack-1",
            "x_y.z",
            &"k".repeat(63),
        ] {
            assert_eq!(key_error(good), None, "{good}");
        }
        let cases = [
            ("", "empty name"),
            ("-team", "starting and ending"),
            ("team-", "starting and ending"),
            ("a b", "letters, digits"),
            ("../../victim", "DNS subdomain"),
            ("Example.com/x", "DNS subdomain"),
            ("example.com/", "empty name"),
            ("/x", "DNS subdomain"),
            ("a/b/c", "letters, digits"),
        ];
        for (key, needle) in cases {
            let error = key_error(key).unwrap_or_else(|| panic!("{key:?} accepted"));
            assert!(error.contains(needle), "{key:?}: {error}");
        }
        assert!(key_error(&"k".repeat(64)).is_some());
    }

    #[test]
    fn values_may_be_empty_but_follow_the_name_rule() {
        for good in ["", "db", "r1", "1.2.3", "a_b-c"] {
            assert_eq!(value_error(good), None, "{good}");
        }
        for bad in ["a b", "-x", "x.", "a/b", &"v".repeat(64)] {
            assert!(value_error(bad).is_some(), "{bad:?} accepted");
        }
    }
}
