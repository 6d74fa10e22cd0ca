//! `flotilla run SERVICE [CMD...]`: a one-off task with the service's
//! configuration (its networks, volumes, environment), made by the manager
//! (RunTask) and placed like any task. The CLI follows its output and exits
//! with its exit code; `--rm` removes it afterwards.
//!
//! The dependencies are deployed from the file first (unless `--no-deps`);
//! the manager starts the task once they hold. Nothing here touches a
//! container directly.

use crate::client::{self, Control};
use crate::opts::Global;
use anyhow::{bail, Context, Result};
use clap::Args;
use flotilla_proto::v1 as pb;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;
use tokio_stream::StreamExt;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Detached: print the container's name and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Extra environment: KEY=VALUE (or KEY, taken from this environment).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Don't start the services it depends on.
    #[arg(long)]
    pub no_deps: bool,
    /// The container's name.
    #[arg(long)]
    pub name: Option<String>,
    /// User to run as (name or uid[:gid]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Override the image's entrypoint ("" clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Publish the service's ports too.
    #[arg(long)]
    pub service_ports: bool,
    /// No pseudo-terminal (accepted for Compose compatibility: run never
    /// allocates one yet).
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    pub service: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn env_entries(env: &[String]) -> Vec<String> {
    env.iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                // `-e KEY`: the value of this process's environment, as
                // Compose does; unset means not set at all.
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// Makes sure the service exists in the stack (with no replicas of its own
/// when it was never deployed) and, unless `no_deps`, that its dependencies
/// are deployed and started.
async fn prepare(
    ctl: &mut Control,
    spec: &pb::StackSpec,
    service: &str,
    no_deps: bool,
) -> Result<()> {
    let deployed: Vec<String> = ctl
        .list_services(pb::ListServicesRequest {
            stack: spec.name.clone(),
        })
        .await
        .map_err(|s| client::status_err("listing services", s))?
        .into_inner()
        .services
        .into_iter()
        .filter_map(|s| s.spec.map(|sp| sp.name))
        .collect();
    let target = spec
        .services
        .iter()
        .find(|s| s.name == service)
        .context("service disappeared from the file")?;
    let mut spec = spec.clone();
    super::up::pin_images(ctl, &mut spec).await?;
    if !deployed.iter().any(|d| d == service) {
        let mut scale = BTreeMap::new();
        scale.insert(service.to_string(), 0u32);
        ctl.deploy_stack(pb::DeployStackRequest {
            spec: Some(spec.clone()),
            services: vec![service.to_string()],
            no_deps: true,
            scale: scale.into_iter().collect(),
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err(&format!("deploying service {service}"), s))?;
    }
    if !no_deps && !target.depends_on.is_empty() {
        let deps: Vec<String> = target
            .depends_on
            .iter()
            .filter(|d| spec.services.iter().any(|s| s.name == d.service))
            .map(|d| d.service.clone())
            .collect();
        ctl.deploy_stack(pb::DeployStackRequest {
            spec: Some(spec.clone()),
            services: deps,
            ..Default::default()
        })
        .await
        .map_err(|s| client::status_err(&format!("starting the dependencies of {service}"), s))?;
    }
    Ok(())
}

async fn task(ctl: &mut Control, stack: &str, service: &str, id: &str) -> Result<pb::Task> {
    let ts = super::lifecycle::tasks(ctl, stack, &[service.to_string()]).await?;
    ts.into_iter()
        .find(|t| t.id == id)
        .with_context(|| format!("the one-off task {id} disappeared"))
}

fn print_line(line: &pb::LogLine) {
    let text = String::from_utf8_lossy(&line.line);
    let text = text.trim_end_matches('\n');
    if line.stream() == pb::LogStream::Stderr {
        let mut e = std::io::stderr();
        let _ = writeln!(e, "{text}");
    } else {
        let mut o = std::io::stdout();
        let _ = writeln!(o, "{text}");
        let _ = o.flush();
    }
}

async fn logs(
    ctl: &mut Control,
    stack: &str,
    id: &str,
    follow: bool,
) -> Result<tonic::Streaming<pb::LogLine>> {
    Ok(ctl
        .logs(pb::LogsRequest {
            stack: stack.to_string(),
            services: Vec::new(),
            follow,
            tail: None,
            since: None,
            until: None,
            task_ids: vec![id.to_string()],
        })
        .await
        .map_err(|s| client::status_err("reading the container's output", s))?
        .into_inner())
}

pub async fn run(g: &Global, a: &RunArgs) -> Result<i32> {
    let project = super::load_project(g, &[])?;
    let spec = project.spec.clone();
    if !spec.services.iter().any(|s| s.name == a.service) {
        bail!("no such service: {}", a.service);
    }
    let stack = spec.name.clone();
    let mut ctl = client::connect_or_start(g).await?;
    prepare(&mut ctl, &spec, &a.service, a.no_deps).await?;
    let entrypoint = a.entrypoint.as_ref().map(|e| pb::StringList {
        values: if e.is_empty() {
            Vec::new()
        } else {
            e.split_whitespace().map(String::from).collect()
        },
    });
    let id = ctl
        .run_task(pb::RunTaskRequest {
            stack: stack.clone(),
            service: a.service.clone(),
            command: a.command.clone(),
            entrypoint,
            env: env_entries(&a.env),
            remove: a.rm,
            no_deps: a.no_deps,
            user: a.user.clone().unwrap_or_default(),
            workdir: a.workdir.clone().unwrap_or_default(),
            name: a.name.clone().unwrap_or_default(),
            service_ports: a.service_ports,
        })
        .await
        .map_err(|s| client::status_err(&format!("running service {}", a.service), s))?
        .into_inner()
        .task_id;

    // Until it runs (or ended, or could not start).
    let mut t = loop {
        let t = task(&mut ctl, &stack, &a.service, &id).await?;
        let st = super::lifecycle::observed(&t);
        if !t.node_id.is_empty() && (st == pb::TaskState::Running || st.is_terminal()) {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if a.detach {
        println!("{}", t.name);
        return Ok(0);
    }

    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the Ctrl-C handler")?;
    let mut printed = 0usize;
    if !super::lifecycle::observed(&t).is_terminal() {
        let mut stream = logs(&mut ctl, &stack, &id, true).await?;
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        let mut ended = false;
        loop {
            tokio::select! {
                line = stream.next(), if !ended => match line {
                    Some(Ok(l)) => { print_line(&l); printed += 1; }
                    Some(Err(s)) => return Err(client::status_err("reading the container's output", s)),
                    None => ended = true,
                },
                _ = poll.tick() => {
                    t = task(&mut ctl, &stack, &a.service, &id).await?;
                    if super::lifecycle::observed(&t).is_terminal() {
                        break;
                    }
                }
                _ = int.recv() => {
                    // Ctrl-C: stop (and with --rm remove) the one-off task.
                    let _ = ctl.remove_service_tasks(pb::RemoveServiceTasksRequest {
                        stack: stack.clone(),
                        services: vec![a.service.clone()],
                        stop: true,
                        timeout_ms: 0,
                        task_ids: vec![id.clone()],
                        remove_volumes: a.rm,
                    }).await;
                    return Ok(130);
                }
            }
        }
    }
    // Whatever the follower had not delivered yet.
    let mut rest = logs(&mut ctl, &stack, &id, false).await?;
    let mut n = 0usize;
    while let Some(l) = rest.next().await {
        let l = l.map_err(|s| client::status_err("reading the container's output", s))?;
        n += 1;
        if n > printed {
            print_line(&l);
        }
    }
    let st = t.status.clone().unwrap_or_default();
    let code = match st.exit_code {
        Some(c) => c,
        None => {
            let why = if st.err.is_empty() {
                st.message
            } else {
                st.err
            };
            eprintln!(
                "Error: the one-off container of {} did not run: {why}",
                a.service
            );
            125
        }
    };
    if a.rm {
        ctl.remove_service_tasks(pb::RemoveServiceTasksRequest {
            stack: stack.clone(),
            services: vec![a.service.clone()],
            stop: false,
            timeout_ms: 0,
            task_ids: vec![id.clone()],
            // Like `docker run --rm`: its anonymous volumes go too.
            remove_volumes: true,
        })
        .await
        .map_err(|s| client::status_err(&format!("removing container {}", t.name), s))?;
    }
    Ok(code)
}
