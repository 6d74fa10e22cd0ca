//! Stack benchmarks: `up -d` until every service runs, then `down`, for
//! generated Compose files (a dependency chain, a fan-out, a flat stack),
//! and `ps` / `config` on a 100-service stack, through flotilla and through
//! Docker Compose v2 and v1 on the same private Docker Engine.
//!
//! What it must never do: let a failed tool count as a fast one (a run
//! whose `up` fails, or after which not every service runs, is an error
//! for that tool, recorded as skipped).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Result};

use crate::docker::Engine;
use crate::flotilla::Daemon;
use crate::util::{run, timed};

pub const IMAGE: &str = "flotilla-bench-busybox:latest";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// s0 ← s1 ← … ← s(n-1): each service depends on the previous one.
    Chain,
    /// s1 … s(n-1) all depend on s0.
    FanOut,
    /// n independent services.
    Flat,
    /// db (health check) ← api (service_healthy, health check) ← web: the
    /// 3-tier stack with health-gated dependencies (`n` is ignored).
    ThreeTier,
}

/// The health check of the 3-tier stack: the same short interval for every
/// tool, so `up` measures the orchestration, not a long probe period.
const HEALTHCHECK: &str = "    healthcheck:\n      test: [\"CMD\", \"/bin/true\"]\n      interval: 200ms\n      timeout: 2s\n      retries: 50\n";

/// A Compose file with `n` services of `shape`; `network_none` puts every
/// service on `network_mode: none` (what the Docker peers need here, with
/// the engine started without a bridge).
pub fn compose_file(shape: Shape, n: usize, network_none: bool) -> String {
    if shape == Shape::ThreeTier {
        return three_tier(network_none);
    }
    let mut y = String::from("services:\n");
    for i in 0..n {
        y.push_str(&format!("  s{i}:\n    image: {IMAGE}\n"));
        // pid 1 ignores SIGTERM unless it traps it: trap it so `down`
        // measures stopping, not a 10 s grace period.
        y.push_str(
            "    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n",
        );
        if network_none {
            y.push_str("    network_mode: none\n");
        }
        let dep = match shape {
            Shape::Chain if i > 0 => Some(i - 1),
            Shape::FanOut if i > 0 => Some(0),
            _ => None,
        };
        if let Some(d) = dep {
            y.push_str(&format!(
                "    depends_on:\n      s{d}:\n        condition: service_started\n"
            ));
        }
    }
    y
}

fn three_tier(network_none: bool) -> String {
    let mut y = String::from("services:\n");
    for (name, dep, check) in [
        ("db", None, true),
        ("api", Some(("db", "service_healthy")), true),
        ("web", Some(("api", "service_healthy")), false),
    ] {
        y.push_str(&format!("  {name}:\n    image: {IMAGE}\n"));
        y.push_str(
            "    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; sleep 3600 & wait\"]\n",
        );
        if network_none {
            y.push_str("    network_mode: none\n");
        }
        if check {
            y.push_str(HEALTHCHECK);
        }
        if let Some((d, cond)) = dep {
            y.push_str(&format!(
                "    depends_on:\n      {d}:\n        condition: {cond}\n"
            ));
        }
    }
    y
}

/// A tool that runs Compose files.
#[derive(Clone, Copy)]
pub enum Tool<'a> {
    Flotilla(&'a Daemon),
    Compose { exe: &'a Path, engine: &'a Engine },
}

