//! Network namespaces owned by this process: created with `ip netns add`, removed when
//! dropped, on Ctrl-C, and by the next run if this one was killed.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use anyhow::{Context, Result, bail};

/// Every namespace this process created and has not removed yet, for the Ctrl-C path.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT: AtomicU32 = AtomicU32::new(0);
/// Our namespaces are named `lbt<pid>x<n>-<role>`.
const TAG: &str = "lbt";

pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: String) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        LIVE.lock().unwrap().push(name.clone());
        let netns = Self { name };
        netns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `argv` inside the namespace; fails with its stderr if it fails.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        run(self.command(argv[0]).args(&argv[1..]))
    }

    /// Runs `f` on a thread that has entered the namespace, for calls (such as
    /// attaching XDP by ifindex) that act in the caller's namespace.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let file = File::open(format!("/var/run/netns/{}", self.name))
            .with_context(|| format!("opening namespace {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        bail!("entering namespace {}: {}", self.name, std::io::Error::last_os_error());
                    }
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
        LIVE.lock().unwrap().retain(|name| name != &self.name);
    }
}

/// A prefix for this process's next set of namespaces.
pub fn unique_prefix() -> String {
    format!("{}{}", process_prefix(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// What every prefix of this process starts with.
pub fn process_prefix() -> String {
    format!("{TAG}{}x", std::process::id())
}

/// Removes every namespace this process still has; for signal handlers.
pub fn remove_all() {
    for name in LIVE.lock().unwrap().drain(..) {
        delete(&name);
    }
}

/// Removes namespaces left by runs of ours whose process is gone (killed by a timeout,
/// say), so they do not pile up.
pub fn remove_orphans() {
    for name in names_in("/var/run/netns") {
        if is_orphan(&name) {
            delete(&name);
        }
    }
}

/// Whether `name` (ours or not) carries the prefix of a process of ours that is gone.
pub fn is_orphan(name: &str) -> bool {
    let tagged = name.find(TAG).map(|at| &name[at + TAG.len()..]);
    let pid = tagged.and_then(|rest| rest.split('x').next()).and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| !is_running(pid))
}

/// Whether `pid` is a live process (a zombie, killed but not reaped, is not).
fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may hold spaces.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z")
}

/// The entries of a directory, by name.
pub fn names_in(dir: impl AsRef<std::path::Path>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
}

fn delete(name: &str) {
    // Processes still inside keep a namespace's interfaces alive; end them first.
    if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Runs a command to completion; its stderr becomes the error.
pub fn run(command: &mut Command) -> Result<Output> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(output)
}
