//! Query strings of the admin API: percent-decoded, each parameter at most once, and the
//! volume filter `GET /v1/volumes` takes from them.

use std::collections::BTreeMap;

use crate::engine::types::{OwnerFrontend, VolumeFilter, VolumeState};

pub(super) fn volume_filter(query: &Query) -> Result<VolumeFilter, String> {
    query.only(&["state", "pool", "app", "task", "label", "frontend"])?;
    let state = query
        .get("state")
        .map(|s| s.parse::<VolumeState>().map_err(|e| e.to_string()))
        .transpose()?;
    let label = query
        .get("label")
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("invalid label: {l:?} is not KEY=VALUE"))
        })
        .transpose()?;
    Ok(VolumeFilter {
        state,
        pool: query.get("pool").map(str::to_string),
        task_id: query.get("task").map(str::to_string),
        app_id: query.get("app").map(str::to_string),
        label,
        frontend: query
            .get("frontend")
            .map(|f| f.parse::<OwnerFrontend>().map_err(|e| e.to_string()))
            .transpose()?,
    })
}
/// A request's query parameters, each at most once.
#[derive(Debug, Default)]
pub struct Query(BTreeMap<String, String>);

impl Query {
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Refuses parameters outside `allowed`.
    pub(super) fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if allowed.is_empty() => Err(format!(
                "unknown query parameter {k:?}; this route takes none"
            )),
            Some(k) => Err(format!(
                "unknown query parameter {k:?}; this route takes {}",
                allowed.join(", ")
            )),
        }
    }

    /// A boolean parameter: `true`/`false`/`1`/`0`, absent is false.
    pub(super) fn flag(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(other) => Err(format!("invalid {key}: {other:?}; use true or false")),
        }
    }
}

pub(super) fn parse_query(raw: Option<&str>) -> Result<Query, String> {
    let mut query = Query::default();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " "))?;
        let v = percent_decode(&v.replace('+', " "))?;
        if query.0.insert(k.clone(), v).is_some() {
            return Err(format!("query parameter {k:?} is given twice"));
        }
    }
    Ok(query)
}

/// Decodes `%XX` escapes; the result must be UTF-8 without NUL.
pub(super) fn percent_decode(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("malformed percent escape in {raw:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).map_err(|_| format!("{raw:?} is not UTF-8"))?;
    if text.contains('\0') {
        return Err(format!("{raw:?} contains NUL"));
    }
    Ok(text)
}
