//! What an install ships besides the binary, checked with the tools that
//! will read it: completion scripts that bash, zsh and fish accept (zsh
//! and fish where installed; CI installs them), man pages that `man -l`
//! renders without warnings, the systemd units in `contrib/systemd/`
//! passing `systemd-analyze verify`,
//! and the daemon's side of `Type=notify` (READY=1 once the API socket
//! answers, STOPPING=1 on SIGTERM) with logs free of colour codes when
//! stderr is not a terminal.
//!
//! The notify test runs the daemon in a namespace of its own (root);
//! the others need only the tools: `bash`, `man` (man-db) and
//! `systemd-analyze` (systemd), required under `CI=true`.

#![allow(clippy::disallowed_methods)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{has_tool, require, run, show, stderr, stdout, WEFT};

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(role: &str) -> TempDir {
        let dir = std::env::temp_dir().join(common::unique_name_with("wti", role));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn weft(args: &[&str]) -> std::process::Output {
    run(Command::new("timeout")
        .args([common::CMD_TIMEOUT, WEFT])
        .args(args))
}

fn weft_ok(args: &[&str]) -> String {
    let out = weft(args);
    assert!(out.status.success(), "weft {args:?}: {}", show(&out));
    stdout(&out)
}

/// bash parses and sources the bash script, which then completes weft's
/// subcommands and `network` subcommands; zsh and fish parse theirs when
/// they are installed.
#[test]
fn completion_scripts_are_accepted_by_their_shells() {
    if !require(has_tool("bash", "--version"), "needs bash") {
        return;
    }
    let dir = TempDir::new("compl");
    for shell in ["bash", "zsh", "fish"] {
        let script = dir.0.join(format!("weft.{shell}"));
        std::fs::write(&script, weft_ok(&["completion", shell])).expect("script");
        if shell != "bash" && !has_tool(shell, "--version") {
            // CI installs them (.ci/run); elsewhere they are optional.
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{shell} missing (Debian package {shell}; CI=true)");
            }
            eprintln!("{shell} not installed: its script is not checked");
            continue;
        }
        let out = run(Command::new(shell).arg("-n").arg(&script));
        assert!(out.status.success(), "{shell} -n: {}", show(&out));
    }
    // Source it and ask bash's completion function what follows `weft `
    // and `weft network `.
    let probe = format!(
        r#"source {}
complete -p weft >/dev/null || exit 3
COMP_WORDS=(weft ""); COMP_CWORD=1; COMP_LINE="weft "; COMP_POINT=5
_weft weft "" weft; echo "top: ${{COMPREPLY[*]}}"
COMP_WORDS=(weft network ""); COMP_CWORD=2; COMP_LINE="weft network "; COMP_POINT=13
_weft weft "" network; echo "network: ${{COMPREPLY[*]}}""#,
        dir.0.join("weft.bash").display()
    );
    let out = run(Command::new("bash").args(["-c", &probe]));
    assert!(out.status.success(), "{}", show(&out));
    let text = stdout(&out);
    let top = text
        .lines()
        .find_map(|l| l.strip_prefix("top: "))
        .unwrap_or("");
    for word in [
        "daemon",
        "network",
        "run",
        "ps",
        "info",
        "version",
        "completion",
        "man",
    ] {
        assert!(top.split(' ').any(|w| w == word), "no {word} in {text}");
    }
    assert!(
        !top.contains("__attach"),
        "internal commands stay hidden: {text}"
    );
    let network = text
        .lines()
        .find_map(|l| l.strip_prefix("network: "))
        .unwrap_or("");
    for word in ["create", "ls", "prune", "exists", "connect"] {
        assert!(network.split(' ').any(|w| w == word), "no {word} in {text}");
    }
}

/// Text without nroff's overstrikes (`X\bX` bold, `_\bX` underline).
fn plain(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

/// `weft man` renders with `man -l`, and every page of `weft man --dir`
/// too, without warnings; the pages name the commands.
#[test]
fn man_pages_render_with_man() {
    if !require(has_tool("man", "--version"), "needs man (man-db)") {
        return;
    }
    let dir = TempDir::new("man");
    let page = dir.0.join("weft.1");
    std::fs::write(&page, weft_ok(&["man"])).expect("page");
    let render = |path: &Path| {
        let out = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(path)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env("PAGER", "cat")
            .stdout(Stdio::piped()));
        assert!(
            out.status.success(),
            "man -l {}: {}",
            path.display(),
            show(&out)
        );
        assert!(
            stderr(&out).trim().is_empty(),
            "warnings for {}: {}",
            path.display(),
            show(&out)
        );
        plain(&stdout(&out))
    };
    let text = render(&page);
    assert!(
        text.contains("SYNOPSIS") && text.contains("weft-network(1)"),
        "{text}"
    );
    let pages = dir.0.join("man1");
    weft_ok(&["man", "--dir", pages.to_str().expect("utf-8 path")]);
    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .expect("pages")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in [
        "weft.1",
        "weft-network-create.1",
        "weft-network-prune.1",
        "weft-ps.1",
    ] {
        assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.contains("__")), "{names:?}");
    let create = render(&pages.join("weft-network-create.1"));
    assert!(create.contains("--label"), "{create}");
}

