//! systemd: `systemd/berth.service` passes `systemd-analyze verify` (with the man page its
//! `Documentation=` names), keeps berth in the host's mount namespace, and `Type=notify`
//! is honest: berth sends `READY=1` only once every configured front-end's socket accepts
//! connections, and removes them on SIGTERM.

#[path = "support/harness/mod.rs"]
mod harness;
#[path = "support/release.rs"]
mod release;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth::config::Config;
use harness::serve::Serve;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn unit_text() -> String {
    fs::read_to_string(release::repo().join("systemd/berth.service")).unwrap()
}

/// `Key=value` lines of the unit, in order (comments and sections dropped).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn value<'a>(d: &'a [(String, String)], key: &str) -> Option<&'a str> {
    d.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    // The unit as installed, but starting the binary this test built (verify checks that
    // ExecStart exists and is executable).
    let unit = unit_text().replace("ExecStart=/usr/bin/berth ", &format!("ExecStart={BERTH} "));
    assert!(unit.contains(BERTH), "ExecStart is not /usr/bin/berth");
    let unit_path = dir.path().join("berth.service");
    fs::write(&unit_path, unit).unwrap();
    // Documentation=man:berth(8): verify runs `man`, so give it the packaged page.
    let man8 = dir.path().join("man/man8");
    fs::create_dir_all(&man8).unwrap();
    let page = release::script("packaging/deb/manpage.sh", &[BERTH], &[]);
    fs::write(man8.join("berth.8"), &page.stdout).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze (Debian: systemd) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn unit_is_type_notify_restarts_and_stays_in_the_host_mount_namespace() {
    let d = directives(&unit_text());
    assert_eq!(value(&d, "Type"), Some("notify"));
    assert_eq!(value(&d, "ExecStart"), Some("/usr/bin/berth serve"));
    assert_eq!(value(&d, "Restart"), Some("on-failure"));
    assert_eq!(value(&d, "KillMode"), Some("mixed"));
    assert_eq!(value(&d, "WantedBy"), Some("multi-user.target"));
    let before = value(&d, "Before").unwrap_or("");
    for unit in ["docker.service", "kubelet.service"] {
        assert!(before.contains(unit), "Before= lacks {unit}");
    }
    // Each of these gives the service a mount namespace of its own, and berth's mounts
    // would then never reach kubelet, dockerd or the Mesos agent.
    for key in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "PrivateMounts",
        "ReadOnlyPaths",
        "ReadWritePaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "BindPaths",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectProc",
        "MountFlags",
        "RootDirectory",
        "DynamicUser",
        "DevicePolicy",
    ] {
        assert!(
            value(&d, key).is_none(),
            "{key}= would break berth's mounts"
        );
    }
    let caps = value(&d, "CapabilityBoundingSet").unwrap();
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_MKNOD",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
    ] {
        assert!(caps.split_whitespace().any(|c| c == cap), "{caps}");
    }
    assert_eq!(value(&d, "NoNewPrivileges"), Some("yes"));
    // The embedded default is what the unit runs: no --config, sockets and state as in
    // src/config.rs and the man page.
    let c = Config::default();
    assert_eq!(c.listen.csi, "/run/berth/csi.sock");
    assert_eq!(c.listen.docker, "/run/docker/plugins/berth.sock");
    assert_eq!(c.listen.admin, "/run/berth/admin.sock");
    assert_eq!(c.state_dir, Path::new("/var/lib/berth"));
}

fn is_socket(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn ready_is_sent_only_once_every_front_end_listens() {
    let dir = tempfile::Builder::new()
        .prefix("berth-notify-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let p = |s: &str| dir.path().join(s);
    let sockets: Vec<PathBuf> = vec![
        p("run/csi.sock"),
        p("plugins/berth.sock"),
        p("run/admin.sock"),
    ];
    let config_text = format!(
        "state_dir = \"{state}\"\n\
         [listen]\ncsi = \"{csi}\"\ndocker = \"{docker}\"\nadmin = \"{admin}\"\n\
         [[pools]]\nname = \"default\"\nkind = \"root\"\npaths = [\"{state}/volumes\"]\nbackend = \"none\"\n",
        state = p("state").display(),
        csi = sockets[0].display(),
        docker = sockets[1].display(),
        admin = sockets[2].display(),
    );
    Config::parse(&config_text, Path::new("test")).unwrap();
    fs::write(p("berth.toml"), &config_text).unwrap();

    let notify = UnixDatagram::bind(p("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let mut daemon = Serve::new(p("berth.toml"), p("berth.log"))
        .log_level("info")
        .env("NOTIFY_SOCKET", p("notify.sock"))
        .spawn();
    let mut buf = [0u8; 256];
    let message = loop {
        match notify.recv(&mut buf) {
            Ok(n) => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(_) => {
                if let Some(status) = daemon.try_wait() {
                    panic!(
                        "berth exited ({status}) without READY=1:\n{}",
                        fs::read_to_string(p("berth.log")).unwrap_or_default()
                    );
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no READY=1 in 60 s"
                );
            }
        }
    };
    // Checked the moment READY arrives: every socket must already accept connections.
    let mut missing = Vec::new();
    for s in &sockets {
        if !is_socket(s) || UnixStream::connect(s).is_err() {
            missing.push(s.display().to_string());
        }
    }
    assert_eq!(message.trim(), "READY=1");
    assert!(
        missing.is_empty(),
        "READY=1 arrived before these sockets listened: {missing:?}"
    );
    assert!(
        p("state/berth.redb").exists(),
        "READY before the store was opened"
    );
    eprintln!("READY=1 after {:?}", started.elapsed());

    // The admin API answers its health check once ready.
    let mut admin = UnixStream::connect(&sockets[2]).unwrap();
    admin
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    admin
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    admin.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // SIGTERM: a clean exit that removes the sockets.
    let status = daemon.stop().expect("berth was running");
    assert!(status.success(), "berth exited with {status}");
    for s in &sockets {
        assert!(!s.exists(), "{} left behind after SIGTERM", s.display());
    }
}
