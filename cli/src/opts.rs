//! Command-line shape: Compose's verbs and global flags, plus Flotilla's
//! own (`server`, `daemon`, `image`).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Default daemon socket.
pub const DEFAULT_HOST: &str = "unix:///run/flotilla/flotilla.sock";

#[derive(Parser, Debug)]
#[command(name = "flotilla", version, about = "Compose stacks on real containers, on one host or many", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Compose file(s), in order (later files override earlier ones).
    /// Before the command (`flotilla -f x.yaml logs -f`), or after it for
    /// commands whose `-f` is not taken (`flotilla up -f x.yaml`).
    #[arg(
        short = 'f',
        long = "file",
        env = "COMPOSE_FILE",
        value_delimiter = ':'
    )]
    pub files: Vec<PathBuf>,
    /// Project (stack) name.
    #[arg(short = 'p', long = "project-name", global = true)]
    pub project_name: Option<String>,
    /// Project directory (default: the first file's directory).
    #[arg(long, global = true)]
    pub project_directory: Option<PathBuf>,
    /// Extra environment files for interpolation.
    #[arg(long = "env-file", global = true)]
    pub env_files: Vec<PathBuf>,
    /// Profiles to enable.
    #[arg(
        long = "profile",
        global = true,
        env = "COMPOSE_PROFILES",
        value_delimiter = ','
    )]
    pub profiles: Vec<String>,
    /// The daemon's address.
    #[arg(long, global = true, env = "FLOTILLA_HOST", default_value = DEFAULT_HOST)]
    pub host: String,
    /// Persistent state of the local daemon.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_STATE_DIR",
        default_value = "/var/lib/flotilla"
    )]
    pub state_dir: PathBuf,
    /// Volatile state of the local daemon (sockets, namespaces).
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_RUN_DIR",
        default_value = "/run/flotilla"
    )]
    pub run_dir: PathBuf,
    /// Verbose logs.
    #[arg(long, global = true)]
    pub debug: bool,
    /// Progress output: auto (tty on a terminal, else plain), tty, plain
    /// or quiet.
    #[arg(
        long,
        global = true,
        env = "COMPOSE_PROGRESS",
        default_value = "auto",
        value_parser = ["auto", "tty", "plain", "quiet"]
    )]
    pub progress: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create and start the stack's containers.
    Up(UpArgs),
    /// Stop and remove the stack's containers and networks.
    Down(DownArgs),
    /// List the stack's containers.
    Ps(PsArgs),
    /// Show the stack's container output.
    Logs(LogsArgs),
    /// List running stacks.
    Ls,
    /// Print the host address a service's port is published on.
    Port(crate::cmd::port::PortArgs),
    /// Show the resolved model of the Compose file(s).
    Config(ConfigArgs),
    /// Manage images on the nodes.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Manage the local daemon.
    #[command(subcommand)]
    Daemon(DaemonCmd),
    /// Run the daemon (manager and agent) in the foreground.
    Server(ServerArgs),
    /// Manage the cluster (init, join, join-token, leave).
    #[command(subcommand)]
    Cluster(crate::cmd::cluster::ClusterCmd),
    /// Manage the cluster's nodes.
    #[command(subcommand)]
    Node(crate::cmd::cluster::NodeCmd),
    /// Start the services' stopped containers.
    Start(crate::cmd::lifecycle::ServicesArgs),
    /// Stop the services' containers (they stay stopped until `start`).
    Stop(crate::cmd::lifecycle::ServicesArgs),
    /// Replace the services' containers with new ones.
    Restart(crate::cmd::lifecycle::ServicesArgs),
    /// Send a signal to the services' containers.
    Kill(crate::cmd::lifecycle::KillArgs),
    /// Run a command in a running container of a service.
    Exec(crate::cmd::lifecycle::ExecArgs),
    /// Stream the stack's container events.
    Events(crate::cmd::lifecycle::EventsArgs),
    /// Set the number of containers of services (SERVICE=N ...).
    Scale(ScaleArgs),
    /// Pause the services' running containers.
    Pause(crate::cmd::lifecycle::ServicesArgs),
    /// Unpause the services' paused containers.
    Unpause(crate::cmd::lifecycle::ServicesArgs),
    /// Remove the services' stopped containers.
    Rm(crate::cmd::rm::RmArgs),
    /// Create the services' containers without starting them.
    Create(crate::cmd::rm::CreateArgs),
    /// Run a one-off command with a service's configuration.
    Run(crate::cmd::run::RunArgs),
    /// Block until the services' containers exit; print their exit codes.
    Wait(crate::cmd::wait::WaitArgs),
    /// List the images the stack's containers use.
    Images(crate::cmd::inspect::ImagesArgs),
    /// Show a stack, service or task as JSON.
    Inspect(crate::cmd::inspect::InspectArgs),
    /// Show the processes running in the services' containers.
    Top(crate::cmd::ops::TopArgs),
    /// Show the services' containers' resource usage.
    Stats(crate::cmd::ops::StatsArgs),
    /// Copy files between a service's container and the local filesystem.
    Cp(crate::cmd::ops::CpArgs),
    /// Pull the services' images.
    Pull(crate::cmd::pull::PullArgs),
    /// Push the services' images to their registries.
    Push(crate::cmd::pull::PushArgs),
    /// Manage networks (ls, inspect, create, rm, prune).
    #[command(subcommand)]
    Network(crate::cmd::network::NetworkCmd),
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Don't start linked services.
    #[arg(long)]
    pub no_deps: bool,
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true)]
    pub pairs: Vec<String>,
}