/// The units of contrib/systemd pass `systemd-analyze verify` (ExecStart
/// pointed at the binary under test; the Documentation= pages found
/// through MANPATH, from `weft man --dir`).
#[test]
fn systemd_units_pass_verify() {
    if !require(
        has_tool("systemd-analyze", "--version"),
        "needs systemd-analyze (Debian's systemd)",
    ) {
        return;
    }
    let dir = TempDir::new("units");
    let man = dir.0.join("man");
    weft_ok(&["man", "--dir", man.join("man1").to_str().expect("utf-8")]);
    let runtime = dir.0.join("run");
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    for (unit, exec, user) in [
        ("weft.service", "/usr/local/bin/weft", false),
        ("user/weft.service", "%h/.cargo/bin/weft", true),
    ] {
        let system = dir.0.join("system");
        if !user {
            // The socket unit beside its service, verified with it.
            std::fs::create_dir_all(&system).expect("dir");
            std::fs::copy(contrib.join("weft.socket"), system.join("weft.socket"))
                .expect("socket unit");
        }
        let text = std::fs::read_to_string(contrib.join(unit)).expect("unit file");
        assert!(text.contains("Type=notify"), "{unit}: {text}");
        assert!(
            text.contains(&format!("ExecStart={exec} daemon")),
            "{unit}: {text}"
        );
        let sub = dir.0.join(if user { "user" } else { "system" });
        std::fs::create_dir_all(&sub).expect("dir");
        let copy = sub.join("weft.service");
        std::fs::write(&copy, text.replace(exec, WEFT)).expect("copy");
        let mut cmd = Command::new("timeout");
        cmd.args([common::CMD_TIMEOUT, "systemd-analyze"]);
        if user {
            cmd.arg("--user");
        }
        cmd.arg("verify")
            .arg(&copy)
            .env("MANPATH", &man)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("SYSTEMD_LOG_COLOR", "0");
        if !user {
            cmd.arg(system.join("weft.socket"));
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success() && stderr(&out).trim().is_empty(),
            "systemd-analyze verify {unit}: {}",
            show(&out)
        );
    }
}

/// Under `Type=notify` the daemon says READY=1 once its socket answers and
/// STOPPING=1 on SIGTERM; its log, a file, has no colour codes.
#[test]
fn daemon_notifies_systemd_and_logs_plainly() {
    let Some(mut w) = common::World::prepared_with_daemon_args(&[]) else {
        return;
    };
    let notify_path = w.dir.join("notify.sock");
    let listener = UnixDatagram::bind(&notify_path).expect("notify socket");
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let log = w.dir.join("notify-daemon.log");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", &w.host, "timeout", "-s", "KILL", "120", WEFT,
    ])
    .arg("--socket")
    .arg(&w.socket)
    .args([
        "daemon",
        "--no-default-network",
        "--dns-upstream",
        "127.0.0.1:9",
    ])
    .arg("--state-dir")
    .arg(&w.state_dir)
    .env("NOTIFY_SOCKET", &notify_path)
    .env("WEFT_LOG", "info")
    .env_remove("NO_COLOR");
    let child = common::spawn_background(&mut cmd, None, &log);
    /// Kills the daemon's process group whatever happens.
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            common::kill_group(&mut self.0);
        }
    }
    let mut daemon = Group(child);
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no READY=1 within 10 s ({e}):\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means the API answers now, without a retry.
    let out = common::weft_in(&w.host, &w.socket, &["network", "ls", "-q"]);
    assert!(out.status.success(), "{}", show(&out));
    let pid = i32::try_from(daemon.0.id()).expect("pid");
    // SIGTERM to the group: `timeout` passes it on to the daemon.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let n = listener.recv(&mut buf).expect("STOPPING=1 within 10 s");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon.0.try_wait().ok().flatten().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).expect("daemon log");
    assert!(text.contains("weft daemon listening"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file:\n{text:?}"
    );
    w.kill_daemon();
}

/// Socket activation, as `weft.socket` does it (`systemd-socket-activate`
/// binds the socket and starts the daemon on the first connection): the
/// daemon serves on the socket it was given, and leaves the file when it
/// stops.
#[test]
fn daemon_serves_an_activated_socket() {
    if !require(
        has_tool("systemd-socket-activate", "--version"),
        "needs systemd-socket-activate (systemd)",
    ) {
        return;
    }
    let Some(mut w) = common::World::prepared_with_daemon_args(&[]) else {
        return;
    };
    let log = w.dir.join("activated-daemon.log");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &w.host, "timeout", "-s", "KILL", "120"])
        .arg("systemd-socket-activate")
        .arg("-l")
        .arg(&w.socket)
        .args(["-E", "WEFT_LOG=info", WEFT])
        .args([
            "daemon",
            "--no-default-network",
            "--dns-upstream",
            "127.0.0.1:9",
        ])
        .arg("--state-dir")
        .arg(&w.state_dir);
    let child = common::spawn_background(&mut cmd, None, &log);
    /// Kills the activator and the daemon whatever happens.
    struct Group(std::process::Child);
    impl Drop for Group {
        fn drop(&mut self) {
            common::kill_group(&mut self.0);
        }
    }
    let mut activator = Group(child);
    // Bounded wait for the activator's socket; the first client starts
    // the daemon, which answers it on that very connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !w.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no activation socket: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = common::weft_in(
        &w.host,
        &w.socket,
        &["network", "create", "--subnet", "10.233.30.0/24", "act"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        show(&out),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let listed = common::weft_in(&w.host, &w.socket, &["network", "ls", "-q"]);
    assert_eq!(stdout(&listed).trim(), "act", "{}", show(&listed));
    let pid = i32::try_from(activator.0.id()).expect("pid");
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while activator.0.try_wait().ok().flatten().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.socket.exists(),
        "the activated socket's file is systemd's: it stays"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains(&format!("socket={}", w.socket.display()))
            && text.contains("weft daemon listening"),
        "{text}"
    );
    w.kill_daemon();
}
