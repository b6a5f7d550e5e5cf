//! `LAYOUT` versions the maps by hand, and an agent adopts only pins of its own version
//! (the pinned maps' kinds and sizes are checked too, but not what their bytes mean).
//! This test fails whenever a file that defines the maps changes, until the change is
//! weighed: if a key, a value, a flag's or a state's number, or a map changed, raise
//! `LAYOUT`; either way, record the new fingerprint below. Comments and blank lines
//! do not count.

use lb_common::LAYOUT;

/// The files that say what the pinned maps hold, from this crate's folder.
const SOURCES: [&str; 12] = [
    "src/lib.rs",
    "src/conn.rs",
    "src/conn/table.rs",
    "src/fragment.rs",
    "src/interface.rs",
    "src/locality.rs",
    "src/persist.rs",
    "src/real.rs",
    "src/service.rs",
    "src/state.rs",
    "src/stats.rs",
    "../lb-ebpf/src/maps.rs",
];

/// `LAYOUT` and the fingerprint of `SOURCES` it was weighed for.
const RECORDED: (u32, u64) = (7, 0x33c46a7e474042a2);

/// FNV-1a over each file's code lines, trimmed.
fn fingerprint() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for source in SOURCES {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        let code = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("//"));
        for byte in code.flat_map(|line| line.bytes().chain([b'\n'])) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[test]
fn a_change_to_the_maps_files_is_weighed_against_the_layout_version() {
    let now = (LAYOUT, fingerprint());
    assert_eq!(
        now,
        RECORDED,
        "the files that define the pinned maps changed. If what a map holds changed (a key, a value, a flag's or \
         a state's number, a map added or resized), raise lb_common::LAYOUT, so that no agent adopts maps it would \
         misread; then record `const RECORDED: (u32, u64) = ({}, {:#x});` in {}",
        now.0,
        now.1,
        file!()
    );
}