/// `-f FILE` accepted after the command too.
#[derive(Args, Debug, Clone, Default)]
pub struct FileArgs {
    /// Compose file(s), in order.
    #[arg(short = 'f', long = "file", value_delimiter = ':')]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Detached: start in the background and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Return when every service runs (and is healthy where checked).
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for the stack to start.
    #[arg(long, default_value_t = 120)]
    pub wait_timeout: u64,
    /// Remove services that are no longer in the file.
    #[arg(long)]
    pub remove_orphans: bool,
    /// Recreate containers even if their configuration is unchanged.
    #[arg(long)]
    pub force_recreate: bool,
    /// Don't start linked services.
    #[arg(long)]
    pub no_deps: bool,
    /// Scale SERVICE to NUM containers (overrides `scale`/`deploy.replicas`).
    #[arg(long = "scale", value_name = "SERVICE=NUM")]
    pub scale: Vec<String>,
    /// Create the containers but don't start them.
    #[arg(long)]
    pub no_start: bool,
    /// Stop every container when one exits (attached mode).
    #[arg(long, conflicts_with = "detach")]
    pub abort_on_container_exit: bool,
    /// Exit with this service's exit code (implies --abort-on-container-exit).
    #[arg(long, value_name = "SERVICE", conflicts_with = "detach")]
    pub exit_code_from: Option<String>,
    /// Pull images before starting (overrides each service's pull_policy).
    #[arg(long, value_parser = ["always", "missing", "never"])]
    pub pull: Option<String>,
    /// Services to start (default: all).
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Also remove named volumes.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Seconds to wait for containers to stop before killing them.
    #[arg(short = 't', long)]
    pub timeout: Option<u64>,
    /// Remove containers of services not in the file (always done: the whole stack is removed).
    #[arg(long)]
    pub remove_orphans: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Show stopped containers too.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// table or json.
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow new output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Lines from the end of each container's log ("all" for everything).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Don't colour the output.
    #[arg(long)]
    pub no_color: bool,
    /// Don't prefix lines with the container name.
    #[arg(long)]
    pub no_log_prefix: bool,
    pub services: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub file: FileArgs,
    /// Output format.
    #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
    pub format: String,
    /// Only validate; print nothing.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Print the service names, one per line.
    #[arg(long)]
    pub services: bool,
    /// Print the volume names, one per line.
    #[arg(long)]
    pub volumes: bool,
    /// Print the profile names, one per line.
    // Its own id: the global `--profile` is stored as `profiles`.
    #[arg(id = "list_profiles", long = "profiles")]
    pub profiles: bool,
    /// Print the image names, one per line.
    #[arg(long)]
    pub images: bool,
    /// Do not interpolate variables.
    #[arg(long)]
    pub no_interpolate: bool,
    /// Pin image tags to digests (asks the daemon).
    #[arg(long)]
    pub resolve_image_digests: bool,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List images.
    Ls,
    /// Load images from a `docker save` archive or an OCI layout tarball.
    Load {
        /// Read from this file instead of standard input.
        #[arg(short = 'i', long)]
        input: Option<PathBuf>,
    },
    /// Create an image from a root filesystem tarball.
    Import {
        /// Dockerfile instructions applied to the image (CMD, ENTRYPOINT, ENV, WORKDIR, USER, STOPSIGNAL).
        #[arg(short = 'c', long = "change")]
        changes: Vec<String>,
        /// The tarball ("-" for standard input).
        file: PathBuf,
        /// The reference to tag it with (name[:tag]).
        reference: String,
    },
    /// Remove an image (refused while a container uses it, unless -f).
    Rm {
        /// Remove even if a container uses it.
        #[arg(short = 'f', long)]
        force: bool,
        reference: String,
    },
    /// Pull an image from a registry onto every node.
    Pull(crate::cmd::image::ImagePullArgs),
    /// Push an image to its registry.
    Push(crate::cmd::image::ImagePushArgs),
    /// Write images to a tar archive (`docker save` format).
    Save(crate::cmd::image::ImageSaveArgs),
    /// Give an image another name (TARGET) on every node that has it.
    Tag(crate::cmd::image::ImageTagArgs),
    /// Show images as JSON.
    Inspect(crate::cmd::image::ImageInspectArgs),
    /// Remove unused images.
    Prune(crate::cmd::image::ImagePruneArgs),
}

#[derive(Subcommand, Debug)]
pub enum DaemonCmd {
    /// Show whether the local daemon runs.
    Status,
    /// Stop the local daemon (containers keep running).
    Stop,
}

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Parent cgroup of every container (at the root of each hierarchy).
    #[arg(long, env = "FLOTILLA_CGROUP_PARENT", default_value = "flotilla")]
    pub cgroup_parent: String,
    /// Default address pool for stack networks.
    #[arg(long, env = "FLOTILLA_ADDRESS_POOL", default_value = "10.89.0.0/16")]
    pub address_pool: String,
    /// Take a Raft snapshot every N applied entries.
    #[arg(long, default_value_t = 1000)]
    pub snapshot_every: u64,
    /// Where the embedded DNS server forwards names it does not know:
    /// comma-separated `IP[:PORT]`, or `none` to answer them SERVFAIL.
    /// Default: the host's non-loopback nameservers from /etc/resolv.conf.
    #[arg(long, env = "FLOTILLA_DNS_UPSTREAM")]
    pub dns_upstream: Option<String>,
}
