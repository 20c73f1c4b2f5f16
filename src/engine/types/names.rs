//! Volume names and sizes as the engine accepts them: checked once at the edge, so nothing
//! downstream sees an unchecked name or a negative size.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::error::InputError;

/// The longest volume name berth accepts. Kubernetes PV names (`pvc-<uuid>`, 40 bytes) and
/// Mesos persistence ids (`app#path#uuid`) fit with room to spare; the limit keeps every path
/// berth builds from a name far below `PATH_MAX`.
pub const MAX_NAME_LEN: usize = 128;

/// A volume's name, which is also its id in every front-end.
///
/// Allowed: ASCII letters, digits and `_ . - # : @ +`, first character a letter or digit,
/// at most [`MAX_NAME_LEN`] bytes. So a name is always one path component: it can contain no
/// `/`, no NUL, and cannot be `.` or `..` (they start with a dot).
///
/// Shared (`Arc<str>`): the volume table's key and the record it indexes hold one copy, and
/// a copy for a listing or a lock is a reference count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeName(Arc<str>);

impl VolumeName {
    pub fn parse(raw: &str) -> Result<Self, InputError> {
        let invalid = |reason: &str| InputError::Name {
            name: raw.escape_debug().to_string(),
            reason: reason.to_string(),
        };
        if raw.is_empty() {
            return Err(invalid("a name cannot be empty"));
        }
        if raw.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "a name is at most {MAX_NAME_LEN} bytes, this one has {}",
                raw.len()
            )));
        }
        let first = raw.as_bytes()[0];
        if !first.is_ascii_alphanumeric() {
            return Err(invalid("a name starts with a letter or a digit"));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.-#:@+".contains(*c)))
        {
            return Err(invalid(&format!(
                "{:?} is not allowed; use letters, digits and _ . - # : @ +",
                bad
            )));
        }
        Ok(Self(Arc::from(raw)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for VolumeName {
    type Err = InputError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for VolumeName {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<VolumeName> for String {
    fn from(n: VolumeName) -> String {
        n.0.to_string()
    }
}

impl Serialize for VolumeName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VolumeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = VolumeName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a volume name")
            }

            fn visit_str<E: serde::de::Error>(self, raw: &str) -> Result<VolumeName, E> {
                VolumeName::parse(raw).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// Parses a size: plain bytes (`1048576`) or a number with a unit. Binary units (`KiB`, `MiB`,
/// `GiB`, `TiB`, and Docker's/Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`) are powers of 1024; decimal
/// units (`k`/`K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB`) powers of 1000, as in Kubernetes
/// quantities. Negative, fractional-byte, empty and overflowing sizes are refused.
pub fn parse_size(raw: &str) -> Result<u64, InputError> {
    let invalid = |reason: &str| InputError::Size {
        value: raw.escape_debug().to_string(),
        reason: reason.to_string(),
    };
    let text = raw.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(invalid(
            "a size is a number of bytes or a number with a unit, such as 4096, 512MiB, 1.5GiB or 10G",
        ));
    }
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "M" | "MB" => 1000u64.pow(2),
        "G" | "GB" => 1000u64.pow(3),
        "T" | "TB" => 1000u64.pow(4),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(invalid(&format!(
                "unknown unit {other:?}; use B, KiB, MiB, GiB, TiB (or K, M, G, T for powers of 1000)"
            )));
        }
    };
    let bytes = if let Some((whole, frac)) = number.split_once('.') {
        if whole.is_empty() || frac.is_empty() || frac.contains('.') {
            return Err(invalid("malformed number"));
        }
        let whole: u64 = whole.parse().map_err(|_| invalid("number too large"))?;
        let digits = frac.len().min(9);
        let frac_value: u64 = frac[..digits]
            .parse()
            .map_err(|_| invalid("malformed number"))?;
        let scale = 10u64.pow(digits as u32);
        let frac_bytes = (u128::from(frac_value) * u128::from(multiplier)) / u128::from(scale);
        whole
            .checked_mul(multiplier)
            .and_then(|w| w.checked_add(frac_bytes as u64))
            .ok_or_else(|| invalid("size too large"))?
    } else {
        let whole: u64 = number.parse().map_err(|_| invalid("size too large"))?;
        whole
            .checked_mul(multiplier)
            .ok_or_else(|| invalid("size too large"))?
    };
    if bytes == 0 {
        return Err(invalid("a size must be greater than zero"));
    }
    Ok(bytes)
}

/// Formats bytes the way operators read them: the largest binary unit that divides evenly,
/// otherwise one decimal place.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            if bytes.is_multiple_of(scale) {
                return format!("{}{unit}", bytes / scale);
            }
            return format!("{:.1}{unit}", bytes as f64 / scale as f64);
        }
    }
    format!("{bytes}B")
}
