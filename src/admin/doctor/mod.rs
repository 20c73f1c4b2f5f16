//! `berth doctor`: checks this node as berth needs it and says what to do about each
//! failure. The checks only look (the host side is in [`crate::host::probe`]); the report
//! is a table or JSON, and any failed check makes the command fail.

mod checks;

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

use crate::config::Config;

pub use checks::run_checks;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but probably not as meant.
    Warn,
    /// berth cannot do its job here until this is fixed.
    Fail,
    /// Does not apply to this configuration.
    Skip,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it; empty when nothing needs doing.
    pub fix: String,
}

impl Check {
    pub(crate) fn new(check: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    pub(crate) fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoctorFormat {
    Table,
    Json,
}

/// `berth doctor` options.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The config file the daemon runs with; without one, the embedded default.
    #[arg(long, short, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// kubelet's root directory (its --root-dir).
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: DoctorFormat,
}

#[derive(Debug, Error)]
pub enum DoctorError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{failed} of {total} checks failed (each says what to do)")]
    Failed { failed: usize, total: usize },
    #[error("writing the report: {0}")]
    Output(#[source] std::io::Error),
}

impl DoctorArgs {
    /// Runs every check, prints the report on stdout and fails if any check failed.
    pub fn run(self) -> Result<(), DoctorError> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let report = run_checks(&config, &self.kubelet_dir);
        let mut out = std::io::stdout().lock();
        let text = match self.output {
            DoctorFormat::Table => render_table(&report),
            DoctorFormat::Json => {
                let mut json = serde_json::to_string_pretty(&report).unwrap_or_default();
                json.push('\n');
                json
            }
        };
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(DoctorError::Output)?;
        let failed = report.iter().filter(|c| c.status == Status::Fail).count();
        if failed > 0 {
            return Err(DoctorError::Failed {
                failed,
                total: report.len(),
            });
        }
        Ok(())
    }
}

/// `CHECK  STATUS  DETAIL` columns, with each fix on an indented line below its check.
pub fn render_table(report: &[Check]) -> String {
    let width = report
        .iter()
        .map(|c| c.check.chars().count())
        .max()
        .unwrap_or(0)
        .max("CHECK".len());
    let mut out = format!("{:<width$}  {:<6}  DETAIL\n", "CHECK", "STATUS");
    for c in report {
        out.push_str(&format!(
            "{:<width$}  {:<6}  {}\n",
            c.check,
            c.status.as_str(),
            c.detail
        ));
        if !c.fix.is_empty() {
            out.push_str(&format!("{:<width$}  {:<6}  -> {}\n", "", "", c.fix));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_and_puts_fixes_under_their_check() {
        let report = vec![
            Check::new("loop devices", Status::Ok, "opened /dev/loop-control"),
            Check::new("pool default: free space", Status::Fail, "0B available").fix("free space"),
        ];
        let table = render_table(&report);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("CHECK "));
        assert!(lines[2].starts_with("pool default: free space  FAIL    0B available"));
        assert!(
            lines[3].trim_start().starts_with("-> free space"),
            "{table}"
        );
    }
}
