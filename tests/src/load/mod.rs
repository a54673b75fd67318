//! `msim-load`: drives real msim-chat and msim-relay processes with many simulated users and
//! reports each figure next to a baseline measured in the same run (loopback TCP, disk writes,
//! fsyncs), so results are comparable across noisy shared machines.

pub mod baseline;
pub mod chat;
pub mod procs;
pub mod relay;
pub mod report;
pub mod wire;
