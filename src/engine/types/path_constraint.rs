//! Marathon's `path` LIKE/UNLIKE placement constraint, compiled as a whole-path regex.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::engine::error::InputError;

/// A `LIKE`/`UNLIKE` constraint on the path of the disk a volume lands on (Marathon's
/// `["path","LIKE","/mnt/ssd-.+"]`). The pattern must match the whole path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PathConstraint {
    pub like: bool,
    pub pattern: String,
}

impl PathConstraint {
    pub fn new(like: bool, pattern: &str) -> Result<Self, InputError> {
        whole_path_regex(pattern).map_err(|e| InputError::Invalid {
            field: "constraints".into(),
            reason: format!(
                "{pattern:?} is not a valid regular expression: {}",
                regex_reason(&e)
            ),
        })?;
        Ok(Self {
            like,
            pattern: pattern.to_string(),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        let matched = whole_path_regex(&self.pattern)
            .map(|re| re.is_match(path))
            .unwrap_or(false);
        matched == self.like
    }
}

/// `pattern` anchored to match a whole path. The bare pattern must compile by itself first:
/// wrapped in `^(?:...)$`, an unbalanced one such as `a)|(?:b` compiles to a different,
/// unanchored expression (found by the `path_constraint` fuzz target).
fn whole_path_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(pattern)?;
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// What is wrong with a pattern, on one line: a syntax error repeats the pattern over
/// several lines with a caret; its last line ("error: ...") is the part that reads well.
fn regex_reason(error: &regex::Error) -> String {
    match error {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("error: "))
            .map_or_else(|| text.replace('\n', " "), str::to_owned),
        other => other.to_string(),
    }
}

impl fmt::Display for PathConstraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.like { "LIKE" } else { "UNLIKE" };
        write!(f, "[\"path\",\"{op}\",{:?}]", self.pattern)
    }
}
