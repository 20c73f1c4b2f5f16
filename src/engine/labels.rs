//! The syntax of label keys and values, Kubernetes' own, for every label berth stores or
//! matches: a volume's labels, a pool's and a disk's, and the keys and values of a
//! selector. One rule everywhere, so a label set through Docker or Marathon can be printed
//! on a Kubernetes PersistentVolume and matched by a claim's selector unchanged.

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
