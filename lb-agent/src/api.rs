//! The control socket: `lbctl` asks, the agent answers, one JSON line each way.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use lb_api::{Request, Response};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{control::Control, director::View, group::Group};

/// Who asks: root, or a member of the socket's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    Root,
    Group,
}

/// The control socket, bound (replacing a stale one); the file goes when this does.
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
    /// The group whose members (and root) may use it.
    group: Group,
}

impl ControlSocket {
    /// Binds `path`, mode 0660, of the group named `group`: only root and the group's
    /// members can connect.
    pub fn bind(path: PathBuf, group: &str) -> Result<Self> {
        let group = Group::named(group)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("removing the stale socket {}", path.display()));
            }
            _ => {}
        }
        let listener = UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
        std::os::unix::fs::chown(&path, None, Some(group.gid))
            .with_context(|| format!("giving {} to the group {}", path.display(), group.name))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        log::info!("control socket at {} (root and the group {})", path.display(), group.name);
        Ok(Self { path, listener, group })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers on `socket` until the process ends.
pub async fn serve(socket: Arc<ControlSocket>, control: Arc<Control>) -> Result<()> {
    let listener = &socket.listener;
    loop {
        let (stream, _) = listener.accept().await.context("accepting on the control socket")?;
        // Someone who reached the socket despite its mode (a changed mode, a
        // capability): asks nothing, not even a list.
        let peer = match stream.peer_cred() {
            Ok(peer) if peer.uid() == 0 => Peer::Root,
            Ok(peer) if socket.group.has(peer.uid(), peer.gid()) => Peer::Group,
            peer => {
                log::warn!("control socket: refused {peer:?}, neither root nor of the group {}", socket.group.name);
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &control, peer).await {
                log::warn!("control socket: {err:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, control: &Control, peer: Peer) -> Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            handle(request, control, peer).await.unwrap_or_else(|err| Response::Error { message: format!("{err:#}") })
        }
        Err(err) => Response::Error { message: format!("not a request: {err}") },
    };
    writer.write_all(&lb_api::encode(&response)?).await?;
    Ok(())
}

async fn handle(request: Request, control: &Control, peer: Peer) -> Result<Response> {
    Ok(match request {
        Request::List | Request::Configured => {
            let director = control.director();
            let table_size = director.running_config().map_or(lb_common::CONN_TABLE_SIZE, |c| c.connection_table_size);
            let view = if request == Request::List { View::Serving } else { View::Configured };
            Response::Services { services: director.status(view)?, table_size }
        }
        Request::Connections => Response::Connections { connections: control.director().connections()? },
        Request::Config => {
            let config = control.director().running_config().cloned().context("no configuration is running yet")?;
            Response::Config { yaml: serde_yaml::to_string(&config)? }
        }
        Request::Timeouts => {
            let timeouts = control.director().timeouts();
            Response::Timeouts { tcp: timeouts.tcp, tcp_fin: timeouts.tcp_fin, udp: timeouts.udp }
        }
        Request::Change { changes } => Response::Done { message: control.change(&changes, peer).await? },
        Request::Zero { service } => Response::Done { message: control.director().zero(service.as_ref())? },
    })
}
