//! `flotilla rm` (remove the services' stopped containers, stopping them
//! first with `-s`/`-f`) and `flotilla create` (deploy without starting).
//!
//! Both are Control calls that change desired state; neither touches a
//! container or asks for confirmation interactively (rm only removes what
//! no longer runs unless told to stop it).

use crate::client;
use crate::opts::Global;
use anyhow::Result;
use clap::Args;
use flotilla_proto::v1 as pb;
use std::collections::BTreeSet;

#[derive(Args, Debug)]
pub struct RmArgs {
    /// Don't ask to confirm removal (rm never asks; also stops running
    /// containers first, like `-s`).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Stop the containers first if they run.
    #[arg(short = 's', long)]
    pub stop: bool,
    /// Also remove the containers' anonymous volumes (named volumes are
    /// kept; `down -v` removes those).
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Services (default: all).
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Recreate containers even if their configuration is unchanged.
    #[arg(long)]
    pub force_recreate: bool,
    /// Seconds to wait for the containers to be created.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Services (default: all).
    pub services: Vec<String>,
}

pub async fn rm(g: &Global, a: &RmArgs) -> Result<i32> {
    let stack = super::project_name(g)?;
    let mut ctl = client::connect(g).await?;
    let before = super::lifecycle::tasks(&mut ctl, &stack, &a.services).await?;
    let resp = ctl
        .remove_service_tasks(pb::RemoveServiceTasksRequest {
            stack: stack.clone(),
            services: a.services.clone(),
            stop: a.stop || a.force,
            timeout_ms: 0,
            task_ids: Vec::new(),
            remove_volumes: a.volumes,
        })
        .await
        .map_err(|s| client::status_err(&format!("removing containers of stack {stack}"), s))?
        .into_inner();
    if resp.task_ids.is_empty() {
        println!("No stopped containers");
        return Ok(0);
    }
    let names: BTreeSet<&str> = before
        .iter()
        .filter(|t| resp.task_ids.contains(&t.id))
        .map(|t| t.name.as_str())
        .collect();
    for n in names {
        println!(" \u{2714} Container {n:<28} Removed");
    }
    Ok(0)
}

/// `flotilla create`: the stack deployed with its services desired
/// Created; returns when each has its containers created (not started).
pub async fn create(g: &Global, a: &CreateArgs) -> Result<i32> {
    let up = crate::opts::UpArgs {
        file: Default::default(),
        detach: true,
        wait: false,
        wait_timeout: a.timeout,
        remove_orphans: false,
        force_recreate: a.force_recreate,
        no_deps: false,
        scale: Vec::new(),
        no_start: true,
        abort_on_container_exit: false,
        exit_code_from: None,
        pull: None,
        services: a.services.clone(),
    };
    super::up::run(g, &up).await
}