impl Tool<'_> {
    pub fn cmd(&self, file: &Path, project: &str, args: &[&str]) -> Command {
        let mut c = match self {
            Tool::Flotilla(d) => d.cmd(),
            Tool::Compose { exe, engine } => {
                let mut c = Command::new(exe);
                c.env("DOCKER_HOST", engine.host())
                    .env_remove("COMPOSE_FILE")
                    .env_remove("COMPOSE_PROJECT_NAME")
                    .stdin(std::process::Stdio::null());
                c
            }
        };
        c.arg("-f").arg(file).arg("-p").arg(project).args(args);
        c
    }

    /// How many of the project's containers run.
    pub fn running(&self, file: &Path, project: &str) -> Result<usize> {
        Ok(self.running_healthy(file, project)?.0)
    }

    /// How many of the project's containers run, and how many of those are
    /// ready: healthy, or running without a health check.
    pub fn running_healthy(&self, file: &Path, project: &str) -> Result<(usize, usize)> {
        match self {
            Tool::Flotilla(_) => {
                let out = run(&mut self.cmd(file, project, &["ps", "--format", "json"]))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let running: Vec<serde_json::Value> = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .filter(|v| v["State"] == "running")
                    .collect();
                let ready = running
                    .iter()
                    .filter(|v| matches!(v["Health"].as_str(), None | Some("") | Some("healthy")))
                    .count();
                Ok((running.len(), ready))
            }
            Tool::Compose { engine, .. } => {
                let out = run(engine.cmd().args([
                    "ps",
                    "--format",
                    "{{.Status}}",
                    "--filter",
                    &format!("label=com.docker.compose.project={project}"),
                    "--filter",
                    "status=running",
                ]))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                // Docker's status reads "Up 2 seconds (healthy)", "(health:
                // starting)" or "(unhealthy)"; no parenthesis: no check.
                let ready = lines
                    .iter()
                    .filter(|l| !l.contains("(health: starting)") && !l.contains("(unhealthy)"))
                    .count();
                Ok((lines.len(), ready))
            }
        }
    }

    /// Times `up -d` until every service runs and is healthy (polled after
    /// `up -d` returns); returns ms.
    pub fn up_healthy(&self, file: &Path, project: &str, n: usize) -> Result<f64> {
        let t = std::time::Instant::now();
        run(&mut self.cmd(file, project, &["up", "-d"]))?;
        let deadline = t + std::time::Duration::from_secs(120);
        loop {
            let (running, ready) = self.running_healthy(file, project)?;
            if running == n && ready == n {
                return Ok(crate::util::ms(t.elapsed()));
            }
            if std::time::Instant::now() > deadline {
                bail!("after `up -d` of project {project}, {running} of {n} services run, {ready} ready, after 120 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Times `up -d` and checks every service runs; returns ms.
    pub fn up(&self, file: &Path, project: &str, n: usize) -> Result<f64> {
        let t = timed(&mut self.cmd(file, project, &["up", "-d"]))?;
        let running = self.running(file, project)?;
        if running != n {
            bail!("after `up -d` of project {project}, {running} of {n} services run");
        }
        Ok(t)
    }

    /// Times `down`.
    pub fn down(&self, file: &Path, project: &str) -> Result<f64> {
        timed(&mut self.cmd(file, project, &["down"]))
    }

    /// `down` ignoring errors (cleanup after a failure).
    pub fn cleanup(&self, file: &Path, project: &str) {
        let _ = self.cmd(file, project, &["down"]).output();
    }
}

/// Writes a compose file for a shape into `dir`, returning its path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    let p = d.join("compose.yaml");
    std::fs::write(&p, contents)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_have_the_asked_shape() {
        let chain = compose_file(Shape::Chain, 3, false);
        assert_eq!(chain.matches("image:").count(), 3);
        assert!(chain.contains("  s2:\n") && chain.contains("      s1:\n"));
        assert!(!chain.contains("network_mode"));
        let fan = compose_file(Shape::FanOut, 4, true);
        assert_eq!(fan.matches("      s0:\n").count(), 3);
        assert_eq!(fan.matches("network_mode: none").count(), 4);
        let flat = compose_file(Shape::Flat, 5, false);
        assert!(!flat.contains("depends_on"));
        let tiers = compose_file(Shape::ThreeTier, 0, true);
        assert_eq!(tiers.matches("image:").count(), 3);
        assert_eq!(tiers.matches("healthcheck:").count(), 2);
        assert_eq!(tiers.matches("condition: service_healthy").count(), 2);
        assert!(tiers.contains("  web:\n") && tiers.contains("      api:\n"));
    }
}
