//! Baselines measured in the same run as the figures they scale.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 1 << 20;

/// Loopback TCP throughput in bytes/s: one stream, `total` bytes, 1 MiB writes and reads.
pub async fn loopback_tcp(total: u64) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        anyhow::Ok(got)
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await?;
    let buf = vec![7u8; CHUNK];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await?;
        sent += n as u64;
    }
    s.shutdown().await?;
    drop(s);
    let got = reader.await??;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(got == total, "loopback lost bytes");
    Ok(total as f64 / secs)
}

/// Loopback TCP round trips per second for small messages (one in flight): the floor under
/// any request/response latency.
pub async fn loopback_round_trip(count: u32) -> Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let echo = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
        }
        anyhow::Ok(())
    });
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(count as usize);
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        s.write_all(b"PING\n").await?;
        let mut got = 0;
        while got < 5 {
            got += s.read(&mut buf[got..]).await?;
        }
        samples.push(t.elapsed().as_secs_f64());
    }
    let per_sec = f64::from(count) / start.elapsed().as_secs_f64();
    drop(s);
    echo.await??;
    samples.sort_by(f64::total_cmp);
    Ok((per_sec, super::report::percentile(&samples, 50.0)))
}

/// SHA-256 throughput of one stream in bytes/s (the same `sha2` crate the relay uses): the
/// ceiling of any transfer whose bytes one relay hashes on the way through.
pub fn sha256(total: u64) -> f64 {
    use sha2::{Digest, Sha256};
    let buf = vec![7u8; CHUNK];
    let mut hasher = Sha256::new();
    let start = Instant::now();
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(CHUNK as u64) as usize;
        hasher.update(&buf[..n]);
        done += n as u64;
    }
    std::hint::black_box(hasher.finalize());
    total as f64 / start.elapsed().as_secs_f64()
}

/// Sequential disk write throughput in bytes/s into `dir`, including the final fsync.
pub fn disk_write(dir: &Path, total: u64) -> Result<f64> {
    let path = dir.join("baseline-write.tmp");
    let buf = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut written = 0u64;
    while written < total {
        let n = (total - written).min(CHUNK as u64) as usize;
        f.write_all(&buf[..n])?;
        written += n as u64;
    }
    f.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(total as f64 / secs)
}

/// Small appends each followed by fdatasync, per second: what a server that paid one flush per
/// message could reach at best.
pub fn fsyncs(dir: &Path, count: u32) -> Result<f64> {
    let path = dir.join("baseline-fsync.tmp");
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    for _ in 0..count {
        f.write_all(&[0u8; 128])?;
        f.sync_data()?;
    }
    let per_sec = f64::from(count) / start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(per_sec)
}
