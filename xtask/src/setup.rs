//! What a fresh Debian machine needs before it can build and test, installed only when
//! missing, with a clear message when it cannot be.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// bpf-linker uses the nightly's own LLVM; 0.10.4 is the release built for LLVM 22.
const BPF_LINKER_VERSION: &str = "0.10.4";
const NIGHTLY_LLVM_MAJOR: &str = "22";
/// The lab and the tests: iproute2 (ip, bridge), ethtool, nginx (real servers), curl
/// and wrk (clients), nftables (counting in the client), tcpdump (debugging),
/// bpftool (inspecting maps), openssl (certificates for https checks), prometheus (its
/// promtool checks deploy/'s scrape configuration and alert rules; on a host where
/// systemd runs, the package also starts a Prometheus server of its own on port 9090),
/// systemd (systemd-analyze verifies the unit), keepalived (VRRP between an
/// active/standby pair of directors in the high-availability lab, `deploy/keepalived/`)
/// and bird2 (BGP from active-active directors to an ECMP router there, `deploy/bird/`).
const PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "nginx-light",
    "curl",
    "wrk",
    "nftables",
    "tcpdump",
    "bpftool",
    "prometheus",
    "openssl",
    "systemd",
    "keepalived",
    "bird2",
];

pub fn ensure() -> Result<()> {
    nightly()?;
    bpf_linker()?;
    packages()
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

fn nightly() -> Result<()> {
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .context("the eBPF crate needs a nightly toolchain: `rustup toolchain install nightly --component rust-src`")?;
    let llvm = version.lines().find_map(|line| line.strip_prefix("LLVM version: ")).unwrap_or("unknown");
    if !llvm.starts_with(&format!("{NIGHTLY_LLVM_MAJOR}.")) {
        bail!(
            "the nightly toolchain uses LLVM {llvm}, but bpf-linker {BPF_LINKER_VERSION} needs LLVM {NIGHTLY_LLVM_MAJOR}; \
             install a nightly built on LLVM {NIGHTLY_LLVM_MAJOR} or pick the bpf-linker release for LLVM {llvm}"
        );
    }
    let components =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    for component in ["rust-src", "clippy"] {
        if !components.lines().any(|line| line.starts_with(component)) {
            eprintln!("setup: adding {component} to the nightly toolchain");
            run(Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]))
                .with_context(|| format!("adding {component} to the nightly toolchain (is the network reachable?)"))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if installed.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute and a half)");
    run(Command::new("cargo").args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"]))
        .context("installing bpf-linker")
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|package| !installed(package)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}; install them as root: apt-get install {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        run(Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive"))
            .with_context(|| format!("apt-get {} (is a Debian mirror reachable?)", args.join(" ")))
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.ends_with(" installed"))
}

fn output(command: &mut Command) -> Result<String> {
    let out = command.stderr(Stdio::null()).output().with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!("{command:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
