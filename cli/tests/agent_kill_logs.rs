//! SIGKILL of the daemon (manager + agent) while containers run and log:
//! nothing is lost. The shims keep the containers, write their logs and
//! record exits while no agent runs; the restarted daemon re-attaches and
//! reports all of it. Needs root.

mod common;

use common::*;
use std::time::{Duration, SystemTime};

const COMPOSE: &str = r#"
services:
  ticker:
    image: flotilla-demo:test
    command: ["tick", "100"]
  quitter:
    image: flotilla-demo:test
    # Exits with 7 after about 4 s: while the daemon is down.
    command: ["tick", "100", "40", "7"]
"#;

fn rfc3339_to_system(s: &str) -> Option<SystemTime> {
    // "2026-11-22T10:01:02.123456789Z": parsed by hand to keep the test free
    // of a date crate; only UTC timestamps with a Z are written.
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + t[0] * 3600 + t[1] * 60 + t[2];
    let nanos: u32 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

#[test]
fn sigkill_while_logging_loses_no_lines_and_reports_exits() {
    require_root!();
    let mut d = Daemon::new();
    d.start();
    d.import_demo_image();
    let project = format!("akl{}", d.name);
    let dir = d.root.path().join(&project);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("compose.yaml"), COMPOSE).unwrap();
    d.ok(&dir, &["up", "-d"]);
    let rows = d.ps(&dir, &project);
    let ticker_pid = rows
        .iter()
        .find(|r| r["Service"] == "ticker")
        .and_then(|r| r["Pid"].as_i64())
        .expect("ticker runs");

    d.kill9();
    let down_from = SystemTime::now();
    // Long enough for the quitter to exit and for dozens of ticks.
    std::thread::sleep(Duration::from_secs(6));
    let down_until = SystemTime::now();
    assert!(
        std::path::Path::new(&format!("/proc/{ticker_pid}")).exists(),
        "the ticker died with the daemon"
    );
    d.start();

    // The exit that happened while no agent ran is reported with its code.
    let seen = eventually(Duration::from_secs(30), || {
        let rows = d.ps(&dir, &project);
        let q = rows.iter().find(|r| r["Service"] == "quitter")?;
        let t = rows.iter().find(|r| r["Service"] == "ticker")?;
        (q["State"] == "exited"
            && q["ExitCode"].as_i64() == Some(7)
            && t["State"] == "running"
            && t["Pid"].as_i64() == Some(ticker_pid))
        .then_some(())
    });
    assert!(
        seen.is_some(),
        "after restart: {:?}\n{}",
        d.ps(&dir, &project),
        d.daemon_log()
    );

    // Every tick written while the daemon was dead is in the logs, in order,
    // with no gap.
    let logs = d.ok(&dir, &["logs", "-t", "--no-log-prefix", "ticker"]);
    let mut ticks: Vec<(SystemTime, u64)> = Vec::new();
    for l in logs.lines() {
        let mut parts = l.split_whitespace();
        let (Some(ts), Some("tick"), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let ts = rfc3339_to_system(ts).unwrap_or_else(|| panic!("timestamp in {l:?}"));
        ticks.push((ts, n.parse().unwrap()));
    }
    let while_down = ticks
        .iter()
        .filter(|(t, _)| *t > down_from && *t < down_until)
        .count();
    assert!(
        while_down >= 20,
        "only {while_down} lines logged while the daemon was down:\n{logs}"
    );
    let numbers: Vec<u64> = ticks.iter().map(|(_, n)| *n).collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert_eq!(numbers, expected, "lines missing or out of order");

    // The quitter's last line, written just before its exit while the daemon
    // was down, is there too.
    let q = d.ok(&dir, &["logs", "--no-log-prefix", "quitter"]);
    assert_eq!(q.lines().last(), Some("tick 40"), "{q}");
    d.ok(&dir, &["down"]);
}
