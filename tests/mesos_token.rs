//! The Mesos hook is served by the admin API, behind its bearer token: `berth mesos` without
//! the token is refused before anything happens; with it (argument, environment or file)
//! it is answered.

#[path = "support/harness/mod.rs"]
mod harness;
mod mesos_support;

use std::process::Command;

use mesos_support::{Daemon, Scratch};

#[test]
fn the_hook_needs_the_admin_token_when_one_is_configured() {
    let scratch = Scratch::new("berth-mtok-");
    let root = scratch.path().canonicalize().unwrap();
    let work_dir = root.join("mesos");
    let sandbox = work_dir.join("slaves/S0/frameworks/F/executors/E/runs/c1");
    std::fs::create_dir_all(&sandbox).unwrap();
    let tables = format!(
        "[admin]\ntoken = \"s3cret-token\"\n\n[[pools]]\nname = \"default\"\nkind = \"root\"\npaths = [\"{}\"]\n",
        root.join("pool").display()
    );
    let daemon = Daemon::start_with(&root, &work_dir, &tables);
    let token_file = root.join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();

    let cleanup = |auth: &[&str], env_token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command
            .args(["mesos", "cleanup", "--task-id", "t1", "--sandbox"])
            .arg(&sandbox)
            .arg("--admin-socket")
            .arg(&daemon.socket)
            .args(auth)
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_ADMIN_TOKEN")
            .env_remove("BERTH_CONFIG")
            .env_remove("BERTH_TOKEN_FILE");
        if let Some(token) = env_token {
            command.env("BERTH_TOKEN", token);
        }
        command.output().unwrap()
    };

    for (auth, env_token) in [(&[][..], None), (&["--token", "wrong"][..], None)] {
        let out = cleanup(auth, env_token);
        assert_eq!(out.status.code(), Some(1), "{auth:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("berth refused (401)"), "{stderr}");
    }
    let file = token_file.to_str().unwrap();
    for (auth, env_token) in [
        (&["--token", "s3cret-token"][..], None),
        (&[][..], Some("s3cret-token")),
        (&["--token-file", file][..], None),
    ] {
        let out = cleanup(auth, env_token);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{auth:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout, "task t1: no volumes\n");
    }
}
