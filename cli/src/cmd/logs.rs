//! `flotilla logs`: the stack's container output through the manager (which
//! forwards to each task's node), prefixed and coloured per service like
//! Compose.

use crate::client::{self, Control};
use crate::opts::{Global, LogsArgs};
use crate::render;
use anyhow::{bail, Result};
use flotilla_proto::v1 as pb;
use std::collections::BTreeMap;
use std::io::Write;
use tokio_stream::StreamExt;

pub async fn run(g: &Global, a: &LogsArgs) -> Result<i32> {
    let name = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    stream(&mut ctl, &name, a).await?;
    Ok(0)
}

/// Streams logs of `stack` to stdout until the stream ends.
pub async fn stream(ctl: &mut Control, stack: &str, a: &LogsArgs) -> Result<()> {
    let tail = if a.tail == "all" || a.tail == "-1" {
        None
    } else {
        match a.tail.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => bail!("invalid --tail {:?}: a number of lines or \"all\"", a.tail),
        }
    };
    let mut s = ctl
        .logs(pb::LogsRequest {
            stack: stack.to_string(),
            services: a.services.clone(),
            follow: a.follow,
            tail,
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err("reading logs", s))?
        .into_inner();
    let color = render::use_color(a.no_color);
    let mut colors: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut width = 0usize;
    let stdout = std::io::stdout();
    while let Some(line) = s.next().await {
        let line = line.map_err(|s| client::status_err("reading logs", s))?;
        let prefix = format!("{}-{}", line.service, line.slot);
        width = width.max(prefix.len());
        let n = colors.len();
        let c = *colors
            .entry(line.service.clone())
            .or_insert(render::color_for(n));
        let mut out = stdout.lock();
        if !a.no_log_prefix {
            if color {
                write!(out, "\x1b[{c}m{prefix:<width$} | \x1b[0m")?;
            } else {
                write!(out, "{prefix:<width$} | ")?;
            }
        }
        if a.timestamps {
            if let Some(t) = &line.time {
                write!(out, "{} ", rfc3339(t))?;
            }
        }
        let text = String::from_utf8_lossy(&line.line);
        writeln!(out, "{}", text.trim_end_matches('\n'))?;
        out.flush()?;
    }
    Ok(())
}

/// A UTC RFC 3339 timestamp with nanoseconds, as Docker prints them.
pub fn rfc3339(t: &pb::Timestamp) -> String {
    let secs = t.unix_nanos.div_euclid(1_000_000_000);
    let nanos = t.unix_nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// Howard Hinnant's days → civil date algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = pb::Timestamp {
            unix_nanos: 1_700_000_000_123_456_789,
        };
        assert_eq!(rfc3339(&t), "2023-11-14T22:13:20.123456789Z");
    }
}
