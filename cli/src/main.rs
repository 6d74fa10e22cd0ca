//! The `flotilla` binary: the composition root.
//!
//! User commands are thin — parse, call the Control API, render — and shaped
//! like `docker compose`'s so a Compose user's habits carry over. The same
//! binary is also the daemon (`flotilla server`: manager and agent in one
//! process) and the per-container shim (`flotilla shim`, hidden), which must
//! run before any async runtime or thread exists.

mod client;
mod cluster_daemon;
mod cmd;
mod daemon;
mod opts;
mod render;

use clap::Parser;
use opts::{Cli, Command};

fn main() {
    // The shim is exec'd by the runtime as `flotilla shim ...`; it must stay
    // single-threaded, so it is dispatched before clap, tracing or tokio.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        std::process::exit(flotilla_runtime::shim::main(args));
    }

    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One clear line (plus causes) and a non-zero exit.
            eprintln!("error: {}", render::error_chain(&e));
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let verbose = cli.global.debug;
    let filter = std::env::var("FLOTILLA_LOG").unwrap_or_else(|_| {
        if verbose {
            "debug".into()
        } else if matches!(cli.command, Command::Server(_)) {
            "info".into()
        } else {
            "warn".into()
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(cmd::dispatch(cli))
}
