//! Builds the eBPF objects (every binary of `lb-ebpf`, with the nightly toolchain, for
//! the BPF target) so the agent can embed them, and notes the commit it is built from.
//!
//! This is what aya-build 0.2.0's `build_ebpf` does, with one difference: the inner
//! cargo's output is kept, not echoed. aya-build prints every line of it as a
//! `cargo:warning`, so each build of the agent showed the eBPF build's progress as
//! warnings. Here a successful build prints nothing (its output is in
//! `$OUT_DIR/ebpf-build.log`), and a failed one prints all of it, as the compiler wrote
//! it, under cargo's `--- stderr`. Warnings of the eBPF crate itself are `cargo xtask
//! lint`'s to report (clippy with `-D warnings`).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};
use cargo_metadata::{Artifact, Message};

/// The eBPF crate, built with this toolchain (`rustup run`).
const EBPF_PACKAGE: &str = "lb-ebpf";
const TOOLCHAIN: &str = "nightly";

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let workspace = manifest_dir.parent().context("lb-agent/ is in the workspace")?;
    build_ebpf(&workspace.join(EBPF_PACKAGE), &workspace.join("lb-common/src"), &out_dir)?;
    println!("cargo:rustc-env=LB_GIT_COMMIT={}", git_commit(workspace));
    Ok(())
}

/// Builds every binary of the eBPF crate at `root` and copies each object to
/// `out_dir/<name>`, where `include_bytes_aligned!` finds it.
fn build_ebpf(root: &Path, common: &Path, out_dir: &Path) -> Result<()> {
    // Cargo knows the eBPF crate only as a workspace member it does not build for the
    // host: changes to its sources (and to the contract it shares) must bring us back.
    println!("cargo:rerun-if-changed={}", root.display());
    println!("cargo:rerun-if-changed={}", common.display());
    let target = bpf_target()?;
    // Apart from the agent's own target directory: cargo would wait for its own lock.
    let target_dir = out_dir.join("ebpf-target");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", TOOLCHAIN, "cargo", "build", "--package", EBPF_PACKAGE, "--bins", "--release"])
        .args(["--target", &target, "-Z", "build-std=core"])
        // Artifacts as JSON on stdout; the compiler's messages rendered on stderr.
        .arg("--message-format=json-render-diagnostics")
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags()?)
        // The toolchain's own rustc, not the one cargo runs us with.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let output = cargo.output().with_context(|| format!("running {cargo:?} (is rustup installed?)"))?;
    let log = String::from_utf8_lossy(&output.stderr);
    fs::write(out_dir.join("ebpf-build.log"), log.as_bytes())?;
    if !output.status.success() {
        // Cargo shows a failed build script's stderr in full: the compiler's messages
        // as it wrote them, without a backtrace of this script after them.
        eprintln!("{log}\nbuilding the eBPF objects failed ({}): {cargo:?}", output.status);
        std::process::exit(1);
    }
    let mut objects = 0;
    for message in Message::parse_stream(output.stdout.as_slice()) {
        if let Message::CompilerArtifact(Artifact { executable: Some(object), target, .. }) = message? {
            let to = out_dir.join(&target.name);
            fs::copy(&object, &to).with_context(|| format!("copying {object} to {}", to.display()))?;
            objects += 1;
        }
    }
    if objects == 0 {
        bail!("building the eBPF objects produced none: {cargo:?}\n{log}");
    }
    Ok(())
}

/// `bpfel-unknown-none` or `bpfeb-unknown-none`, by the host target's byte order.
fn bpf_target() -> Result<String> {
    match env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "little" => Ok("bpfel-unknown-none".into()),
        "big" => Ok("bpfeb-unknown-none".into()),
        endian => Err(anyhow!("unsupported byte order {endian}")),
    }
}

/// aya-build's flags: the host's architecture as `bpf_target_arch` (aya-ebpf reads
/// it), BTF and debug information in the objects. Separated by 0x1f, as cargo wants.
fn rustflags() -> Result<OsString> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH")?;
    let arch = if arch.starts_with("riscv64") { "riscv64" } else { &arch };
    Ok([format!("--cfg=bpf_target_arch=\"{arch}\""), "-Cdebuginfo=2".into(), "-Clink-arg=--btf".into()]
        .join("\x1f")
        .into())
}

/// The commit checked out in `workspace` (uncommitted changes are not noted), or
/// `unknown` outside a git checkout. The build script runs again when HEAD moves.
fn git_commit(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        let output = Command::new("git").args(args).current_dir(workspace).output().ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else { return "unknown".into() };
    // HEAD itself moves on a checkout; the branch it names, on a commit (in its own
    // file, or in packed-refs once git packed it).
    let branch = git(&["symbolic-ref", "--quiet", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        if let Some(path) = git(&["rev-parse", "--path-format=absolute", "--git-path", name])
            && Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    commit
}
