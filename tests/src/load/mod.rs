//! `msim-load`: drives real msim-chat and msim-relay processes (started here, or already running
//! at given addresses) with many simulated users and reports each figure next to a baseline
//! measured in the same run (loopback TCP, disk writes, fsyncs), so results are comparable
//! across noisy shared machines.

pub mod baseline;
pub mod chat;
pub mod chat_scenarios;
pub mod cli;
pub mod cli_transfer;
pub mod cluster;
pub mod content;
pub mod federation;
pub mod ledger;
pub mod procs;
pub mod relay;
pub mod relay_scenarios;
pub mod report;
pub mod soak;
pub mod wire;

/// An identifier of this run, unique across runs (`ld` + microseconds since the epoch in hex):
/// names of what a run leaves on a long-running server (users, the relay token sender) start
/// with it, so reruns against the same servers do not collide.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        format!("ld{micros:x}")
    })
}
