//! The bytes waiting to be written to one connection: direct answers (through
//! [`crate::cmd::context::Reply`]), hub items and the login backlog.

use bytes::BytesMut;
use msim_shared::Packet;

/// A connection's outgoing buffer, flushed by the session after each event.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    buf: BytesMut,
}

impl Outbox {
    /// Queues a packet.
    pub(crate) fn push(&mut self, p: &Packet) {
        self.buf.extend_from_slice(p.to_wire().as_bytes());
    }

    /// Queues encoded bytes.
    pub(crate) fn push_bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets what is queued; a buffer grown for a burst is given back.
    pub(super) fn clear(&mut self) {
        if self.buf.capacity() > 8192 {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
    }
}
