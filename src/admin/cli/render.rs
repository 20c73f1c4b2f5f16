//! How `ls` draws its table: columns like `kubectl get`, ages like `45s` or `3d`.

use std::time::SystemTime;

use crate::admin::views::{VolumeView, parse_rfc3339};
use crate::engine::types::format_size;

/// An age the way `kubectl get` shows it: `45s`, `12m`, `5h`, `3d`.
pub fn age(created: SystemTime, now: SystemTime) -> String {
    let secs = now
        .duration_since(created)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The `ls` table: NAME, STATE, SIZE, USED, POOL, KIND, FRONTEND, OWNER/TASK, AGE, columns padded
/// to their widest cell and three spaces apart.
pub fn table(volumes: &[VolumeView], now: SystemTime) -> String {
    let header = [
        "NAME",
        "STATE",
        "SIZE",
        "USED",
        "POOL",
        "KIND",
        "FRONTEND",
        "OWNER/TASK",
        "AGE",
    ];
    let mut rows: Vec<[String; 9]> = vec![header.map(String::from)];
    for v in volumes {
        let owner = v
            .owner
            .task_id
            .as_ref()
            .or(v.owner.app_id.as_ref())
            .or(v.owner.framework_id.as_ref())
            .cloned()
            .unwrap_or_else(|| "-".into());
        let created = parse_rfc3339(&v.created_at);
        rows.push([
            v.id.clone(),
            v.state.as_str().to_string(),
            v.size_bytes.map(format_size).unwrap_or_else(|| "-".into()),
            v.usage
                .map(|u| format_size(u.bytes_used))
                .unwrap_or_else(|| "-".into()),
            v.pool.clone(),
            v.kind.as_str().to_string(),
            v.frontend.as_str().to_string(),
            owner,
            created.map(|c| age(c, now)).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
