//! The control socket: `lbctl` asks, the agent answers, one JSON line each way.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context, Result};
use lb_api::{Request, Response};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::director::Director;

/// The control socket, bound (replacing a stale one); the file goes when this does.
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    pub fn bind(path: PathBuf) -> Result<Self> {
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
        log::info!("control socket at {}", path.display());
        Ok(Self { path, listener })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Answers on `socket` until the process ends.
pub async fn serve(socket: Arc<ControlSocket>, director: Arc<Mutex<Director>>) -> Result<()> {
    let listener = &socket.listener;
    loop {
        let (stream, _) = listener.accept().await.context("accepting on the control socket")?;
        let director = director.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, &director).await {
                log::warn!("control socket: {err:#}");
            }
        });
    }
}

async fn answer(stream: UnixStream, director: &Mutex<Director>) -> Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    BufReader::new(reader).read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, director),
        Err(err) => Response::Error { message: format!("not a request: {err}") },
    };
    writer.write_all(&lb_api::encode(&response)?).await?;
    Ok(())
}

fn handle(request: Request, director: &Mutex<Director>) -> Response {
    let director = director.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match request {
        Request::List => match director.status() {
            Ok(services) => Response::Services { services },
            Err(err) => Response::Error { message: format!("{err:#}") },
        },
        Request::Connections => match director.connections() {
            Ok(connections) => Response::Connections { connections },
            Err(err) => Response::Error { message: format!("{err:#}") },
        },
    }
}
