//! The container shim as its own binary, for tests: `shim shim run <dir>`.
//! Production uses the hidden `flotilla shim` subcommand instead.

fn main() {
    std::process::exit(flotilla_runtime::shim::main(std::env::args().collect()));
}
