//! Builds the eBPF object (`lb-ebpf`, with the nightly toolchain, for the bpfel target)
//! so the agent can embed it.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    println!("cargo:rerun-if-changed={root}/lb-common/src");
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
