//! The one way tests start `berth serve`: a config file, a log file the daemon's stderr
//! (and stdout) append to, an environment without the caller's CSI_ENDPOINT or
//! NOTIFY_SOCKET unless a test sets them, and a handle that waits for the daemon's sockets,
//! stops it (SIGTERM) or kills it (SIGKILL, as a crash would), and prints its log when the
//! test fails.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to open its sockets (two loaded cores, seven builds).
pub const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Names another berth binary to serve with than the one cargo built for the tests: the
/// release binary the packages ship (`packaging/build-release.sh`), say, for a bench of
/// what operators run.
pub const DAEMON_BINARY_ENV: &str = "BERTH_DAEMON_BIN";

/// The binary `berth serve` runs from: [`DAEMON_BINARY_ENV`], or cargo's build.
pub fn daemon_binary() -> PathBuf {
    std::env::var_os(DAEMON_BINARY_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_berth")))
}

/// How much of the daemon's log a failed test prints.
const LOG_LINES_ON_FAILURE: usize = 200;

/// A `berth serve` to start: the binary under test with `--config CONFIG`.
#[derive(Clone, Debug)]
pub struct Serve {
    config: PathBuf,
    log: PathBuf,
    global_args: Vec<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
}

impl Serve {
    /// `berth serve --config CONFIG`, logging at `BERTH_LOG` (default `info`) to `LOG`.
    pub fn new(config: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        let level = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
        Self {
            config: config.into(),
            log: log.into(),
            global_args: Vec::new(),
            args: Vec::new(),
            env: vec![
                ("BERTH_LOG".into(), Some(level.into())),
                ("CSI_ENDPOINT".into(), None),
                ("NOTIFY_SOCKET".into(), None),
            ],
        }
    }

    /// Writes `text` to `config` and returns [`Serve::new`] on it.
    pub fn with_config(config: impl Into<PathBuf>, text: &str, log: impl Into<PathBuf>) -> Self {
        let config = config.into();
        std::fs::write(&config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        Self::new(config, log)
    }

    /// The daemon's log level (`BERTH_LOG`).
    pub fn log_level(self, level: &str) -> Self {
        self.env("BERTH_LOG", level)
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, Some(value.as_ref().to_os_string())));
        self
    }

    /// Removes an environment variable from the daemon's environment.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_os_string();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, None));
        self
    }

    /// Extra arguments after `serve --config CONFIG`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Extra arguments before `serve` (berth's global options, e.g. `--log-json`).
    pub fn global_arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.global_args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(daemon_binary());
        cmd.args(&self.global_args)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .stdin(Stdio::null());
        for (key, value) in &self.env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }

    /// Starts the daemon; its stdout and stderr append to the log file.
    pub fn spawn(&self) -> Served {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let child = self
            .command()
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start berth serve: {e}"));
        Served {
            child: Some(child),
            log: self.log.clone(),
        }
    }

    /// Runs a daemon that must refuse to serve (a bad config, a socket or state already
    /// served) and returns its captured output; fails the test if it is still running
    /// after [`STOP_DEADLINE`].
    pub fn run_to_exit(&self) -> Output {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start berth serve: {e}"));
        let started = Instant::now();
        while child.try_wait().expect("waiting for berth").is_none() {
            if started.elapsed() > STOP_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "berth serve --config {} kept running; it should have refused to start",
                    self.config.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("berth's output")
    }
}

/// A running `berth serve`; killed when dropped, with its log printed if the test failed.
pub struct Served {
    child: Option<Child>,
    log: PathBuf,
}

impl Served {
    /// The daemon's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The daemon's exit status if it has exited (it is then no longer running).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready` holds, polling every 20 ms; fails the test, with the log, if the
    /// daemon exits first or [`READY_DEADLINE`] passes.
    #[track_caller]
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let started = Instant::now();
        loop {
            if ready() {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "berth exited ({status}) before {what}; its log:\n{}",
                    self.log()
                );
            }
            assert!(
                started.elapsed() < READY_DEADLINE,
                "berth did not get to {what} within {READY_DEADLINE:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the unix socket at `path` accepts connections.
    #[track_caller]
    pub fn wait_for_socket(&mut self, path: &Path) {
        let what = format!("listen on {}", path.display());
        self.wait_until(&what, || UnixStream::connect(path).is_ok());
    }

    /// Stops the daemon with SIGTERM and waits (at most [`STOP_DEADLINE`], then SIGKILL);
    /// returns its exit status, or None if it was not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if started.elapsed() > STOP_DEADLINE {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon and fails the test, with its log, unless it exited cleanly.
    #[track_caller]
    pub fn stop_cleanly(&mut self) {
        if let Some(status) = self.stop() {
            assert!(
                status.success(),
                "berth exited with {status}; its log:\n{}",
                self.log()
            );
        }
    }

    /// Kills the daemon at once, as a crash would (sockets and lock files stay behind).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the last {} lines of berth's log ({}) ---\n{}",
                lines.len().min(LOG_LINES_ON_FAILURE),
                self.log.display(),
                lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..].join("\n")
            );
        }
    }
}
