//! Where `berth volume` and `berth mesos` find the admin token.
//!
//! The rule on the daemon's side is one: when `admin.token` or `admin.token_file` is set,
//! every admin request but `/healthz` carries it, on the unix socket and on TCP alike (the
//! socket is then created with `listen.socket_mode`, which may let a group connect, so its
//! file mode alone is not the guard). So that local administration keeps working once an
//! operator sets a token, the commands look for it, first found wins:
//! 1. `--token` (or `BERTH_TOKEN`), then `BERTH_ADMIN_TOKEN`;
//! 2. `--token-file` (or `BERTH_TOKEN_FILE`): its first line;
//! 3. the daemon's config file: `--config`, `BERTH_CONFIG`, else `/etc/berth/config.toml` if
//!    it exists; its `admin.token`, or the first line of its `admin.token_file`, exactly as
//!    the daemon reads them.
//!
//! Without any, requests go without a token, which a daemon without one accepts.

use std::path::{Path, PathBuf};

use crate::config::Config;

/// The config file the packages install, read when no other is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The environment variable that holds the token (besides `--token`'s `BERTH_TOKEN`).
pub const TOKEN_ENV: &str = "BERTH_ADMIN_TOKEN";

/// The token by the rule in the module docs; the error says which source failed.
pub fn resolve(
    token: Option<&str>,
    token_file: Option<&Path>,
    config: Option<&Path>,
) -> Result<Option<String>, String> {
    if let Some(token) = token {
        return Ok(Some(token.trim().to_string()));
    }
    if let Ok(token) = std::env::var(TOKEN_ENV)
        && !token.trim().is_empty()
    {
        return Ok(Some(token.trim().to_string()));
    }
    if let Some(file) = token_file {
        return first_line(file).map(Some);
    }
    let config = match config {
        Some(path) => path.to_path_buf(),
        None => {
            let default = PathBuf::from(DEFAULT_CONFIG_PATH);
            if !default.exists() {
                return Ok(None);
            }
            default
        }
    };
    let loaded = Config::load(&config).map_err(|e| {
        format!(
            "looking for the admin token in the daemon's config {}: {e}",
            config.display()
        )
    })?;
    super::configured_token(&loaded)
        .map(|t| t.map(|t| t.secret().to_string()))
        .map_err(|e| {
            format!(
                "looking for the admin token in the daemon's config {}: {e}",
                config.display()
            )
        })
}

fn first_line(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("reading the token file {}: {e}", file.display()))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_wins_then_a_file_then_the_daemons_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!("[admin]\ntoken_file = \"{}\"\n", file.display()),
        )
        .unwrap();
        let inline = dir.path().join("inline.toml");
        std::fs::write(&inline, "[admin]\ntoken = \"from-config\"\n").unwrap();
        let none = dir.path().join("none.toml");
        std::fs::write(&none, "node_id = \"n\"\n").unwrap();

        let got = |t, f, c| resolve(t, f, c).unwrap();
        assert_eq!(
            got(Some(" arg "), Some(&file), Some(&inline)).unwrap(),
            "arg"
        );
        assert_eq!(got(None, Some(&file), Some(&inline)).unwrap(), "from-file");
        assert_eq!(got(None, None, Some(&config)).unwrap(), "from-file");
        assert_eq!(got(None, None, Some(&inline)).unwrap(), "from-config");
        assert_eq!(got(None, None, Some(&none)), None);

        let missing = resolve(None, None, Some(&dir.path().join("absent.toml"))).unwrap_err();
        assert!(missing.contains("absent.toml"), "{missing}");
        let unreadable = resolve(None, Some(&dir.path().join("nofile")), None).unwrap_err();
        assert!(
            unreadable.contains("reading the token file"),
            "{unreadable}"
        );
    }
}
