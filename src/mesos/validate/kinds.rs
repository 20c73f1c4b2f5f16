//! The Marathon spellings of a persistent volume's disk type and path constraints.

use std::fmt;

use regex::Regex;
use serde::Serialize;

/// The Mesos disk resource type backing a persistent volume (`persistent.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// A directory on the agent's root disk; Marathon's default.
    #[default]
    Root,
    /// A directory on an additional disk.
    Path,
    /// A whole mounted disk, used exclusively.
    Mount,
}

impl VolumeKind {
    /// The spelling Marathon uses in `persistent.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Root => "root",
            VolumeKind::Path => "path",
            VolumeKind::Mount => "mount",
        }
    }

    pub(super) fn from_marathon(value: &str) -> Option<Self> {
        match value {
            "root" => Some(VolumeKind::Root),
            "path" => Some(VolumeKind::Path),
            "mount" => Some(VolumeKind::Mount),
            _ => None,
        }
    }
}

impl fmt::Display for VolumeKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// How a [`PathConstraint`] treats a disk path its pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConstraintOp {
    /// The disk path must match.
    Like,
    /// The disk path must not match.
    Unlike,
}

impl ConstraintOp {
    /// The spelling Marathon uses in a constraint triple.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintOp::Like => "LIKE",
            ConstraintOp::Unlike => "UNLIKE",
        }
    }

    pub(super) fn from_marathon(value: &str) -> Option<Self> {
        match value {
            "LIKE" => Some(ConstraintOp::Like),
            "UNLIKE" => Some(ConstraintOp::Unlike),
            _ => None,
        }
    }
}

impl fmt::Display for ConstraintOp {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A `["path", "LIKE"|"UNLIKE", REGEX]` constraint on where a persistent volume may be created.
/// The pattern must match the whole disk path, as in Marathon.
#[derive(Debug, Clone, Serialize)]
pub struct PathConstraint {
    pub(super) op: ConstraintOp,
    pub(super) pattern: String,
    #[serde(skip)]
    pub(super) whole_path: Regex,
}

impl PathConstraint {
    pub fn new(op: ConstraintOp, pattern: &str) -> Result<Self, InvalidPattern> {
        Ok(PathConstraint {
            op,
            pattern: pattern.to_owned(),
            whole_path: compile_whole_path_pattern(pattern)?,
        })
    }

    pub fn op(&self) -> ConstraintOp {
        self.op
    }

    /// The pattern as written in the definition, without anchors.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether a disk at `disk_path` satisfies this constraint.
    pub fn matches(&self, disk_path: &str) -> bool {
        let pattern_matches = self.whole_path.is_match(disk_path);
        match self.op {
            ConstraintOp::Like => pattern_matches,
            ConstraintOp::Unlike => !pattern_matches,
        }
    }
}

impl PartialEq for PathConstraint {
    fn eq(&self, other: &Self) -> bool {
        self.op == other.op && self.pattern == other.pattern
    }
}

impl Eq for PathConstraint {}

/// A constraint pattern that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("invalid path pattern {pattern:?}")]
pub struct InvalidPattern {
    pub(super) pattern: String,
    #[source]
    source: regex::Error,
}

impl InvalidPattern {
    /// What is wrong with the pattern, on one line.
    pub fn reason(&self) -> String {
        match &self.source {
            // The syntax error text repeats the pattern over several lines with a caret; its last
            // line ("error: ...") is the part that reads well inside a violation message.
            regex::Error::Syntax(text) => text
                .lines()
                .rev()
                .find_map(|line| line.strip_prefix("error: "))
                .map_or_else(|| text.replace('\n', " "), str::to_owned),
            other => other.to_string(),
        }
    }
}

/// Compiles `pattern` so that it must match a whole path, like Marathon's Java `matches()`.
pub(super) fn compile_whole_path_pattern(pattern: &str) -> Result<Regex, InvalidPattern> {
    let invalid = |source| InvalidPattern {
        pattern: pattern.to_owned(),
        source,
    };
    // Compile the bare pattern first: wrapping an invalid one such as `a)(b` in `^(?:...)$` can
    // produce a valid regex with a different meaning.
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}
