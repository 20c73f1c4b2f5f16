//! The engine's `PathConstraint::new` + `matches`, against the Marathon validator's own
//! implementation of the same rule. Input: the pattern on the first line, the path after it.
//!
//! Properties: a pattern the engine accepts is a valid regular expression by itself (so
//! wrapping it in `^(?:...)$` cannot change its meaning: `a)|(?:b` must be refused), LIKE
//! and UNLIKE are exact complements, and the engine and the validator agree on every path.
#![no_main]

use berth::engine::types::PathConstraint;
use berth::mesos::validate::{ConstraintOp, PathConstraint as MarathonConstraint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, path) = text.split_once('\n').unwrap_or((text, ""));
    let like = PathConstraint::new(true, pattern);
    let unlike = PathConstraint::new(false, pattern);
    assert_eq!(like.is_ok(), unlike.is_ok());
    let marathon = MarathonConstraint::new(ConstraintOp::Like, pattern);
    let (Ok(like), Ok(unlike)) = (like, unlike) else {
        return;
    };
    assert!(
        regex::Regex::new(pattern).is_ok(),
        "the engine accepted {pattern:?}, which is not a regular expression by itself"
    );
    let matched = like.matches(path);
    assert_eq!(matched, !unlike.matches(path), "{pattern:?} {path:?}");
    match marathon {
        Ok(m) => assert_eq!(matched, m.matches(path), "{pattern:?} {path:?}"),
        Err(e) => panic!("the engine accepted {pattern:?}, the validator refused it: {e}"),
    }
});
