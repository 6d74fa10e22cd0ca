//! `flotilla-shim-monitor`: what stays resident per container once it runs
//! (log copying, reaping, the shim socket). `flotilla shim run` execs it
//! after creating the container; it links none of the daemon or of
//! libcontainer, so it stays small. Not for users to run.

fn main() {
    std::process::exit(flotilla_runtime::shim::monitor::main(
        std::env::args().collect(),
    ));
}
