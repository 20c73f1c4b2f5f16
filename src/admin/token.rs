//! The admin API's bearer token: read from the config at start, never shown by `Debug`,
//! compared in constant time.

use std::fmt;
use std::os::unix::fs::PermissionsExt;

use crate::config::Config;
use crate::server::ServeError;

/// The bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.is_empty() {
            return Err("the admin token is empty".into());
        }
        if secret.chars().any(|c| c.is_control() || c == ' ') {
            return Err("the admin token contains spaces or control characters".into());
        }
        Ok(Self(secret.to_string()))
    }

    /// The secret itself, for a client that sends it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `header` (an `Authorization` value) carries this token.
    pub(super) fn admits(&self, header: Option<&hyper::header::HeaderValue>) -> bool {
        let Some(value) = header.map(|h| h.as_bytes()) else {
            return false;
        };
        let Some((scheme, presented)) = split_scheme(value) else {
            return false;
        };
        scheme.eq_ignore_ascii_case(b"bearer") && constant_time_eq(presented, self.0.as_bytes())
    }
}

fn split_scheme(value: &[u8]) -> Option<(&[u8], &[u8])> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    Some((scheme, rest.trim_ascii()))
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads the configured token: `admin.token`, or the first line of `admin.token_file`.
pub fn configured_token(config: &Config) -> Result<Option<Token>, ServeError> {
    let invalid = |what: &str, e: String| ServeError::Config(format!("{what}: {e}"));
    if let Some(secret) = &config.admin.token {
        return Token::new(secret)
            .map(Some)
            .map_err(|e| invalid("admin.token", e));
    }
    let Some(path) = &config.admin.token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::Io {
        what: "reading the admin token file",
        path: path.clone(),
        source,
    })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), "the admin token file is readable by others; chmod 600 it");
    }
    Token::new(text.lines().next().unwrap_or(""))
        .map(Some)
        .map_err(|e| invalid(&format!("admin.token_file {}", path.display()), e))
}
