//! What an operator reads and types: the real `berth` binary's error lines, exit codes, help
//! texts, closed pipes and log lines (in a file, for journald, as JSON).

#[path = "support/harness/mod.rs"]
mod harness;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use harness::serve::{Serve, Served};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// `berth ARGS` with none of the environment that could change its behaviour, except that
/// RUST_BACKTRACE=1 is set: an operator's shell may well have it.
fn berth(args: &[&str]) -> Command {
    let mut command = Command::new(BERTH);
    command.args(args);
    for var in [
        "BERTH_ADMIN_SOCKET",
        "BERTH_TOKEN",
        "BERTH_ADMIN_TOKEN",
        "BERTH_TOKEN_FILE",
        "BERTH_LOG_JSON",
        "BERTH_CONFIG",
        "JOURNAL_STREAM",
        "MESOS_TASK_ID",
        "MESOS_FRAMEWORK_ID",
        "MESOS_SANDBOX",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_BACKTRACE", "1").stdin(Stdio::null());
    command
}

fn output(args: &[&str]) -> Output {
    berth(args).output().expect("running berth")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("a temp dir")
}

// --- errors and exit codes ---------------------------------------------------------------

#[test]
fn a_missing_file_is_one_line_without_backtrace_or_repeated_cause() {
    let out = output(&["mesos", "validate", "/nonexistent/app.json"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        err.starts_with("berth: reading /nonexistent/app.json: No such file or directory"),
        "{err:?}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err:?}");
    assert!(
        !err.contains("backtrace") && !err.contains("Caused by"),
        "{err:?}"
    );
}

#[test]
fn debug_shows_the_full_error() {
    let out = output(&["--debug", "mesos", "validate", "/nonexistent/app.json"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Caused by"), "{err:?}");
    assert!(
        err.contains("backtrace"),
        "RUST_BACKTRACE=1 is set: {err:?}"
    );
}

#[test]
fn invalid_json_is_a_syntax_error_with_its_place() {
    let dir = temp_dir("berth-ops-json-");
    let file = dir.path().join("app.json");
    std::fs::write(&file, "{\n  \"id\": \"/db\",\n  \"cpus\": 1,,\n}\n").unwrap();
    let out = output(&["mesos", "validate", file.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "berth: {}:3:13: not valid JSON: key must be a string",
            file.display()
        )
    );
    assert!(out.stdout.is_empty(), "no rule violations listed");
}

#[test]
fn an_unreachable_daemon_exits_3() {
    let dir = temp_dir("berth-ops-unreachable-");
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().unwrap();
    let out = output(&["volume", "--admin-socket", socket, "ls"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with(&format!("berth: connecting to the admin API at {socket}")));
    let out = output(&[
        "mesos",
        "cleanup",
        "--task-id",
        "t1",
        "--sandbox",
        "/tmp",
        "--admin-socket",
        socket,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
}

#[test]
fn usage_errors_exit_2() {
    let out = output(&["volume", "ls", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = output(&[
        "volume",
        "--admin-socket",
        "/nonexistent.sock",
        "ls",
        "--state",
        "bogus",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn help_documents_the_exit_codes() {
    let help = text(&output(&["--help"]).stdout);
    for line in [
        "0  success",
        "1  berth refused or failed",
        "2  usage",
        "3  the daemon is unreachable",
    ] {
        assert!(help.contains(line), "{line:?} in {help}");
    }
}

/// The README quotes the exit codes and the error format as the binary prints them.
#[test]
fn the_readme_quotes_the_binarys_words() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let help = text(&output(&["--help"]).stdout);
    let codes = &help[help.find("Exit codes:").expect("exit codes in --help")..];
    assert!(
        readme.contains(&format!("```text\n{}\n```", codes.trim_end())),
        "README's exit codes differ from --help:\n{codes}"
    );
    let missing = output(&["mesos", "validate", "app.json"]);
    let line = text(&missing.stderr);
    assert!(
        readme.contains(line.trim_end()),
        "README does not quote {line:?}"
    );
}

/// The README's two complete Marathon apps, one per containerizer, are valid.
#[test]
fn the_readme_marathon_examples_validate() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (tag, summary, alias) in [
        ("marathon-docker", "valid app /postgres", false),
        ("marathon-mesos", "valid app /mysql", true),
    ] {
        let fence = format!("```json {tag}\n");
        let start = readme
            .find(&fence)
            .unwrap_or_else(|| panic!("no {fence:?} block"))
            + fence.len();
        let json = &readme[start..start + readme[start..].find("```").unwrap()];
        let value: serde_json::Value = serde_json::from_str(json).expect(tag);
        let containerizer = if alias { "MESOS" } else { "DOCKER" };
        assert_eq!(value["container"]["type"], containerizer, "{tag}");
        let mut child = berth(&["mesos", "validate", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), json.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{tag}: {stdout}{}", text(&out.stderr));
        assert!(stdout.contains(summary), "{tag}: {stdout}");
        assert_eq!(
            stdout.contains("also mounted at /var/lib/mysql"),
            alias,
            "{tag}: {stdout}"
        );
    }
}

/// Every argument and option of every subcommand has a help text.
#[test]
fn every_argument_has_help_text() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["config"],
        &["volume"],
        &["volume", "ls"],
        &["volume", "inspect"],
        &["volume", "wipe"],
        &["volume", "rm"],
        &["mesos"],
        &["mesos", "validate"],
        &["mesos", "prepare"],
        &["mesos", "cleanup"],
        &["doctor"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = output(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        let help = text(&out.stdout);
        let mut in_list = false;
        for line in help.lines() {
            if line.ends_with(':') && !line.starts_with(' ') {
                in_list = matches!(line, "Arguments:" | "Options:");
                continue;
            }
            let entry = line.trim_start();
            if !in_list || !(entry.starts_with('-') || entry.starts_with('<')) {
                continue;
            }
            // "  -c, --config <CONFIG>  Config file ..." : the text after the first gap.
            let described = entry
                .split_once("  ")
                .map(|(_, rest)| rest.trim())
                .filter(|rest| !rest.is_empty() && !rest.starts_with("[env"));
            assert!(
                described.is_some(),
                "berth {}: {entry:?} has no help text",
                command.join(" ")
            );
        }
    }
}

#[test]
fn the_printed_config_names_every_pool_kind() {
    let out = output(&["config"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("# root | path | mount"));
}

// --- closed pipes --------------------------------------------------------------------------

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // The shell pipeline an operator types.
    let out = Command::new("bash")
        .args(["-c", &format!("set -o pipefail; {BERTH} config | head -1")])
        .output()
        .unwrap();
    assert!(out.stdout.starts_with(b"# berth configuration"));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    // head may exit before berth writes; then berth ends on SIGPIPE, which pipefail shows
    // as 141, never as a panic's 101.
    assert!(
        matches!(out.status.code(), Some(0) | Some(141)),
        "{:?}",
        out.status
    );
    assert_eq!(
        Command::new("bash")
            .args(["-c", &format!("{BERTH} config | head -1 >/dev/null")])
            .status()
            .unwrap()
            .code(),
        Some(0)
    );

    // The reader gone before berth writes a byte: berth ends as `cat` would.
    let mut child = berth(&["config"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(err.is_empty(), "no panic message: {err:?}");
    assert!(
        status.success() || status.signal() == Some(libc::SIGPIPE),
        "{status:?}"
    );
}

// --- log lines -----------------------------------------------------------------------------

/// A daemon with one plain-directory pool and only the admin socket, in a temp dir.
struct Daemon {
    // Field order is drop order: the daemon stops before its directory goes.
    served: Served,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(global_args: &[&str], env: &[(&str, String)], log: &Path) -> Self {
        let dir = temp_dir("berth-ops-log-");
        let d = dir.path().display();
        std::fs::create_dir_all(dir.path().join("plain")).unwrap();
        let config = format!(
            r#"
state_dir = "{d}/state"
node_id = "test-node"
[listen]
csi = ""
docker = ""
admin = "{d}/admin.sock"
[[pools]]
name = "plain"
kind = "root"
paths = ["{d}/plain"]
backend = "none"
"#
        );
        let mut serve =
            Serve::with_config(dir.path().join("config.toml"), &config, log).log_level("info");
        for arg in global_args {
            serve = serve.global_arg(arg);
        }
        for (k, v) in env {
            serve = serve.env(k, v);
        }
        let mut served = serve.spawn();
        served.wait_for_socket(&dir.path().join("admin.sock"));
        Self { served, _dir: dir }
    }

    /// SIGTERM, then waits: the log then holds the shutdown lines too.
    fn stop(mut self) {
        self.served.stop();
    }
}

/// `GLIBC_TUNABLES` in the environment process `pid` started with.
fn tunables_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .find_map(|var| var.strip_prefix(b"GLIBC_TUNABLES="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `berth serve` turns glibc's per-thread malloc caches off by starting itself again in the
/// same process with `GLIBC_TUNABLES` set (host::linux::memory); an operator's own
/// `tcache_count` is left alone. (With several tunables, glibc's parser cuts the value in
/// the process's environment block at each `:` as it reads it, so only one is checked
/// here; the unit test of the value covers the rest.)
#[test]
fn serve_runs_with_the_thread_caches_off_unless_the_operator_sets_them() {
    let (_keep, log) = log_file("berth-ops-malloc-");
    let unset = ("GLIBC_TUNABLES", String::new());
    let daemon = Daemon::start(&[], &[unset], &log);
    assert_eq!(
        tunables_of(daemon.served.pid()).as_deref(),
        Some("glibc.malloc.tcache_count=0"),
        "the process berth was started as runs with the caches off"
    );
    daemon.stop();

    let operators = ("GLIBC_TUNABLES", "glibc.malloc.tcache_count=3".to_string());
    let daemon = Daemon::start(&[], &[operators], &log);
    assert_eq!(
        tunables_of(daemon.served.pid()).as_deref(),
        Some("glibc.malloc.tcache_count=3")
    );
    daemon.stop();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn log_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = temp_dir(name);
    let log = dir.path().join("berth.log");
    (dir, log)
}

#[test]
fn a_log_file_has_no_colour_codes() {
    let (_keep, log) = log_file("berth-ops-plain-");
    Daemon::start(&[], &[], &log).stop();
    let text = read(&log);
    assert!(text.lines().count() >= 2, "{text}");
    assert!(!text.contains('\x1b'), "escape codes in {text:?}");
    // Still timestamped: a file has no other clock.
    let first = text.lines().next().unwrap();
    assert!(first.starts_with("20") && first.contains('T'), "{first:?}");
    assert!(first.contains("INFO"), "{first:?}");
}

#[test]
fn under_journald_lines_carry_a_priority_and_no_timestamp() {
    let (_keep, log) = log_file("berth-ops-journal-");
    std::fs::File::create(&log).unwrap();
    // systemd sets JOURNAL_STREAM to the device and inode of the stream it gave as stderr.
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    Daemon::start(&[], &[("JOURNAL_STREAM", stream)], &log).stop();
    let text = read(&log);
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        assert!(
            line.starts_with("<6>") || line.starts_with("<4>") || line.starts_with("<3>"),
            "no syslog priority: {line:?}"
        );
        assert!(
            !line.contains('\x1b') && !line.starts_with("<6>20"),
            "{line:?}"
        );
    }

    // A JOURNAL_STREAM inherited by a process whose stderr is elsewhere is ignored.
    let (_keep2, other) = log_file("berth-ops-journal-other-");
    Daemon::start(&[], &[("JOURNAL_STREAM", "1:1".into())], &other).stop();
    assert!(
        read(&other).lines().all(|l| l.starts_with("20")),
        "{}",
        read(&other)
    );
}

#[test]
fn log_json_writes_one_object_per_line() {
    let (_keep, log) = log_file("berth-ops-json-");
    Daemon::start(&["--log-json"], &[], &log).stop();
    let text = read(&log);
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(value.get("level").is_some(), "{line}");
    }
}
