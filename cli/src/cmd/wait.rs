//! `flotilla wait SERVICE...`: blocks until the containers the services run
//! now have exited, then prints their exit codes (one line per container,
//! in name order). A read-only verb: it only watches the manager's state.

use crate::client;
use crate::opts::Global;
use anyhow::{bail, Result};
use clap::Args;
use flotilla_proto::v1 as pb;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// Services to wait for.
    #[arg(required = true)]
    pub services: Vec<String>,
}

pub async fn run(g: &Global, a: &WaitArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let now = super::lifecycle::tasks(&mut ctl, &stack, &a.services).await?;
    for s in &a.services {
        if !now.iter().any(|t| &t.service_name == s) {
            bail!("service {s} of stack {stack} has no containers");
        }
    }
    // The containers as they are now: a restart makes a new task, so waiting
    // on these ids returns when these exit, whatever the restart policy does.
    let watched: Vec<String> = super::ps::newest_per_slot(now)
        .into_iter()
        .filter(|t| !super::up::is_oneoff(t))
        .map(|t| t.id)
        .collect();
    loop {
        let ts = super::lifecycle::tasks(&mut ctl, &stack, &a.services).await?;
        let mut mine: Vec<&pb::Task> = ts.iter().filter(|t| watched.contains(&t.id)).collect();
        let done = watched.iter().all(|id| {
            ts.iter()
                .find(|t| &t.id == id)
                .is_none_or(|t| super::lifecycle::observed(t).is_terminal())
        });
        if done {
            mine.sort_by(|x, y| x.name.cmp(&y.name));
            for t in mine {
                let code = t.status.as_ref().and_then(|s| s.exit_code).unwrap_or(-1);
                println!("{code}");
            }
            return Ok(0);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
