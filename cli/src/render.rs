//! Terminal rendering shared by the commands: tables, durations, status
//! words and colours the way `docker compose` prints them.

use flotilla_proto::v1 as pb;
use std::io::IsTerminal;
use std::time::SystemTime;

/// The error with its causes on one line ("a: b: c").
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        // Skip causes already spelled out by the message above them.
        if parts.last().is_some_and(|p| p.contains(&s)) {
            continue;
        }
        parts.push(s);
    }
    parts.join(": ")
}

/// "5 seconds", "About a minute", "2 hours" — Docker's human durations.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

fn since(t: Option<&pb::Timestamp>) -> u64 {
    t.filter(|t| !t.is_unset())
        .and_then(|t| SystemTime::now().duration_since(t.to_system()).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Compose's State column: running, exited, created, restarting...
pub fn state_word(t: &pb::Task) -> &'static str {
    let s = t.status.as_ref().map(|s| s.state()).unwrap_or_default();
    match s {
        pb::TaskState::Running => "running",
        pb::TaskState::Paused => "paused",
        pb::TaskState::Complete | pb::TaskState::Failed | pb::TaskState::Shutdown => "exited",
        pb::TaskState::Rejected => "dead",
        pb::TaskState::Created => "created",
        pb::TaskState::Remove | pb::TaskState::Orphaned => "removing",
        _ => "created",
    }
}

/// Compose's Status column: "Up 5 seconds (healthy)", "Exited (1) 3 seconds ago".
pub fn status_text(t: &pb::Task) -> String {
    let Some(s) = t.status.as_ref() else {
        return "Created".into();
    };
    match s.state() {
        pb::TaskState::Running => {
            let mut out = format!("Up {}", human_duration(since(s.started_at.as_ref())));
            let h = s.health().short_name();
            if !h.is_empty() {
                out.push_str(&format!(" ({h})"));
            }
            out
        }
        pb::TaskState::Complete | pb::TaskState::Failed | pb::TaskState::Shutdown => {
            let ago = since(s.finished_at.as_ref().or(s.timestamp.as_ref()));
            format!(
                "Exited ({}) {} ago",
                s.exit_code.unwrap_or(-1),
                human_duration(ago)
            )
        }
        pb::TaskState::Rejected => format!("Rejected: {}", s.err),
        pb::TaskState::Pending if !t.pending_reason.is_empty() => {
            format!("Pending: {}", t.pending_reason)
        }
        other => {
            let mut w = other.short_name().to_string();
            if let Some(first) = w.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            w
        }
    }
}

/// The ports column ("0.0.0.0:8080->80/tcp").
pub fn ports_text(t: &pb::Task) -> String {
    let spec = t.spec.clone().unwrap_or_default();
    spec.ports
        .iter()
        .map(|p| {
            let proto = match p.protocol() {
                pb::Protocol::Udp => "udp",
                pb::Protocol::Sctp => "sctp",
                pb::Protocol::Tcp => "tcp",
            };
            if p.published == 0 {
                format!("{}/{proto}", p.target)
            } else {
                let ip = if p.host_ip.is_empty() {
                    "0.0.0.0"
                } else {
                    p.host_ip.as_str()
                };
                format!("{ip}:{}->{}/{proto}", p.published, p.target)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints rows as a left-aligned table with three spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Whether to colour output (a terminal, and NO_COLOR unset).
pub fn use_color(no_color: bool) -> bool {
    !no_color && std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

const COLORS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// The colour of the n-th service, cycling like Compose.
pub fn color_for(index: usize) -> &'static str {
    COLORS[index % COLORS.len()]
}

/// The address of a task on its first network, without the prefix length.
pub fn task_ip(t: &pb::Task) -> String {
    t.networks
        .first()
        .and_then(|n| n.addresses.first())
        .map(|a| a.split('/').next().unwrap_or(a).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3 * 3600), "3 hours");
    }

    #[test]
    fn error_chain_joins_causes() {
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&e), "outer: inner");
    }
}

/// How `up`/`down` show progress: one line per object with its state, as
/// Compose does. On a terminal the block is redrawn in place with a spinner
/// for objects still in progress; otherwise each change is one plain line;
/// `quiet` prints nothing.
pub struct Progress {
    mode: ProgressMode,
    lines: Vec<(String, String, bool)>,
    drawn: usize,
    tick: usize,
    color: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Tty,
    Plain,
    Quiet,
}

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

impl Progress {
    /// `setting`: the global --progress value.
    pub fn new(setting: &str) -> Progress {
        let tty = std::io::stdout().is_terminal();
        let mode = match setting {
            "quiet" => ProgressMode::Quiet,
            "plain" => ProgressMode::Plain,
            "tty" => ProgressMode::Tty,
            _ if tty => ProgressMode::Tty,
            _ => ProgressMode::Plain,
        };
        Progress {
            mode,
            lines: Vec::new(),
            drawn: 0,
            tick: 0,
            color: use_color(false),
        }
    }

    #[cfg(test)]
    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// Sets `object`'s state (`done`: finished, shown with a check mark).
    pub fn set(&mut self, object: &str, state: &str, done: bool) {
        match self.lines.iter_mut().find(|l| l.0 == object) {
            Some(l) if l.1 == state && l.2 == done => return,
            Some(l) => {
                l.1 = state.to_string();
                l.2 = done;
            }
            None => self
                .lines
                .push((object.to_string(), state.to_string(), done)),
        }
        match self.mode {
            ProgressMode::Quiet => {}
            ProgressMode::Plain => println!(
                " {} {object:<38} {state}",
                if done { '\u{2714}' } else { '-' }
            ),
            ProgressMode::Tty => self.redraw(),
        }
    }

    fn redraw(&mut self) {
        use std::io::Write;
        self.tick = self.tick.wrapping_add(1);
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            // Back to the top of the block.
            let _ = write!(out, "\x1b[{}A", self.drawn);
        }
        for (obj, state, done) in &self.lines {
            let mark = if *done {
                if self.color {
                    "\x1b[32m\u{2714}\x1b[0m".to_string()
                } else {
                    "\u{2714}".to_string()
                }
            } else {
                SPINNER[self.tick % SPINNER.len()].to_string()
            };
            let _ = writeln!(out, "\x1b[2K {mark} {obj:<38} {state}");
        }
        self.drawn = self.lines.len();
        let _ = out.flush();
    }
}

#[cfg(test)]
mod progress_tests {
    use super::*;

    #[test]
    fn a_state_is_recorded_once_per_change() {
        let mut p = Progress::new("quiet");
        p.set("Container a", "Starting", false);
        p.set("Container a", "Starting", false);
        p.set("Container b", "Created", true);
        p.set("Container a", "Started", true);
        assert_eq!(
            p.lines,
            vec![
                ("Container a".to_string(), "Started".to_string(), true),
                ("Container b".to_string(), "Created".to_string(), true),
            ]
        );
        assert_eq!(Progress::new("plain").mode(), ProgressMode::Plain);
    }
}
