//! `cargo xtask`: set up the machine, build, lint, test, run the demo and the benchmark.
//! Every command first makes sure the machine has what it needs (`setup`, idempotent).

mod install;
mod setup;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demonstrate the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (nightly rust-src, bpf-linker, Debian packages).
    Setup,
    /// Build the eBPF objects and the release binaries (lb-agent and lb-decap with their
    /// objects embedded, lbctl).
    Build,
    /// rustfmt and clippy, the eBPF crate included.
    Lint,
    /// Every test: lint, unit, data path (BPF_PROG_TEST_RUN) and end to end in the lab. As root.
    Test,
    /// The lab in one command: a client, a director and three real servers, real traffic. As root.
    Demo,
    /// ns per packet of lb_ingress beside a trivial XDP forwarder. As root.
    Bench,
    /// Build, then install the binaries, the systemd unit, the real-server script, an
    /// example configuration (kept if one exists), and the Prometheus and Grafana files
    /// (in /usr/local/share/lb) under --root (default /).
    Install {
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse().command) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    setup::ensure()?;
    match task {
        Task::Setup => Ok(()),
        Task::Build => build(),
        Task::Lint => lint(),
        Task::Test => {
            lint()?;
            build()?;
            test()
        }
        Task::Demo => {
            build()?;
            run_binary("lb-demo")
        }
        Task::Bench => {
            build()?;
            run_binary("lb-bench")
        }
        Task::Install { root } => {
            build()?;
            install::install(&root, &bin_dir(), &self::root().join("deploy"))
        }
    }
}

fn build() -> Result<()> {
    cargo(&["build", "--release", "--bins"])?;
    for binary in ["lb-agent", "lbctl", "lb-decap"] {
        let path = bin_dir().join(binary);
        if !path.exists() {
            bail!("the build did not produce {}", path.display());
        }
    }
    Ok(())
}

/// Every test of the workspace, then one closing line with the sums of cargo's
/// per-binary results (the last binary cargo runs often has no tests of its own).
fn test() -> Result<()> {
    let mut child = Command::new("cargo")
        .args(["test", "--release"])
        .env("LB_BIN_DIR", bin_dir())
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("cargo test's output")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            passed += count_before(result, " passed");
            failed += count_before(result, " failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The number just before `word` in `text` ("ok. 20 passed; 0 failed; ...").
fn count_before(text: &str, word: &str) -> u64 {
    text.split_once(word)
        .and_then(|(before, _)| before.rsplit(' ').next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(0)
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--release", "--all-targets", "--", "-D", "warnings"])?;
    // The eBPF crate builds only for the BPF target, with the nightly's core.
    run_command(
        Command::new("cargo")
            .args(["+nightly", "clippy", "--package", "lb-ebpf", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core", "--", "-D", "warnings"])
            .current_dir(root()),
    )
}

fn run_binary(name: &str) -> Result<()> {
    require_root(name)?;
    run_command(Command::new(bin_dir().join(name)).env("LB_BIN_DIR", bin_dir()).current_dir(root()))
}

fn cargo(args: &[&str]) -> Result<()> {
    run_command(Command::new("cargo").args(args).env("LB_BIN_DIR", bin_dir()).current_dir(root()))
}

fn run_command(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

fn require_root(what: &str) -> Result<()> {
    if !setup::is_root() {
        bail!("{what} creates network namespaces and loads XDP programs: run it as root");
    }
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ is in the workspace").to_owned()
}

fn bin_dir() -> PathBuf {
    root().join("target/release")
}
