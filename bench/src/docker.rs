//! A private Docker Engine (Debian's dockerd) for the peers: its own data
//! root, exec root, socket and pidfile under a temp dir, no iptables and no
//! default bridge, stopped by a drop guard.
//!
//! What it must never do: touch the host's firewall or links (other people
//! run network tests on this machine), or talk to any other Docker daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{eventually, processes, run, Mem};

pub struct Engine {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub docker: PathBuf,
    child: Option<Child>,
}

impl Engine {
    pub fn start(dockerd: &Path, docker: &Path, dir: &Path) -> Result<Engine> {
        let dir = dir.join("docker");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).context("dockerd log")?;
        let child = Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-masq=false",
                "--storage-driver=overlay2",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dockerd log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", dockerd.display()))?;
        let mut e = Engine {
            dir,
            socket,
            docker: docker.to_path_buf(),
            child: Some(child),
        };
        let up = eventually(Duration::from_secs(60), || {
            e.cmd()
                .arg("info")
                .output()
                .ok()?
                .status
                .success()
                .then_some(())
        });
        if up.is_none() {
            let log = std::fs::read_to_string(e.dir.join("dockerd.log")).unwrap_or_default();
            e.stop();
            bail!("dockerd did not come up:\n{}", crate::util::tail(&log, 30));
        }
        Ok(e)
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The docker client pointed at this engine.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.docker);
        c.env("DOCKER_HOST", self.host()).stdin(Stdio::null());
        c
    }

    pub fn import(&self, tar: &Path, reference: &str) -> Result<()> {
        run(self.cmd().arg("import").arg(tar).arg(reference))?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// dockerd, its containerd, and the containerd shims of this engine.
    pub fn footprint(&self) -> (Mem, Mem, Vec<Mem>) {
        let Some(pid) = self.pid() else {
            return Default::default();
        };
        let exec = self.dir.display().to_string();
        let procs = processes();
        let mem = |p: u32| crate::util::mem_of(p).unwrap_or_default();
        let containerd = procs
            .iter()
            .filter(|p| p.1 == pid && p.2 == "containerd")
            .map(|p| mem(p.0))
            .fold(Mem::default(), |a, b| a + b);
        let shims = procs
            .iter()
            .filter(|p| p.2.starts_with("containerd-shim") && p.3.contains(&exec))
            .map(|p| mem(p.0))
            .collect();
        (mem(pid), containerd, shims)
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // Remove what the runs left, then SIGTERM and wait (dockerd stops
        // its containerd); SIGKILL after a grace period.
        if let Ok(out) = self.cmd().args(["ps", "-aq"]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = self.cmd().args(["rm", "-f"]).args(&ids).output();
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let done = eventually(Duration::from_secs(30), || c.try_wait().ok().flatten());
        if done.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Left-over shims or containerd of this engine (found by our dir).
        let dir = self.dir.display().to_string();
        for p in processes() {
            if p.3.contains(&dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.0 as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        crate::flotilla::unmount_under(&dir);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}
