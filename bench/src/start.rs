//! Container start: create → start → exit (→ removed) of `/bin/true` on the
//! same busybox rootfs, through flotilla's runtime (its real `Runtime` with
//! the real `flotilla shim`), `runc run`, and `docker run --rm`; and the
//! shim's memory per running container.
//!
//! What it must never do: leave containers, mounts or cgroups behind (the
//! runtime's state lives under the run's temp dir and is removed here).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use flotilla_runtime::container::{ContainerSpec, ContainerState, Runtime, RuntimeConfig};

use crate::util::{mem_of, ms, run, Mem};

pub struct FlotillaRuntime {
    rt: Runtime,
    rootfs: PathBuf,
    pub cgroup_parent: String,
    state_dir: PathBuf,
    run_dir: PathBuf,
}

impl FlotillaRuntime {
    pub fn new(shim_exe: &Path, rootfs: &Path, dir: &Path) -> Result<FlotillaRuntime> {
        let tag = format!("fr{}", std::process::id() % 100_000);
        let state_dir = dir.join("runtime-state");
        let run_dir = PathBuf::from(format!("/run/flotilla-bench/{tag}"));
        let mut cfg = RuntimeConfig::new(state_dir.clone(), run_dir.clone(), shim_exe.into());
        cfg.cgroup_parent = format!("flotilla-bench-{tag}");
        let cgroup_parent = cfg.cgroup_parent.clone();
        let rt = Runtime::new(cfg).context("opening flotilla's runtime")?;
        Ok(FlotillaRuntime {
            rt,
            rootfs: rootfs.to_path_buf(),
            cgroup_parent,
            state_dir,
            run_dir,
        })
    }

    fn spec(&self, id: &str, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            hostname: id.into(),
            layers: vec![self.rootfs.clone()],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            ..ContainerSpec::default()
        }
    }

    /// One create → start → exit → remove of `/bin/true`, in ms.
    pub fn run_true(&self, n: usize) -> Result<f64> {
        let id = format!("true-{n}");
        let t = Instant::now();
        self.rt
            .create(&self.spec(&id, &["/bin/true"]))
            .with_context(|| format!("creating container {id}"))?;
        let info = self
            .rt
            .wait(&id, Some(Duration::from_secs(60)))
            .with_context(|| format!("waiting for container {id}"))?;
        self.rt
            .remove(&id)
            .with_context(|| format!("removing container {id}"))?;
        let elapsed = ms(t.elapsed());
        if info.exit_code != Some(0) {
            bail!(
                "/bin/true in container {id} exited with {:?}",
                info.exit_code
            );
        }
        Ok(elapsed)
    }

    /// The seccomp filter flotilla gives a container by default (Docker's
    /// profile, as `linux.seccomp` of the OCI config it writes), read from
    /// the bundle of a probe container, so a runc peer can run with the
    /// same filter.
    pub fn seccomp_json(&self) -> Result<serde_json::Value> {
        let id = "seccomp-probe";
        self.rt
            .create(&self.spec(id, &["/bin/sleep", "3600"]))
            .with_context(|| format!("creating container {id}"))?;
        let path = self.state_dir.join(id).join("bundle").join("config.json");
        let read = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|t| {
                serde_json::from_str::<serde_json::Value>(&t)
                    .with_context(|| format!("parsing {}", path.display()))
            });
        let _ = self.rt.stop(id, libc::SIGKILL, Duration::from_secs(5));
        let _ = self.rt.remove(id);
        let seccomp = read?["linux"]["seccomp"].clone();
        if seccomp.is_null() {
            bail!("{} has no linux.seccomp", path.display());
        }
        Ok(seccomp)
    }

    /// Starts `n` sleeping containers and returns each one's shim memory.
    pub fn shim_memory(&self, n: usize) -> Result<Vec<Mem>> {
        let mut ids = Vec::new();
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for i in 0..n {
                let id = format!("sleep-{i}");
                let info = self
                    .rt
                    .create(&self.spec(&id, &["/bin/sleep", "3600"]))
                    .with_context(|| format!("creating container {id}"))?;
                ids.push(id.clone());
                if info.state != ContainerState::Running {
                    bail!("container {id} is {:?}, not running", info.state);
                }
            }
            // Let the shims settle (first log writes, lazy page faults).
            std::thread::sleep(Duration::from_millis(500));
            for id in &ids {
                let info = self.rt.inspect(id)?;
                let pid = info
                    .shim_pid
                    .with_context(|| format!("container {id} reports no shim pid"))?;
                out.push(mem_of(pid as u32)?);
            }
            Ok(())
        })();
        for id in &ids {
            let _ = self.rt.stop(id, libc::SIGKILL, Duration::from_secs(5));
            let _ = self.rt.remove(id);
        }
        result.map(|_| out)
    }
}

impl Drop for FlotillaRuntime {
    fn drop(&mut self) {
        if let Ok(list) = self.rt.list() {
            for c in list {
                let _ = self.rt.stop(&c.id, libc::SIGKILL, Duration::from_secs(5));
                let _ = self.rt.remove(&c.id);
            }
        }
        let state = self.state_dir.display().to_string();
        let run_dir = self.run_dir.display().to_string();
        crate::flotilla::kill_and_remove_cgroups(&self.cgroup_parent);
        crate::flotilla::unmount_under(&state);
        crate::flotilla::unmount_under(&run_dir);
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A runc bundle on the same rootfs (read-only root, no terminal).
pub struct RuncBundle {
    pub runc: PathBuf,
    pub bundle: PathBuf,
    pub root: PathBuf,
}

impl RuncBundle {
    pub fn new(runc: &Path, rootfs: &Path, dir: &Path) -> Result<RuncBundle> {
        Self::with_seccomp(runc, rootfs, dir, None)
    }

    /// As [`RuncBundle::new`], with `seccomp` as the config's
    /// `linux.seccomp` when given (runc spec's default config has none).
    pub fn with_seccomp(
        runc: &Path,
        rootfs: &Path,
        dir: &Path,
        seccomp: Option<serde_json::Value>,
    ) -> Result<RuncBundle> {
        let name = if seccomp.is_some() {
            "runc-bundle-seccomp"
        } else {
            "runc-bundle"
        };
        let bundle = dir.join(name);
        std::fs::create_dir_all(&bundle).context("creating the runc bundle dir")?;
        run(Command::new(runc).arg("spec").current_dir(&bundle))?;
        let cfg_path = bundle.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).context("reading runc's config.json")?;
        let mut cfg: serde_json::Value =
            serde_json::from_str(&text).context("parsing runc's config.json")?;
        cfg["process"]["terminal"] = false.into();
        cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
        cfg["root"]["path"] = rootfs.display().to_string().into();
        cfg["root"]["readonly"] = true.into();
        if let Some(sc) = seccomp {
            cfg["linux"]["seccomp"] = sc;
        }
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)
            .context("writing runc's config.json")?;
        let root = dir.join(format!("{name}-state"));
        Ok(RuncBundle {
            runc: runc.into(),
            bundle,
            root,
        })
    }

    /// `runc run` (create, start, wait, delete) of `/bin/true`, in ms.
    pub fn run_true(&self, n: usize) -> Result<f64> {
        let id = format!("flotilla-bench-runc-{}-{n}", std::process::id());
        crate::util::timed(
            Command::new(&self.runc)
                .arg("--root")
                .arg(&self.root)
                .arg("run")
                .arg("--bundle")
                .arg(&self.bundle)
                .arg(id),
        )
    }
}
