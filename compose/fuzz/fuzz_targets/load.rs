//! Fuzz target: any bytes as a Compose file (and, after the first NUL byte,
//! as its `.env`) must end in a loaded project or located errors, never a
//! panic or a hang; `config` output of a loaded project must load again.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use flotilla_compose::{load_for_config, to_compose_json, to_compose_yaml, LoadOptions};
use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static D: OnceLock<PathBuf> = OnceLock::new();
    D.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("flotilla-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let (compose, env) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(compose) = std::str::from_utf8(compose) else {
        return;
    };
    let d = dir();
    std::fs::write(d.join("compose.yaml"), compose).unwrap();
    std::fs::write(d.join(".env"), env).unwrap();
    let mut opts = LoadOptions::new(d);
    opts.env.insert("HOME".into(), "/home/fuzz".into());
    if let Ok(p) = load_for_config(&opts) {
        let _ = to_compose_json(&p);
        let yaml = to_compose_yaml(&p);
        std::fs::write(d.join("compose.yaml"), &yaml).unwrap();
        // Values are already interpolated: a `$` in them is literal now.
        opts.interpolate = false;
        if let Err(e) = load_for_config(&opts) {
            panic!("config output does not load again:\n{yaml}\n{e}");
        }
    }
});
