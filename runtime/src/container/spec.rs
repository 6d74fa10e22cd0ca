//! Turns a [`ContainerSpec`] into an OCI runtime spec (`config.json`) with
//! Docker's defaults: namespaces, mounts, capabilities, masked and read-only
//! paths, cgroup placement and resource limits.
//!
//! What it must never do: touch the host: it only computes a document.
//! (Seccomp is not applied yet: Docker's default profile is a later step.)

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::user::ResolvedUser;
use super::ContainerSpec;

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set.
const DEFAULT_CAPS: &[&str] = &[
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

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// CFS period Docker uses to express `--cpus`.
const CPU_PERIOD_US: u64 = 100_000;

pub(crate) fn build(
    spec: &ContainerSpec,
    user: &ResolvedUser,
    cgroups_path: &str,
) -> Result<Spec, String> {
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", spec.hostname));
    }
    let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["ro", "nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
    ];
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

    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
    });
    if let Some(limit) = spec.resources.memory_bytes {
        resources["memory"] = json!({"limit": limit});
    }
    if let Some(nano) = spec.resources.nano_cpus {
        let quota = (nano as i128 * CPU_PERIOD_US as i128 / 1_000_000_000) as i64;
        resources["cpu"] = json!({"quota": quota.max(1000), "period": CPU_PERIOD_US});
    }
    if let Some(pids) = spec.resources.pids_limit {
        resources["pids"] = json!({"limit": pids});
    }

    let doc: Value = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": false},
        "hostname": spec.hostname,
        "process": {
            "terminal": false,
            "user": {
                "uid": user.uid,
                "gid": user.gid,
                "additionalGids": user.additional_gids,
            },
            "args": spec.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            "noNewPrivileges": false,
        },
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    });
    serde_json::from_value(doc).map_err(|e| format!("building OCI spec for {}: {e}", spec.id))
}
