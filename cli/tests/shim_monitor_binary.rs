//! The lean shim monitor as built: it must start (a broken static link
//! crashes before `main`) and, on glibc targets where `cli/build.rs` links
//! it statically, need no dynamic loader.

use std::process::Command;

const EXE: &str = env!("CARGO_BIN_EXE_flotilla-shim-monitor");

#[test]
fn monitor_starts_and_explains_its_usage() {
    let out = Command::new(EXE).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("usage: flotilla-shim-monitor"), "{stderr}");
}

/// The ELF program header types of a 64-bit little-endian executable.
fn program_headers(elf: &[u8]) -> Vec<u32> {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| {
            let o = phoff + i * phentsize;
            u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]])
        })
        .collect()
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
fn monitor_is_a_static_pie() {
    const PT_DYNAMIC: u32 = 2;
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(EXE).unwrap();
    let types = program_headers(&elf);
    assert!(
        !types.contains(&PT_INTERP),
        "{EXE} asks for a dynamic loader: cli/build.rs did not link it statically (see its warnings)"
    );
    // A static PIE still has a dynamic section, for its own relocations.
    assert!(
        types.contains(&PT_DYNAMIC),
        "{EXE} is not position-independent"
    );
}
