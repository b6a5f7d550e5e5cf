//! Connection synchronisation as the configuration writes it (`sync:`): IPVS's sync
//! daemon (`ipvsadm --start-daemon`), with the key its datagrams are authenticated by.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::validate::Invalid;

/// IPVS's sync group and port (`IP_VS_SYNC_GROUP`, `IP_VS_SYNC_PORT`).
pub const DEFAULT_GROUP: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 81));
pub const DEFAULT_PORT: u16 = 8848;
pub const DEFAULT_KEY_FILE: &str = "/etc/lb/sync.key";
/// The shortest key accepted: 128 bits, as written by `openssl rand -hex 16`.
const MIN_KEY_BYTES: usize = 16;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// What this director's daemon does (ipvsadm's `--start-daemon master|backup`).
    pub role: Role,
    /// The interface the datagrams go out of and are received on (`--mcast-interface`).
    pub interface: String,
    /// Which directors' datagrams belong together (`--syncid`): a backup takes only its
    /// own syncid's, or any with 0, as IPVS.
    #[serde(default)]
    pub syncid: u8,
    /// The multicast group the datagrams go to (`--mcast-group`), unless `peers` names
    /// the directors to send to.
    #[serde(default = "default_group", skip_serializing_if = "is_default_group")]
    pub group: IpAddr,
    #[serde(default = "default_port", skip_serializing_if = "is_default_port")]
    pub port: u16,
    /// Unicast: the other directors' addresses, for segments without multicast.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<IpAddr>,
    /// The shared key, as hex (`openssl rand -hex 32`), in a file only root may read.
    #[serde(default = "default_key_file", skip_serializing_if = "is_default_key_file")]
    pub key_file: PathBuf,
}

/// ipvsadm's sync daemon states; a director may run both (`both`, as IPVS may), or
/// none while the rest of the block waits for `lbctl --start-daemon`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Master,
    Backup,
    Both,
    None,
}

impl Role {
    pub fn announces(self) -> bool {
        matches!(self, Self::Master | Self::Both)
    }

    pub fn listens(self) -> bool {
        matches!(self, Self::Backup | Self::Both)
    }

    /// The role once `state` (master or backup) starts too, as ipvsadm's
    /// `--start-daemon` adds a daemon beside one that runs.
    pub fn with(self, state: Role) -> Role {
        match (self, state) {
            (Self::None, state) => state,
            (current, state) if current == state => current,
            _ => Self::Both,
        }
    }

    /// The role once `state`'s daemon stops (`--stop-daemon`).
    pub fn without(self, state: Role) -> Role {
        match (self, state) {
            (Self::Both, Self::Master) => Self::Backup,
            (Self::Both, Self::Backup) => Self::Master,
            (current, state) if current == state => Self::None,
            (current, _) => current,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Master => "master",
            Self::Backup => "backup",
            Self::Both => "both",
            Self::None => "none",
        })
    }
}

/// The shared key of the sync datagrams.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// Reads the key file: hex (whitespace around it ignored), at least 128 bits, and
    /// not readable by anyone but its owner, since whoever has it can inject
    /// connections.
    pub fn read(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let metadata = fs::metadata(path).map_err(|err| format!("{shown}: {err}"))?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(format!(
                "{shown} may be read by others (mode {:o}): the key must be secret (chmod 600 {shown})",
                metadata.permissions().mode() & 0o777
            ));
        }
        let text = fs::read_to_string(path).map_err(|err| format!("{shown}: {err}"))?;
        let key = decode_hex(text.trim()).ok_or_else(|| {
            format!("{shown} does not hold a key as hex (write one with: openssl rand -hex 32 > {shown})")
        })?;
        if key.len() < MIN_KEY_BYTES {
            return Err(format!("{shown} holds {} bytes; at least {MIN_KEY_BYTES} are needed", key.len()));
        }
        Ok(Self(key))
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

/// The rules beyond syntax; the key file is read, so `lb-agent --check` finds a
/// missing or unsafe one.
pub fn check(sync: &Sync) -> Result<(), Invalid> {
    let invalid = |field: &str, message: String| Invalid { field: format!("sync.{field}"), message };
    if sync.interface.is_empty() || sync.interface.len() > 15 {
        return Err(invalid("interface", format!("`{}` is not an interface name", sync.interface)));
    }
    if sync.peers.is_empty() && !sync.group.is_multicast() {
        return Err(invalid("group", format!("{} is not a multicast group (or list peers: instead)", sync.group)));
    }
    if sync.port == 0 {
        return Err(invalid("port", "0 is not a port".into()));
    }
    if let Some(peer) = sync.peers.iter().find(|peer| peer.is_multicast() || peer.is_unspecified()) {
        return Err(invalid("peers", format!("{peer} is not a director's address")));
    }
    Key::read(&sync.key_file).map(drop).map_err(|message| invalid("key_file", message))
}

fn default_group() -> IpAddr {
    DEFAULT_GROUP
}

fn is_default_group(group: &IpAddr) -> bool {
    *group == DEFAULT_GROUP
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

fn is_default_port(port: &u16) -> bool {
    *port == DEFAULT_PORT
}

pub fn default_key_file() -> PathBuf {
    PathBuf::from(DEFAULT_KEY_FILE)
}

fn is_default_key_file(path: &Path) -> bool {
    path == Path::new(DEFAULT_KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_stop_daemon_combine_roles_as_ipvs_does() {
        assert_eq!(Role::None.with(Role::Master), Role::Master);
        assert_eq!(Role::Backup.with(Role::Master), Role::Both);
        assert_eq!(Role::Master.with(Role::Master), Role::Master);
        assert_eq!(Role::Both.without(Role::Master), Role::Backup);
        assert_eq!(Role::Master.without(Role::Master), Role::None);
        assert_eq!(Role::Master.without(Role::Backup), Role::Master);
    }

    #[test]
    fn a_key_file_must_be_secret_hex_and_long_enough() {
        let dir = std::env::temp_dir().join(format!("lb-sync-key-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let good = write("good", &format!("{}\n", "ab".repeat(32)), 0o600);
        assert_eq!(Key::read(&good).unwrap().0, vec![0xab; 32]);
        let open = write("open", &"ab".repeat(32), 0o644);
        assert!(Key::read(&open).unwrap_err().contains("chmod 600"), "{:?}", Key::read(&open));
        let short = write("short", "abcd", 0o600);
        assert!(Key::read(&short).unwrap_err().contains("at least 16"));
        let text = write("text", "not a key at all", 0o600);
        assert!(Key::read(&text).unwrap_err().contains("openssl rand -hex 32"));
        assert!(Key::read(&dir.join("missing")).unwrap_err().contains("No such file"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
