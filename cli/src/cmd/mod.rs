//! One module per user command. Each parses nothing (clap did), calls the
//! Control API, and renders; none of them changes state except through the
//! API.

pub(crate) mod cluster;
mod config;
mod daemon_cmd;
mod down;
pub(crate) mod image;
pub(crate) mod inspect;
pub(crate) mod lifecycle;
mod logs;
mod ls;
pub(crate) mod network;
pub(crate) mod ops;
pub(crate) mod port;
mod ps;
pub(crate) mod pull;
pub(crate) mod rm;
pub(crate) mod run;
mod up;
pub(crate) mod wait;

use crate::opts::{Cli, Command, Global};
use anyhow::{Context, Result};
use flotilla_compose::{LoadOptions, Project};

/// Runs a parsed command line; returns the exit code.
pub async fn dispatch(cli: Cli) -> Result<i32> {
    let mut global = cli.global.clone();
    let extra = match &cli.command {
        Command::Up(a) => a.file.files.clone(),
        Command::Down(a) => a.file.files.clone(),
        Command::Ps(a) => a.file.files.clone(),
        Command::Config(a) => a.file.files.clone(),
        Command::Scale(a) => a.file.files.clone(),
        Command::Pull(a) => a.file.files.clone(),
        Command::Push(a) => a.file.files.clone(),
        _ => Vec::new(),
    };
    if !extra.is_empty() {
        // Files named after the command replace COMPOSE_FILE, like files
        // named before it.
        let from_env: Vec<std::path::PathBuf> = std::env::var("COMPOSE_FILE")
            .map(|v| v.split(':').map(Into::into).collect())
            .unwrap_or_default();
        if !from_env.is_empty() && global.files == from_env {
            global.files.clear();
        }
        global.files.extend(extra);
    }
    let g = &global;
    match &cli.command {
        Command::Up(a) => up::run(g, a).await,
        Command::Down(a) => down::run(g, a).await,
        Command::Ps(a) => ps::run(g, a).await,
        Command::Logs(a) => logs::run(g, a).await,
        Command::Ls => ls::run(g).await,
        Command::Port(a) => port::run(g, a).await,
        Command::Config(a) => config::run(g, a),
        Command::Image(c) => image::run(g, c).await,
        Command::Daemon(c) => daemon_cmd::run(g, c).await,
        Command::Server(a) => crate::daemon::serve(g, a).await,
        Command::Cluster(c) => cluster::run(g, c).await,
        Command::Node(c) => cluster::node(g, c).await,
        Command::Start(a) => lifecycle::start(g, a).await,
        Command::Stop(a) => lifecycle::stop(g, a).await,
        Command::Restart(a) => lifecycle::restart(g, a).await,
        Command::Kill(a) => lifecycle::kill(g, a).await,
        Command::Exec(a) => lifecycle::exec(g, a).await,
        Command::Events(a) => lifecycle::events(g, a).await,
        Command::Scale(a) => up::scale(g, a).await,
        Command::Pause(a) => lifecycle::pause(g, a).await,
        Command::Unpause(a) => lifecycle::unpause(g, a).await,
        Command::Rm(a) => rm::rm(g, a).await,
        Command::Create(a) => rm::create(g, a).await,
        Command::Run(a) => run::run(g, a).await,
        Command::Wait(a) => wait::run(g, a).await,
        Command::Images(a) => inspect::images(g, a).await,
        Command::Inspect(a) => inspect::inspect(g, a).await,
        Command::Top(a) => ops::top(g, a).await,
        Command::Stats(a) => ops::stats(g, a).await,
        Command::Cp(a) => ops::cp(g, a).await,
        Command::Pull(a) => pull::pull(g, a).await,
        Command::Push(a) => pull::push(g, a).await,
        Command::Network(c) => network::run(g, c).await,
    }
}

/// Loads the Compose project the global flags name (for deploying).
pub fn load_project(g: &Global, services: &[String]) -> Result<Project> {
    let opts = load_options(g, services)?;
    let project = flotilla_compose::load(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    for w in &project.warnings {
        eprintln!("WARN[0000] {w}");
    }
    Ok(project)
}

/// The loader options from the global flags and the environment.
pub fn load_options(g: &Global, services: &[String]) -> Result<LoadOptions> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut opts = LoadOptions::new(&cwd);
    opts.files = g.files.clone();
    opts.project_dir = g.project_directory.clone();
    opts.project_name = g.project_name.clone();
    opts.env = std::env::vars().collect();
    opts.env_files = g.env_files.clone();
    opts.profiles = g.profiles.clone();
    opts.services = services.to_vec();
    Ok(opts)
}

/// The project name for commands that only need the name (`down`, `ps`,
/// `logs`): `-p` wins; else the Compose file decides.
pub fn project_name(g: &Global) -> Result<String> {
    if let Some(p) = &g.project_name {
        if let Some(n) = flotilla_compose::normalize_project_name(p) {
            return Ok(n);
        }
        anyhow::bail!("invalid project name {p:?}: must contain only lowercase letters, digits, dashes and underscores, and start with a letter or digit");
    }
    let opts = load_options(g, &[])?;
    let project = flotilla_compose::load_for_config(&opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(project.name)
}
