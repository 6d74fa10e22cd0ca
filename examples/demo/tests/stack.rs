//! End-to-end tests of the built `demo` binary: the three services as real
//! processes on loopback, driven through the binary's own HTTP client, plus
//! the helper roles and the SIGTERM behaviour.
//!
//! Everything listens on 127.0.0.1 with kernel-chosen ports; nothing leaves
//! the machine, and every spawned process is killed when its guard drops.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::thread;

const DEMO: &str = env!("CARGO_BIN_EXE_flotilla-demo");

/// A running service; killed and reaped on drop.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    /// Starts `demo ROLE` on a free loopback port, with extra environment.
    fn start(role: &str, env: &[(&str, String)]) -> Service {
        let mut cmd = Command::new(DEMO);
        cmd.arg(role)
            .env("PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{role}: unexpected first line {first:?}"));
        // Keep draining the request log so a full pipe never blocks the child.
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                println!("[{line}]");
            }
        });
        Service { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo(args: &[&str]) -> Output {
    Command::new(DEMO).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `demo get URL`, asserting success, returning the body.
fn get_ok(url: &str) -> String {
    let o = demo(&["get", url]);
    assert!(o.status.success(), "get {url}: {o:?}");
    stdout(&o)
}

#[test]
fn web_api_store_round_trip() {
    let store = Service::start("store", &[]);
    let api = Service::start("api", &[("STORE_URL", store.url(""))]);
    let web = Service::start("web", &[("API_URL", format!("{}/", api.url("")))]);

    assert_eq!(get_ok(&store.url("/health")), "ok\n");
    assert_eq!(get_ok(&api.url("/health")), "ok\n");
    assert_eq!(get_ok(&web.url("/health")), "ok\n");
    assert_eq!(get_ok(&api.url("/count")), "0\n");

    let first = get_ok(&web.url("/"));
    assert!(first.contains("hits: 1"), "{first}");
    let second = get_ok(&web.url("/"));
    assert!(second.contains("hits: 2"), "{second}");

    assert_eq!(get_ok(&api.url("/count")), "2\n");
    assert_eq!(get_ok(&store.url("/kv/visits")), "2");

    let o = demo(&["post", &api.url("/visit")]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "3\n");

    // The store's own API, through the client's other methods.
    let o = demo(&["put", &store.url("/kv/greeting"), "hello there"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(get_ok(&store.url("/kv/greeting")), "hello there");
    let o = demo(&["get", &store.url("/kv/missing")]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

#[test]
fn api_health_follows_the_store() {
    let mut store = Service::start("store", &[]);
    let api = Service::start("api", &[("STORE_URL", store.url(""))]);
    let web = Service::start("web", &[("API_URL", api.url(""))]);
    assert_eq!(get_ok(&api.url("/health")), "ok\n");

    store.child.kill().unwrap();
    store.child.wait().unwrap();

    let o = demo(&["get", &api.url("/health")]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "api healthy without a store: {o:?}"
    );
    assert!(stdout(&o).contains("store unreachable"), "{o:?}");
    // The web tier stays healthy but cannot count.
    assert_eq!(get_ok(&web.url("/health")), "ok\n");
    let o = demo(&["get", &web.url("/")]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
}

#[test]
fn client_fails_on_connection_refused_and_bad_urls() {
    // Port 1 on loopback has no listener.
    let o = demo(&["get", "http://127.0.0.1:1/health"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let o = demo(&["get", "https://example.invalid/"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only http://"),
        "{o:?}"
    );
}

#[test]
fn role_from_environment() {
    let o = Command::new(DEMO).env("ROLE", "pid").output().unwrap();
    assert!(o.status.success());
    let pid: u32 = stdout(&o).trim().parse().unwrap();
    assert!(pid > 0);
}

#[test]
fn helpers() {
    assert_eq!(stdout(&demo(&["echo", "a", "b c"])), "a b c\n");
    assert_eq!(demo(&["exit", "7"]).status.code(), Some(7));
    assert_eq!(demo(&["exit", "0"]).status.code(), Some(0));
    assert_eq!(demo(&["nonsense"]).status.code(), Some(1));

    let env = Command::new(DEMO)
        .arg("env")
        .env("DEMO_TEST_VAR", "x=y")
        .output()
        .unwrap();
    assert!(
        stdout(&env).lines().any(|l| l == "DEMO_TEST_VAR=x=y"),
        "{env:?}"
    );

    let expected = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(stdout(&demo(&["hostname"])).trim(), expected.trim());

    assert!(demo(&["sleep", "0.01"]).status.success());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("note");
    let file = file.to_str().unwrap();
    assert!(demo(&["write", file, "hello"]).status.success());
    assert_eq!(stdout(&demo(&["cat", file])), "hello\n");
    assert_eq!(
        stdout(&demo(&["ls", dir.path().to_str().unwrap()])),
        "note\n"
    );
    assert_eq!(
        demo(&["cat", "/nonexistent/demo-file"]).status.code(),
        Some(1)
    );
}

/// Sends `signal` to `child` and returns its exit code.
fn signal_and_wait(child: &mut Child, signal: i32) -> Option<i32> {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet,
    // so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0);
    child.wait().unwrap().code()
}

/// Waits until the child has printed its first line, i.e. installed its
/// signal handlers and reached its main work.
fn wait_first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

#[test]
fn sigterm_exits_zero() {
    let mut store = Command::new(DEMO)
        .arg("store")
        .env("PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_first_line(&mut store).contains("listening"));
    assert_eq!(signal_and_wait(&mut store, libc::SIGTERM), Some(0));
}

#[test]
fn stubborn_ignores_sigterm() {
    let mut child = Command::new(DEMO)
        .arg("stubborn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_first_line(&mut child).contains("ignoring"));
    // The kernel's view: SIGTERM (15) and SIGINT (2) are in the ignored set.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_ne!(
        ignored & (1 << (libc::SIGTERM - 1)),
        0,
        "SigIgn {ignored:#x}"
    );
    assert_ne!(
        ignored & (1 << (libc::SIGINT - 1)),
        0,
        "SigIgn {ignored:#x}"
    );
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: as in signal_and_wait; the child is alive and unreaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = signal_and_wait(&mut child, libc::SIGKILL);
    assert_eq!(status, None, "killed by a signal, so no exit code");
}
