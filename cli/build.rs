//! Links `flotilla-shim-monitor`, and only it, as a static PIE.
//!
//! The monitor stays resident once per container, and a dynamically linked
//! one maps glibc and the loader: about 1.3 MiB of its RSS is their shared
//! text, for a loop that needs a few syscalls. Cargo cannot set
//! `crt-static` for one binary, so this script gives that binary the link
//! arguments instead: `-static-pie`, plus a directory of linker scripts that
//! stand in for the shared libraries rustc asks for (`-lgcc_s -lutil -lrt
//! -lpthread -lm -ldl -lc`, requested after `-Bdynamic`) and point at the
//! static archives of the same libraries. Every library the link asks for
//! must be covered: one real shared object in the link (the system's
//! `libseccomp.so`, which libcontainer's libseccomp-sys requests, even though
//! the monitor calls none of it) makes the linker keep dynamic symbols that
//! the static-PIE start code never resolves, and the binary crashes before
//! `main`. `cli/tests/shim_monitor_binary.rs` runs the binary to catch that.
//! The `flotilla` binary itself is linked as before.
//!
//! Where the static archives are missing (no `libc6-dev` static libs, or not
//! a glibc target) the monitor is linked dynamically like the rest, with a
//! warning: it works the same, only larger.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "flotilla-shim-monitor";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if os != "linux" || env != "gnu" || features.split(',').any(|f| f == "crt-static") {
        // Other targets, or everything is static already.
        return;
    }
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo:warning=OUT_DIR unset; linking {BIN} dynamically");
        return;
    };
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let find = |name: &str| -> Option<PathBuf> {
        let o = Command::new(&cc)
            .arg(format!("-print-file-name={name}"))
            .output()
            .ok()?;
        let p = PathBuf::from(String::from_utf8(o.stdout).ok()?.trim());
        // Unknown files are echoed back as the bare name.
        (p.is_absolute() && p.is_file()).then_some(p)
    };
    let (Some(libc), Some(gcc), Some(gcc_eh), Some(_rcrt1)) = (
        find("libc.a"),
        find("libgcc.a"),
        find("libgcc_eh.a"),
        // The start file of a static PIE.
        find("rcrt1.o"),
    ) else {
        println!(
            "cargo:warning=static glibc (libc.a, libgcc_eh.a, rcrt1.o) not found; linking {BIN} dynamically"
        );
        return;
    };
    let dir = out.join("static-monitor-libs");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        println!(
            "cargo:warning=creating {}: {e}; linking {BIN} dynamically",
            dir.display()
        );
        return;
    }
    let mut scripts: Vec<(String, String)> = vec![
        ("gcc_s".into(), format!("INPUT({})", gcc_eh.display())),
        (
            "c".into(),
            format!(
                "GROUP({} {} {})",
                libc.display(),
                gcc.display(),
                gcc_eh.display()
            ),
        ),
    ];
    for lib in ["util", "rt", "pthread", "m", "dl", "seccomp"] {
        // glibc ≥ 2.34 keeps the first ones as empty archives; an absent
        // one is simply not needed (the monitor uses nothing of
        // libseccomp: were that to change, the link fails loudly).
        let text = match find(&format!("lib{lib}.a")) {
            Some(p) => format!("INPUT({})", p.display()),
            None => String::new(),
        };
        scripts.push((lib.into(), text));
    }
    for (lib, text) in scripts {
        let path = dir.join(format!("lib{lib}.so"));
        if let Err(e) = write_if_changed(&path, &text) {
            println!(
                "cargo:warning=writing {}: {e}; linking {BIN} dynamically",
                path.display()
            );
            return;
        }
    }
    println!("cargo:rustc-link-arg-bin={BIN}=-static-pie");
    println!("cargo:rustc-link-arg-bin={BIN}=-L{}", dir.display());
}

fn write_if_changed(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text)
}
