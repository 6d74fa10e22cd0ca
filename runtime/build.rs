//! Builds `flotilla-init` (runtime/init/main.rs), the pid 1 of containers
//! with `init: true`, as a statically linked program: it runs inside the
//! container's own root filesystem, which may have no libc at all. The
//! runtime embeds the result (see src/container/init.rs).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from("init/main.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("flotilla-init");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "flotilla_init",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running rustc for flotilla-init");
    assert!(status.success(), "building flotilla-init failed");
}
