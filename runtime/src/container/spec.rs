//! Turns a [`ContainerSpec`] into an OCI runtime spec (`config.json`) with
//! Docker's defaults: namespaces, mounts, capabilities, seccomp, masked and
//! read-only paths, cgroup placement and resource limits, and Docker's
//! rules for `privileged`, `cap_add`/`cap_drop`, `read_only` and friends.
//!
//! The resources section is the same for cgroup v1 and v2: libcgroups turns
//! it into each version's files (shares into weights, and so on).
//!
//! What it must never do: touch the host: it only computes a document from
//! the spec and the facts [`Inputs`] carries (resolved user, devices, kernel).

use std::collections::BTreeSet;
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::seccomp::{self, Host};
use super::user::ResolvedUser;
use super::{ContainerSpec, MountKind, SeccompProfile};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
pub(crate) const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, by number (index = capability number).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub(crate) const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

pub(crate) const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// CFS period Docker uses to express `--cpus`.
const CPU_PERIOD_US: u64 = 100_000;
/// Docker's default /dev/shm size.
const DEFAULT_SHM: u64 = 64 << 20;
/// Where the init binary appears inside the container (Docker: /sbin/docker-init).
pub(crate) const INIT_PATH: &str = "/sbin/flotilla-init";

/// A device node as found on the host, to be created in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResolvedDevice {
    pub container_path: String,
    /// 'c' or 'b'.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub permissions: String,
}

/// What `build` needs to know that only the host can tell.
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    pub user: ResolvedUser,
    pub cgroups_path: String,
    /// The devices the spec asks for, or (privileged) every host device.
    pub devices: Vec<ResolvedDevice>,
    pub host: Host,
    /// Capabilities this host lets us grant (bit N = capability N).
    pub available_caps: u64,
    /// Host path of the init binary, when `spec.init`.
    pub init_binary: Option<PathBuf>,
    /// Docker's per-netns defaults apply only to a netns of the container's own.
    pub own_netns: bool,
    /// Masked paths that exist on this host in addition to [`MASKED_PATHS`]
    /// (Docker masks each CPU's thermal_throttle directory).
    pub extra_masked: Vec<String>,
}

fn normalize_cap(c: &str) -> Result<String, String> {
    let up = c.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(format!("unknown capability: {c:?}"))
    }
}

/// Docker's TweakCapabilities: privileged gets all; "ALL" in cap_add gets
/// all but the dropped ones; "ALL" in cap_drop keeps only the added ones;
/// otherwise default minus dropped plus added.
pub(crate) fn capabilities(spec: &ContainerSpec, available: u64) -> Result<Vec<String>, String> {
    let all: Vec<String> = ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| available & (1u64 << i) != 0)
        .map(|(_, s)| s.to_string())
        .collect();
    if spec.security.privileged {
        return Ok(all);
    }
    let add = spec
        .security
        .cap_add
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let drop = spec
        .security
        .cap_drop
        .iter()
        .map(|c| normalize_cap(c))
        .collect::<Result<Vec<_>, _>>()?;
    let mut caps: Vec<String> = if add.iter().any(|c| c == "ALL") {
        all.into_iter().filter(|c| !drop.contains(c)).collect()
    } else if drop.iter().any(|c| c == "ALL") {
        add
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|s| s.to_string())
            .filter(|c| !drop.contains(c))
            .chain(add)
            .collect()
    };
    let mut seen = BTreeSet::new();
    caps.retain(|c| seen.insert(c.clone()));
    Ok(caps)
}

/// Docker's rlimit names ("nofile") to the OCI ones ("RLIMIT_NOFILE").
fn rlimit_type(name: &str) -> Result<String, String> {
    const KNOWN: &[&str] = &[
        "as",
        "core",
        "cpu",
        "data",
        "fsize",
        "locks",
        "memlock",
        "msgqueue",
        "nice",
        "nofile",
        "nproc",
        "rss",
        "rtprio",
        "rttime",
        "sigpending",
        "stack",
    ];
    let n = name.trim().to_ascii_lowercase();
    if KNOWN.contains(&n.as_str()) {
        Ok(format!("RLIMIT_{}", n.to_ascii_uppercase()))
    } else {
        Err(format!("unknown ulimit {name:?}"))
    }
}

fn propagation(p: &str) -> Result<&'static str, String> {
    Ok(match p {
        "" | "rprivate" => "rprivate",
        "private" => "private",
        "rshared" => "rshared",
        "shared" => "shared",
        "rslave" => "rslave",
        "slave" => "slave",
        other => return Err(format!("unknown mount propagation {other:?}")),
    })
}

