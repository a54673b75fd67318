//! A server binary run as a child process, its addresses read from its log.

use anyhow::Context;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::mpsc;

/// Longest wait for a log line of a starting server.
pub const LOG_WAIT: Duration = Duration::from_secs(20);

/// A running server binary, killed when dropped. Its stderr log (level info, no colours) is
/// read with [`ServerProcess::wait_for_log`], then handed to a background reader with
/// [`ServerProcess::keep_reading_log`] so that the child never blocks on a full pipe.
#[derive(Debug)]
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    log: Option<Lines<BufReader<ChildStderr>>>,
    /// The lines [`ServerProcess::wait_for_log`] has read.
    seen: Vec<String>,
}

impl ServerProcess {
    /// Spawns `command` with `RUST_LOG=info`, `NO_COLOR=1`, stdout discarded, stderr read.
    pub fn spawn(mut command: Command) -> anyhow::Result<ServerProcess> {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let stderr = child.stderr.take().context("stderr")?;
        Ok(ServerProcess {
            child,
            log: Some(BufReader::new(stderr).lines()),
            seen: Vec::new(),
        })
    }

    /// The next log line `accept` takes (the lines before it are skipped); an error if the
    /// process exits first or none comes within [`LOG_WAIT`].
    pub async fn wait_for_log(
        &mut self,
        mut accept: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<String> {
        let log = self
            .log
            .as_mut()
            .context("the log is read in the background")?;
        let seen = &mut self.seen;
        tokio::time::timeout(LOG_WAIT, async {
            loop {
                let Some(line) = log.next_line().await? else {
                    anyhow::bail!("the server exited");
                };
                seen.push(line.clone());
                if accept(&line) {
                    return Ok(line);
                }
            }
        })
        .await
        .context("no such log line in time")?
    }

    /// The log lines read so far, one a line.
    pub fn log_so_far(&self) -> String {
        self.seen.iter().map(|l| format!("{l}\n")).collect()
    }

    /// The first address in the next log line containing `marker` (e.g. `msim-chat listening`).
    pub async fn listening(&mut self, marker: &str) -> anyhow::Result<SocketAddr> {
        let line = self.wait_for_log(|l| l.contains(marker)).await?;
        addr_in(&line).with_context(|| format!("no address in {line:?}"))
    }

    /// For each of `markers`, the address in the log line containing it, whichever order
    /// the lines come in (listeners started by separate tasks log in any order).
    pub async fn listening_each(&mut self, markers: &[&str]) -> anyhow::Result<Vec<SocketAddr>> {
        let mut addrs: Vec<Option<SocketAddr>> = vec![None; markers.len()];
        while addrs.iter().any(Option::is_none) {
            let line = self
                .wait_for_log(|l| markers.iter().any(|m| l.contains(m)))
                .await?;
            let at = markers
                .iter()
                .position(|m| line.contains(m))
                .context("a marker")?;
            addrs[at] = Some(addr_in(&line).with_context(|| format!("no address in {line:?}"))?);
        }
        Ok(addrs.into_iter().flatten().collect())
    }

    /// Reads the rest of the log in the background; its lines arrive on the returned channel
    /// (and are dropped when it is dropped).
    pub fn keep_reading_log(&mut self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(mut log) = self.log.take() {
            tokio::spawn(async move {
                while let Ok(Some(line)) = log.next_line().await {
                    let _ = tx.send(line);
                }
            });
        }
        rx
    }
}

/// The first `127.0.0.1:<port>` address in `line`.
pub fn addr_in(line: &str) -> Option<SocketAddr> {
    let start = line.find("127.0.0.1:")?;
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::addr_in;

    #[test]
    fn finds_the_address_in_a_log_line() {
        let line = "INFO msim-chat listening addr=127.0.0.1:4312 tls=false";
        assert_eq!(addr_in(line), Some(([127, 0, 0, 1], 4312).into()));
        assert_eq!(addr_in("no address"), None);
    }
}
