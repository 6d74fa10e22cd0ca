//! Volumes on real containers (needs root): named volumes of the local
//! driver (created on first use, filled from the image, kept until removed),
//! anonymous volumes, bind mounts with their options, tmpfs.
//!
//! Build the shim first when running only this target:
//! `cargo build -p flotilla-runtime --example shim`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use flotilla_runtime::container::{ContainerError, ContainerSpec, Mount, MountKind};
use flotilla_runtime::logs::LogStream;
use flotilla_runtime::volume::{self, VolumeStore};

mod common;
use common::*;

fn run_ok(env: &TestEnv, spec: &ContainerSpec) -> Vec<String> {
    let (info, entries) = run_to_exit(env, spec);
    let out = lines(&entries, LogStream::Stdout);
    assert_eq!(
        info.exit_code,
        Some(0),
        "{out:?} {:?}",
        lines(&entries, LogStream::Stderr)
    );
    out
}

fn volume_mount(v: &volume::Volume, target: &str, copy_up: bool) -> Mount {
    Mount {
        kind: MountKind::Volume {
            source: v.path.clone(),
            copy_up,
        },
        target: target.into(),
        read_only: false,
    }
}

/// An image layer with content at /data, owned by uid 1000.
fn seed_layer(env: &TestEnv) {
    let data = env.layer.join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("seed.txt"), "from the image\n").unwrap();
    std::os::unix::fs::symlink("seed.txt", data.join("link")).unwrap();
    std::fs::write(data.join("sub/deep"), "deep\n").unwrap();
    for p in [data.clone(), data.join("seed.txt"), data.join("sub")] {
        std::os::unix::fs::chown(&p, Some(1000), Some(1000)).unwrap();
    }
    std::os::unix::fs::lchown(data.join("link"), Some(1000), Some(1000)).unwrap();
}

