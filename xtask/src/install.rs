//! `cargo xtask install`: the files a director (and a real server: lb-realserver,
//! lb-decap) needs, where systemd and operators look for them. An existing
//! configuration is never overwritten.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result};

pub fn install(root: &Path, bin_dir: &Path, deploy: &Path) -> Result<()> {
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    copy(&bin_dir.join("lb-agent"), &at("/usr/local/sbin/lb-agent"), 0o755)?;
    copy(&bin_dir.join("lbctl"), &at("/usr/local/sbin/lbctl"), 0o755)?;
    copy(&bin_dir.join("lb-decap"), &at("/usr/local/sbin/lb-decap"), 0o755)?;
    copy(&deploy.join("realserver.sh"), &at("/usr/local/sbin/lb-realserver"), 0o755)?;
    copy(&deploy.join("lb-agent.service"), &at("/etc/systemd/system/lb-agent.service"), 0o644)?;
    copy(&deploy.join("../README.md"), &at("/usr/local/share/doc/lb/README.md"), 0o644)?;
    copy(&deploy.join("lb.yaml"), &at("/usr/local/share/doc/lb/lb.yaml.example"), 0o644)?;
    let config = at("/etc/lb/lb.yaml");
    if config.exists() {
        println!("kept {} (the example is in /usr/local/share/doc/lb/lb.yaml.example)", config.display());
    } else {
        copy(&deploy.join("lb.yaml"), &config, 0o644)?;
        println!("installed an example {}: edit it before starting lb-agent", config.display());
    }
    println!("then: systemctl daemon-reload && systemctl enable --now lb-agent");
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    println!("installed {}", to.display());
    Ok(())
}
