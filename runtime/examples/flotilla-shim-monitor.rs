//! The lean shim monitor next to the test shim (`examples/shim`), as
//! production has `flotilla-shim-monitor` next to `flotilla`.

fn main() {
    std::process::exit(flotilla_runtime::shim::monitor::main(
        std::env::args().collect(),
    ));
}