#[test]
fn named_volume_is_filled_from_the_image_and_outlives_containers() {
    let env = TestEnv::new("named");
    seed_layer(&env);
    let store = VolumeStore::open(&env.vol_root).unwrap();
    let name = format!("{}_data", env.prefix);
    let labels = BTreeMap::from([("com.docker.compose.project".to_string(), "t".to_string())]);
    let vol = store.ensure(&name, &labels).unwrap();
    assert_eq!(
        store.ensure(&name, &BTreeMap::new()).unwrap(),
        vol,
        "first use creates, later ones find"
    );

    let mut spec = env.spec(
        "writer",
        &[
            "sh",
            "-c",
            "cat /data/seed.txt; cat /data/link; echo written > /data/new",
        ],
    );
    spec.volumes = vec![volume_mount(&vol, "/data", true)];
    assert_eq!(
        run_ok(&env, &spec),
        ["from the image\n", "from the image\n"]
    );
    // Copied with owners and links kept, and the container's write landed.
    let md = std::fs::metadata(vol.path.join("seed.txt")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    assert_eq!(std::fs::metadata(&vol.path).unwrap().uid(), 1000);
    assert_eq!(
        std::fs::read_link(vol.path.join("link")).unwrap(),
        Path::new("seed.txt")
    );
    assert_eq!(
        std::fs::read_to_string(vol.path.join("sub/deep")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(vol.path.join("new")).unwrap(),
        "written\n"
    );
    env.rt.remove(&spec.id).unwrap();
    assert!(env.rt.volume_users(&vol.path).unwrap().is_empty());

    // A second container sees the data; a non-empty volume is not refilled.
    std::fs::remove_file(vol.path.join("seed.txt")).unwrap();
    let mut spec = env.spec("reader", &["sh", "-c", "cat /data/new; ls /data"]);
    spec.volumes = vec![volume_mount(&vol, "/data", true)];
    let out = run_ok(&env, &spec);
    assert_eq!(out[0], "written\n");
    assert!(!out.contains(&"seed.txt\n".to_string()), "{out:?}");

    let listed = store.list().unwrap();
    assert!(listed.iter().any(|v| v.name == name && v.labels == labels));
    store.remove(&name).unwrap();
    assert!(store.get(&name).unwrap().is_none());
    assert!(!vol.path.exists());
    assert!(matches!(
        store.remove(&name),
        Err(volume::VolumeError::NotFound { .. })
    ));
}

#[test]
fn nocopy_and_anonymous_volumes() {
    let env = TestEnv::new("anon");
    seed_layer(&env);
    let store = VolumeStore::open(&env.vol_root).unwrap();
    let anon = store.create_anonymous(&BTreeMap::new()).unwrap();
    assert!(anon.anonymous && volume::is_anonymous_name(&anon.name));
    let mut spec = env.spec(
        "nocopy",
        &["sh", "-c", "ls -A /data | wc -l; touch /data/x"],
    );
    spec.volumes = vec![volume_mount(&anon, "/data", false)];
    assert_eq!(run_ok(&env, &spec), ["0\n"]);
    assert!(anon.path.join("x").exists());
    store.remove(&anon.name).unwrap();
}

#[test]
fn bind_mounts_honour_read_only_propagation_and_host_path_creation() {
    let env = TestEnv::new("bind");
    let src = env.tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "host\n").unwrap();
    let created = env.tmp.path().join("made/by/runtime");
    let bind = |source: &Path, target: &str, ro: bool, prop: &str, create: bool| Mount {
        kind: MountKind::Bind {
            source: source.to_path_buf(),
            propagation: prop.into(),
            create_host_path: create,
        },
        target: target.into(),
        read_only: ro,
    };
    let mut spec = env.spec(
        "binds",
        &[
            "sh",
            "-c",
            "cat /ro/f; echo x > /ro/f 2>/dev/null || echo ro-refused; echo y > /rw/g && echo rw-ok",
        ],
    );
    spec.volumes = vec![
        bind(&src, "/ro", true, "", false),
        bind(&created, "/rw", false, "rslave", true),
    ];
    let out = run_ok(&env, &spec);
    assert_eq!(out, ["host\n", "ro-refused\n", "rw-ok\n"]);
    assert_eq!(std::fs::read_to_string(src.join("f")).unwrap(), "host\n");
    assert_eq!(std::fs::read_to_string(created.join("g")).unwrap(), "y\n");

    // Without create_host_path a missing source is refused, and nothing is left.
    let mut spec = env.spec("missing", &["true"]);
    spec.volumes = vec![bind(&env.tmp.path().join("nope"), "/x", false, "", false)];
    match env.rt.create(&spec) {
        Err(ContainerError::Prepare { message, .. }) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("expected a prepare error, got {other:?}"),
    }
    assert!(!env.tmp.path().join("nope").exists());
    assert!(matches!(
        env.rt.inspect(&spec.id),
        Err(ContainerError::NotFound { .. })
    ));
    let mut spec = env.spec("badprop", &["true"]);
    spec.volumes = vec![bind(&src, "/x", false, "sideways", false)];
    assert!(env
        .rt
        .create(&spec)
        .unwrap_err()
        .to_string()
        .contains("propagation"));
}

#[test]
fn tmpfs_mounts_have_size_and_mode() {
    let env = TestEnv::new("tmpfs");
    let mut spec = env.spec(
        "t",
        &[
            "sh",
            "-c",
            "stat -c %a /t; grep ' /t ' /proc/self/mountinfo | grep -o 'size=[0-9]*k'; \
                       head -c 2000000 /dev/zero > /t/big 2>/dev/null && echo fits || echo full",
        ],
    );
    spec.volumes = vec![Mount {
        kind: MountKind::Tmpfs {
            size: Some(1 << 20),
            mode: Some(0o700),
        },
        target: "/t".into(),
        read_only: false,
    }];
    assert_eq!(run_ok(&env, &spec), ["700\n", "size=1024k\n", "full\n"]);
}
