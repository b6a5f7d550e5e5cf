//! `cargo xtask install`: the files a director (and a real server: lb-realserver,
//! lb-decap) needs, where systemd and operators look for them, and the Prometheus and
//! Grafana files to monitor it with. An existing configuration is never overwritten.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{Context, Result};

/// Where the Prometheus scrape configuration and alert rules go, and the dashboard.
const PROMETHEUS_DIR: &str = "/usr/local/share/lb/prometheus";
const GRAFANA_DIR: &str = "/usr/local/share/lb/grafana";

/// Where a file comes from: the release binaries' directory, or `deploy/`.
enum Source {
    Bin(&'static str),
    Deploy(&'static str),
}

/// What is installed: (from, to, mode). The configuration is not among them: it is
/// installed only where none is.
const FILES: &[(Source, &str, u32)] = &[
    (Source::Bin("lb-agent"), "/usr/local/sbin/lb-agent", 0o755),
    (Source::Bin("lbctl"), "/usr/local/sbin/lbctl", 0o755),
    (Source::Bin("lb-decap"), "/usr/local/sbin/lb-decap", 0o755),
    (Source::Deploy("realserver.sh"), "/usr/local/sbin/lb-realserver", 0o755),
    (Source::Deploy("lb-agent.service"), "/etc/systemd/system/lb-agent.service", 0o644),
    (Source::Deploy("../README.md"), "/usr/local/share/doc/lb/README.md", 0o644),
    (Source::Deploy("lb.yaml"), "/usr/local/share/doc/lb/lb.yaml.example", 0o644),
    (Source::Deploy("prometheus/prometheus.yml"), "/usr/local/share/lb/prometheus/prometheus.yml", 0o644),
    (Source::Deploy("prometheus/lb-alerts.yml"), "/usr/local/share/lb/prometheus/lb-alerts.yml", 0o644),
    (Source::Deploy("prometheus/lb-alerts.test.yml"), "/usr/local/share/lb/prometheus/lb-alerts.test.yml", 0o644),
    (Source::Deploy("grafana/lb-dashboard.json"), "/usr/local/share/lb/grafana/lb-dashboard.json", 0o644),
];

pub fn install(root: &Path, bin_dir: &Path, deploy: &Path) -> Result<()> {
    let at = |path: &str| root.join(path.trim_start_matches('/'));
    for (from, to, mode) in FILES {
        let from = match from {
            Source::Bin(name) => bin_dir.join(name),
            Source::Deploy(path) => deploy.join(path),
        };
        copy(&from, &at(to), *mode)?;
    }
    let config = at("/etc/lb/lb.yaml");
    if config.exists() {
        println!("kept {} (the example is in /usr/local/share/doc/lb/lb.yaml.example)", config.display());
    } else {
        copy(&deploy.join("lb.yaml"), &config, 0o644)?;
        println!("installed an example {}: edit it before starting lb-agent", config.display());
    }
    println!(
        "monitoring: {PROMETHEUS_DIR}/ has a scrape configuration and alert rules (copy them to /etc/prometheus, \
         or add the lb-agent job and lb-alerts.yml to yours); import {GRAFANA_DIR}/lb-dashboard.json into Grafana"
    );
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-xtask-install-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    }

    /// Stand-ins for the release binaries, so the test needs no build (a directory per
    /// test: tests run at once).
    fn binaries(test: &str) -> PathBuf {
        let bin = scratch(&format!("{test}-bin"));
        for name in ["lb-agent", "lbctl", "lb-decap"] {
            fs::write(bin.join(name), format!("#!/bin/sh\n# {name}\n")).expect("a stand-in binary");
        }
        bin
    }

    fn deploy() -> PathBuf {
        crate::root().join("deploy")
    }

    #[test]
    fn places_binaries_unit_configuration_real_server_script_and_monitoring_files() {
        let (root, bin) = (scratch("root"), binaries("root"));
        install(&root, &bin, &deploy()).expect("installing");
        let expected = [
            ("usr/local/sbin/lb-agent", 0o755),
            ("usr/local/sbin/lbctl", 0o755),
            ("usr/local/sbin/lb-decap", 0o755),
            ("usr/local/sbin/lb-realserver", 0o755),
            ("etc/systemd/system/lb-agent.service", 0o644),
            ("etc/lb/lb.yaml", 0o644),
            ("usr/local/share/doc/lb/lb.yaml.example", 0o644),
            ("usr/local/share/doc/lb/README.md", 0o644),
            ("usr/local/share/lb/prometheus/prometheus.yml", 0o644),
            ("usr/local/share/lb/prometheus/lb-alerts.yml", 0o644),
            ("usr/local/share/lb/prometheus/lb-alerts.test.yml", 0o644),
            ("usr/local/share/lb/grafana/lb-dashboard.json", 0o644),
        ];
        for (path, mode) in expected {
            let metadata = fs::metadata(root.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"));
            assert_eq!(metadata.permissions().mode() & 0o777, mode, "{path}");
        }
        assert_eq!(fs::read(root.join("usr/local/sbin/lbctl")).ok(), fs::read(bin.join("lbctl")).ok());
        let alerts = fs::read(root.join("usr/local/share/lb/prometheus/lb-alerts.yml")).ok();
        assert_eq!(alerts, fs::read(deploy().join("prometheus/lb-alerts.yml")).ok());
        // The scrape configuration finds its rules beside it, as in deploy/.
        let scrape = fs::read_to_string(root.join("usr/local/share/lb/prometheus/prometheus.yml")).unwrap_or_default();
        assert!(scrape.contains("  - lb-alerts.yml"), "{scrape}");
        let _ = fs::remove_dir_all(root);
        let _ = fs::remove_dir_all(bin);
    }

    #[test]
    fn keeps_an_existing_configuration() {
        let (root, bin) = (scratch("kept"), binaries("kept"));
        fs::create_dir_all(root.join("etc/lb")).expect("etc/lb");
        fs::write(root.join("etc/lb/lb.yaml"), "# mine\n").expect("a configuration");
        install(&root, &bin, &deploy()).expect("installing");
        assert_eq!(fs::read_to_string(root.join("etc/lb/lb.yaml")).ok().as_deref(), Some("# mine\n"));
        let _ = fs::remove_dir_all(root);
        let _ = fs::remove_dir_all(bin);
    }
}
