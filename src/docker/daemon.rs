//! dockerd's Engine API over its unix socket: the facts the planner needs (swarm, live-restore,
//! running containers). Behind [`DockerDaemon`] so the planner and executor can be tested.

#![allow(async_fn_in_trait)]

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the daemon reports about itself (`GET /info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonInfo {
    pub swarm_active: bool,
    pub live_restore: bool,
    pub containers_running: u64,
}

pub trait DockerDaemon {
    async fn info(&self) -> Result<DaemonInfo>;
}

/// The local daemon at `/run/docker.sock`.
pub struct UnixDocker {
    pub socket: PathBuf,
}

impl Default for UnixDocker {
    fn default() -> Self {
        UnixDocker {
            socket: PathBuf::from("/run/docker.sock"),
        }
    }
}

/// Splits an HTTP/1.x response into (status code, body).
pub fn parse_http(resp: &[u8]) -> Result<(u16, &[u8])> {
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = std::str::from_utf8(&resp[..head_end]).context("HTTP headers are not UTF-8")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status code")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("unexpected chunked response");
    }
    Ok((status, &resp[head_end + 4..]))
}

pub fn parse_info(body: &[u8]) -> Result<DaemonInfo> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("GET /info did not return JSON")?;
    Ok(DaemonInfo {
        swarm_active: v["Swarm"]["LocalNodeState"]
            .as_str()
            .is_some_and(|s| s != "inactive" && !s.is_empty()),
        live_restore: v["LiveRestoreEnabled"].as_bool().unwrap_or(false),
        containers_running: v["ContainersRunning"].as_u64().unwrap_or(0),
    })
}

impl DockerDaemon for UnixDocker {
    async fn info(&self) -> Result<DaemonInfo> {
        let io = async {
            let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
            // HTTP/1.0: no chunking, the daemon closes when done.
            s.write_all(b"GET /info HTTP/1.0\r\nHost: docker\r\n\r\n")
                .await?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(resp)
        };
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), io)
            .await
            .context("timed out asking dockerd for /info")?
            .with_context(|| format!("cannot talk to dockerd at '{}'", self.socket.display()))?;
        let (status, body) = parse_http(&resp)?;
        if status != 200 {
            bail!("dockerd answered /info with HTTP {status}");
        }
        parse_info(body)
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    pub struct FixedDaemon(pub Option<DaemonInfo>);
    impl DockerDaemon for FixedDaemon {
        async fn info(&self) -> Result<DaemonInfo> {
            self.0.clone().context("dockerd is not running")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_info() {
        let resp = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ContainersRunning\":2,\"LiveRestoreEnabled\":false,\"Swarm\":{\"LocalNodeState\":\"active\"}}";
        let (status, body) = parse_http(resp).unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            parse_info(body).unwrap(),
            DaemonInfo {
                swarm_active: true,
                live_restore: false,
                containers_running: 2
            }
        );
        let i = parse_info(br#"{"Swarm":{"LocalNodeState":"inactive"},"LiveRestoreEnabled":true}"#)
            .unwrap();
        assert!(!i.swarm_active && i.live_restore);
    }
}
