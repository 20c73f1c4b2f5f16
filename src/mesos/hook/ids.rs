//! Task and framework ids, and the persistence ids (`APP#CONTAINERPATH#UUID`) that name new
//! reservations.

use crate::engine::types::{MAX_NAME_LEN, VolumeName};

use super::error::HookError;

/// The longest task or framework id accepted (Mesos ids are far shorter).
const MAX_ID_LEN: usize = 512;
/// Mesos' rule for ids: not empty, not `.` or `..`, no `/`, `\` or control characters. Task
/// ids become path components here, so the rule matters.
pub(super) fn check_id(field: &str, id: &str) -> Result<(), HookError> {
    let reason = if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_ID_LEN {
        Some("is too long")
    } else if id == "." || id == ".." {
        Some("must not be . or ..")
    } else if id.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        Some("must not contain /, \\ or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(HookError::BadRequest(format!(
            "{field} {:?} {reason}",
            id.escape_debug().to_string()
        ))),
        None => Ok(()),
    }
}

/// The engine volume name of a new reservation: its persistence id `APP#CONTAINERPATH#UUID`,
/// APP being the app id without its leading `/` and with `/` as `.` (`/prod/mysql` ->
/// `prod.mysql`). A name longer than [`MAX_NAME_LEN`] keeps the UUID and a hash of the
/// whole `APP#CONTAINERPATH`, so it stays unique and the same for the same app and path.
pub(super) fn persistence_id(
    app_id: &str,
    container_path: &str,
    uuid: &str,
) -> Result<VolumeName, HookError> {
    let app = app_id.trim_start_matches('/').replace('/', ".");
    let head = format!("{app}#{container_path}");
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.-#:@+".contains(c);
    if let Some(bad) = head.chars().find(|c| !allowed(*c)) {
        return Err(HookError::BadRequest(format!(
            "app {app_id}, volume {container_path:?}: {bad:?} cannot be part of a volume name \
             (APP#CONTAINERPATH#UUID); use letters, digits and _ . - : @ +"
        )));
    }
    let full = format!("{head}#{uuid}");
    let name = if full.len() <= MAX_NAME_LEN {
        full
    } else {
        // `+` and 16 hex digits of the hash, `#`, the UUID.
        let keep = MAX_NAME_LEN.saturating_sub(uuid.len() + 18);
        format!("{}+{:016x}#{uuid}", &head[..keep], fnv1a(head.as_bytes()))
    };
    VolumeName::parse(&name).map_err(|e| {
        HookError::BadRequest(format!(
            "app {app_id}, volume {container_path:?}: the persistence id is not a usable volume \
             name: {e}"
        ))
    })
}

/// 64-bit FNV-1a: a hash whose value never changes between builds (std's does not promise so).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A random (version 4) UUID made of `bytes`, as Marathon uses in persistence ids.
pub(super) fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}
