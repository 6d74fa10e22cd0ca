//! An isolated Flotilla daemon for the stack benchmarks: `flotilla server`
//! with its own state dir, run dir, socket, cgroup parent and address pool
//! under a temp dir, torn down by a drop guard (processes, mounts, cgroups).
//!
//! What it must never do: act on anything outside its own dirs and cgroup
//! parent (it finds its processes by those paths only).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util::{eventually, processes, run, Mem};

pub struct Daemon {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub cgroup_parent: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Daemon {
    pub fn start(exe: &Path, dir: &Path) -> Result<Daemon> {
        let tag = format!("fb{}", std::process::id() % 100_000);
        let state = dir.join("flotilla-state");
        // Socket paths are limited to 107 bytes: keep the run dir short.
        let run_dir = PathBuf::from(format!("/run/flotilla-bench/{tag}"));
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let cgroup_parent = format!("flotilla-bench-{tag}");
        let octet = 100 + std::process::id() % 100;
        let env = vec![
            (
                "FLOTILLA_HOST".to_string(),
                format!("unix://{}/flotilla.sock", run_dir.display()),
            ),
            ("FLOTILLA_STATE_DIR".into(), state.display().to_string()),
            ("FLOTILLA_RUN_DIR".into(), run_dir.display().to_string()),
            ("FLOTILLA_CGROUP_PARENT".into(), cgroup_parent.clone()),
            ("FLOTILLA_ADDRESS_POOL".into(), format!("10.{octet}.0.0/16")),
            ("FLOTILLA_DNS_UPSTREAM".into(), "none".into()),
            ("NO_COLOR".into(), "1".into()),
        ];
        let log = std::fs::File::create(dir.join("flotilla-daemon.log")).context("daemon log")?;
        let child = Command::new(exe)
            .arg("server")
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("daemon log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} server", exe.display()))?;
        let mut d = Daemon {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            run_dir,
            cgroup_parent,
            env,
            child: Some(child),
        };
        let up = eventually(Duration::from_secs(60), || {
            d.cmd()
                .args(["daemon", "status"])
                .output()
                .ok()?
                .status
                .success()
                .then_some(())
        });
        if up.is_none() {
            let log = std::fs::read_to_string(dir.join("flotilla-daemon.log")).unwrap_or_default();
            d.stop();
            bail!(
                "flotilla server did not come up:\n{}",
                crate::util::tail(&log, 30)
            );
        }
        Ok(d)
    }

    /// The CLI pointed at this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.exe);
        c.envs(self.env.iter().cloned())
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        c
    }

    pub fn import(&self, tar: &Path, reference: &str) -> Result<()> {
        run(self
            .cmd()
            .args(["image", "import", "--change", r#"CMD ["/bin/sh"]"#])
            .arg(tar)
            .arg(reference))?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The daemon and the shims of its containers.
    pub fn footprint(&self) -> (Mem, Vec<Mem>) {
        let Some(pid) = self.pid() else {
            return Default::default();
        };
        let state = self.dir.join("flotilla-state").display().to_string();
        let shims = processes()
            .into_iter()
            .filter(|p| {
                // A shim execs into the lean monitor once its container runs.
                p.0 != pid
                    && (p.3.contains(" shim run ") || p.3.contains("flotilla-shim-monitor "))
                    && p.3.contains(&state)
            })
            .map(|p| crate::util::mem_of(p.0).unwrap_or_default())
            .collect();
        (crate::util::mem_of(pid).unwrap_or_default(), shims)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if eventually(Duration::from_secs(20), || c.try_wait().ok().flatten()).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let state = self.dir.join("flotilla-state").display().to_string();
        let run_dir = self.run_dir.display().to_string();
        for p in processes() {
            if p.3.contains(&state) || p.3.contains(&run_dir) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.0 as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        kill_and_remove_cgroups(&self.cgroup_parent);
        unmount_under(&state);
        unmount_under(&run_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Unmounts everything mounted under `prefix`, deepest first.
pub fn unmount_under(prefix: &str) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(prefix))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Kills what is left in `parent` in every cgroup hierarchy and removes its
/// directories, deepest first.
pub fn kill_and_remove_cgroups(parent: &str) {
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs = Vec::new();
    for root in roots.flatten() {
        collect_dirs(&root.path().join(parent), &mut dirs);
    }
    for d in &dirs {
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                collect_dirs(&e.path(), out);
            }
        }
    }
}