/// The `linux.resources` section: the one description both cgroup
/// versions are configured from.
pub(crate) fn resources(spec: &ContainerSpec, device_rules: Vec<Value>) -> Result<Value, String> {
    let r = &spec.resources;
    let mut resources = json!({ "devices": device_rules });

    let mut memory = serde_json::Map::new();
    if let Some(v) = r.memory_bytes {
        memory.insert("limit".into(), json!(v));
    }
    if let Some(v) = r.memory_reservation {
        memory.insert("reservation".into(), json!(v));
    }
    if let Some(v) = r.memory_swap {
        memory.insert("swap".into(), json!(v));
    }
    if !memory.is_empty() {
        resources["memory"] = Value::Object(memory);
    }
    let mut cpu = serde_json::Map::new();
    if let Some(nano) = r.nano_cpus {
        let quota = (nano as i128 * CPU_PERIOD_US as i128 / 1_000_000_000) as i64;
        cpu.insert("quota".into(), json!(quota.max(1000)));
        cpu.insert("period".into(), json!(CPU_PERIOD_US));
    } else {
        if let Some(q) = r.cpu_quota {
            cpu.insert("quota".into(), json!(q));
        }
        if let Some(p) = r.cpu_period {
            cpu.insert("period".into(), json!(p));
        }
    }
    if let Some(s) = r.cpu_shares {
        cpu.insert("shares".into(), json!(s));
    }
    if let Some(c) = &r.cpuset_cpus {
        cpu.insert("cpus".into(), json!(c));
    }
    if let Some(m) = &r.cpuset_mems {
        cpu.insert("mems".into(), json!(m));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if let Some(pids) = r.pids_limit {
        resources["pids"] = json!({"limit": pids});
    }
    if let Some(w) = r.blkio_weight {
        if !(10..=1000).contains(&w) {
            return Err(format!("blkio weight {w} is outside 10..=1000"));
        }
        resources["blockIO"] = json!({"weight": w});
    }

    Ok(resources)
}

pub(crate) fn build(spec: &ContainerSpec, inputs: &Inputs) -> Result<Spec, String> {
    let user = &inputs.user;
    let privileged = spec.security.privileged;
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let caps = capabilities(spec, inputs.available_caps)?;

    let shm = format!(
        "size={}k",
        spec.shm_size.unwrap_or(DEFAULT_SHM).div_ceil(1024)
    );
    let sys_opts: Vec<&str> = if privileged {
        vec!["nosuid", "noexec", "nodev"]
    } else {
        vec!["nosuid", "noexec", "nodev", "ro"]
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_opts}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": [if privileged { "rw" } else { "ro" }, "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", shm]}),
    ];
    // Docker's read_only: every mount it made itself goes read-only too,
    // except the ones a process needs to write (/dev, /proc, ...).
    if spec.read_only {
        for m in &mut mounts {
            let dest = m["destination"].as_str().unwrap_or_default();
            if matches!(
                dest,
                "/proc" | "/dev" | "/dev/pts" | "/dev/shm" | "/dev/mqueue"
            ) {
                continue;
            }
            if let Some(opts) = m["options"].as_array_mut() {
                if !opts.iter().any(|o| o == "ro") {
                    opts.retain(|o| o != "rw");
                    opts.push(json!("ro"));
                }
            }
        }
    }
    for m in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if m.read_only {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": m.target,
            "type": "bind",
            "source": m.source,
            "options": options,
        }));
    }
    for m in &spec.volumes {
        if !m.target.starts_with('/') {
            return Err(format!("mount target {:?} must be absolute", m.target));
        }
        let ro = if m.read_only { "ro" } else { "rw" };
        let doc = match &m.kind {
            MountKind::Bind {
                source,
                propagation: p,
                ..
            } => json!({
                "destination": m.target, "type": "bind", "source": source,
                "options": ["rbind", propagation(p)?, ro],
            }),
            MountKind::Volume { source, .. } => json!({
                "destination": m.target, "type": "bind", "source": source,
                "options": ["rbind", "rprivate", ro],
            }),
            MountKind::Tmpfs { size, mode } => {
                let mut opts = vec![
                    ro.to_string(),
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                    format!("mode={:o}", mode.unwrap_or(0o1777)),
                ];
                if let Some(sz) = size {
                    opts.push(format!("size={sz}"));
                }
                json!({"destination": m.target, "type": "tmpfs", "source": "tmpfs", "options": opts})
            }
        };
        mounts.push(doc);
    }

    let mut args = spec.args.clone();
    if spec.init {
        let Some(bin) = &inputs.init_binary else {
            return Err("init: true needs the init binary, which is missing".into());
        };
        mounts.push(json!({
            "destination": INIT_PATH, "type": "bind", "source": bin,
            "options": ["bind", "rprivate", "ro", "nosuid", "nodev"],
        }));
        args.insert(0, "--".into());
        args.insert(0, INIT_PATH.into());
    }

    let mut net_ns = json!({"type": "network"});
    if let Some(p) = &spec.netns {
        net_ns["path"] = json!(p);
    }
    let namespaces = json!([
        {"type": "pid"},
        {"type": "mount"},
        {"type": "uts"},
        {"type": "ipc"},
        net_ns,
    ]);

    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    if privileged {
        device_rules = vec![json!({"allow": true, "access": "rwm"})];
    }
    let mut devices = Vec::new();
    for d in &inputs.devices {
        devices.push(json!({
            "path": d.container_path, "type": d.kind.to_string(),
            "major": d.major, "minor": d.minor, "fileMode": d.file_mode,
            "uid": d.uid, "gid": d.gid,
        }));
        if !privileged {
            let access = if d.permissions.is_empty() {
                "rwm"
            } else {
                &d.permissions
            };
            device_rules.push(json!({
                "allow": true, "type": d.kind.to_string(),
                "major": d.major, "minor": d.minor, "access": access,
            }));
        }
    }

    let resources = resources(spec, device_rules)?;

    let mut sysctl = serde_json::Map::new();
    if inputs.own_netns && !privileged {
        // Docker's defaults for a container with its own network namespace.
        sysctl.insert("net.ipv4.ip_unprivileged_port_start".into(), json!("0"));
        sysctl.insert("net.ipv4.ping_group_range".into(), json!("0 2147483647"));
    }
    for (k, v) in &spec.sysctls {
        sysctl.insert(k.clone(), json!(v));
    }

    let mut rlimits = Vec::new();
    for u in &spec.ulimits {
        if u.soft > u.hard {
            return Err(format!(
                "ulimit {}: soft limit {} is above hard limit {}",
                u.name, u.soft, u.hard
            ));
        }
        rlimits.push(json!({"type": rlimit_type(&u.name)?, "soft": u.soft, "hard": u.hard}));
    }

    let mut process = json!({
        "terminal": false,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps, "effective": caps, "permitted": caps,
        },
    });
    // libcontainer loads seccomp late (after dropping capabilities) whenever
    // the field is present, even as false; absent it loads it while still
    // privileged, which is what a filter without no_new_privs needs.
    if spec.security.no_new_privileges {
        process["noNewPrivileges"] = json!(true);
    }
    if !rlimits.is_empty() {
        process["rlimits"] = json!(rlimits);
    }
    if let Some(adj) = spec.resources.oom_score_adj {
        process["oomScoreAdj"] = json!(adj);
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": inputs.cgroups_path,
        "resources": resources,
        "devices": devices,
    });
    if !privileged {
        let mut masked: Vec<String> = MASKED_PATHS.iter().map(|s| s.to_string()).collect();
        masked.extend(inputs.extra_masked.iter().cloned());
        linux["maskedPaths"] = json!(masked);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    if !sysctl.is_empty() {
        linux["sysctl"] = Value::Object(sysctl);
    }

    let caps_set: BTreeSet<String> = caps.iter().cloned().collect();
    let seccomp = match (&spec.security.seccomp, privileged) {
        (_, true) | (SeccompProfile::Unconfined, _) => None,
        (SeccompProfile::Default, false) => {
            Some(seccomp::default_profile(&caps_set, &inputs.host)?)
        }
        (SeccompProfile::Custom(text), false) => {
            Some(seccomp::custom_profile(text, &caps_set, &inputs.host)?)
        }
    };
    if let Some(s) = seccomp {
        linux["seccomp"] =
            serde_json::to_value(&s).map_err(|e| format!("encoding seccomp: {e}"))?;
    }

    let mut doc: Value = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": spec.read_only},
        "hostname": spec.hostname,
        "process": process,
        "mounts": mounts,
        "linux": linux,
    });
    if !spec.domainname.is_empty() {
        doc["domainname"] = json!(spec.domainname);
    }
    serde_json::from_value(doc).map_err(|e| format!("building OCI spec for {}: {e}", spec.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::{Mount, Resources, Security};

    fn inputs() -> Inputs {
        Inputs {
            user: ResolvedUser {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
            },
            cgroups_path: "/flotilla/x".into(),
            devices: vec![],
            host: Host::detect(),
            available_caps: (1 << 41) - 1,
            init_binary: None,
            own_netns: true,
            extra_masked: vec![],
        }
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "x".into(),
            args: vec!["true".into()],
            ..Default::default()
        }
    }

    const ALL41: u64 = (1 << 41) - 1;

    #[test]
    fn capabilities_follow_docker() {
        let mut s = spec();
        assert_eq!(capabilities(&s, ALL41).unwrap().len(), DEFAULT_CAPS.len());
        s.security.cap_add = vec!["net_admin".into(), "CAP_SYS_TIME".into()];
        s.security.cap_drop = vec!["MKNOD".into()];
        let c = capabilities(&s, ALL41).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(c.contains(&"CAP_SYS_TIME".to_string()));
        assert!(!c.contains(&"CAP_MKNOD".to_string()));
        s.security.cap_drop = vec!["ALL".into()];
        s.security.cap_add = vec!["CHOWN".into()];
        assert_eq!(capabilities(&s, ALL41).unwrap(), ["CAP_CHOWN"]);
        s.security.cap_add = vec!["ALL".into()];
        s.security.cap_drop = vec!["SYS_ADMIN".into()];
        assert_eq!(capabilities(&s, ALL41).unwrap().len(), 40);
        s.security.cap_add = vec!["BOGUS".into()];
        assert!(capabilities(&s, ALL41).unwrap_err().contains("BOGUS"));
        s.security = Security {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(capabilities(&s, ALL41 & !(1 << 24)).unwrap().len(), 40);
    }

    #[test]
    fn privileged_and_unconfined_drop_seccomp_and_masks() {
        let s = spec();
        let oci = build(&s, &inputs()).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_some());
        assert!(linux.masked_paths().as_ref().unwrap().len() >= MASKED_PATHS.len());
        assert!(oci
            .process()
            .as_ref()
            .unwrap()
            .no_new_privileges()
            .is_none());

        let mut p = spec();
        p.security.privileged = true;
        let oci = build(&p, &inputs()).unwrap();
        let linux = oci.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none());
        assert!(linux.masked_paths().is_none());
        assert!(linux.readonly_paths().is_none());

        let mut u = spec();
        u.security.seccomp = SeccompProfile::Unconfined;
        u.security.no_new_privileges = true;
        let oci = build(&u, &inputs()).unwrap();
        assert!(oci.linux().as_ref().unwrap().seccomp().is_none());
        assert_eq!(
            oci.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
    }

    #[test]
    fn resources_mounts_and_limits_translate() {
        let mut s = spec();
        s.read_only = true;
        s.shm_size = Some(1 << 20);
        s.resources = Resources {
            memory_bytes: Some(64 << 20),
            memory_reservation: Some(32 << 20),
            nano_cpus: Some(1_500_000_000),
            cpu_shares: Some(512),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(20),
            blkio_weight: Some(300),
            ..Default::default()
        };
        s.volumes = vec![Mount {
            kind: MountKind::Tmpfs {
                size: Some(1 << 20),
                mode: Some(0o700),
            },
            target: "/scratch".into(),
            read_only: false,
        }];
        s.ulimits = vec![crate::container::Ulimit {
            name: "nofile".into(),
            soft: 100,
            hard: 200,
        }];
        let oci = build(&s, &inputs()).unwrap();
        assert!(oci.root().as_ref().unwrap().readonly().unwrap());
        let res = oci.linux().as_ref().unwrap().resources().as_ref().unwrap();
        let cpu = res.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        assert_eq!(cpu.shares(), Some(512));
        assert_eq!(cpu.cpus().as_deref(), Some("0"));
        let mem = res.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(64 << 20));
        assert_eq!(mem.reservation(), Some(32 << 20));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 20);
        assert_eq!(res.block_io().as_ref().unwrap().weight(), Some(300));
        let mounts = oci.mounts().as_ref().unwrap();
        let shm = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/dev/shm"))
            .unwrap();
        assert!(shm
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=1024k".into()));
        let sys = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/sys/fs/cgroup"))
            .unwrap();
        assert!(sys.options().as_ref().unwrap().contains(&"ro".into()));
        let t = mounts
            .iter()
            .find(|m| m.destination() == &PathBuf::from("/scratch"))
            .unwrap();
        let o = t.options().as_ref().unwrap();
        assert!(o.contains(&"mode=700".into()) && o.contains(&"size=1048576".into()));
        let rl = oci.process().as_ref().unwrap().rlimits().as_ref().unwrap();
        assert_eq!(rl[0].soft(), 100);

        s.ulimits[0].name = "bogus".into();
        assert!(build(&s, &inputs()).unwrap_err().contains("bogus"));
    }
}
