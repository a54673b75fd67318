//! A pipelined writer: buffers queue (bounded per upload and across uploads) while a task of
//! its own stores them in batches.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::BlobWriter;
use crate::{Result, StoreError};

/// Most bytes a [`BlobSink`] worker writes (and hashes) in one step.
const SINK_BATCH_BYTES: usize = 1 << 20;
/// Most buffers a [`BlobSink`] worker writes in one `writev`.
const SINK_BATCH_BUFS: usize = 64;

impl BlobWriter {
    /// Turn this writer into a pipelined sink: buffers pushed into it are hashed and written by
    /// a separate task (off the caller's task) while the caller receives more. At most `limit`
    /// bytes of this upload wait or are being written at a time, and, with `shared`, they also
    /// take permits (one per byte) from that pool, which bounds all uploads together.
    /// [`BlobSink::push`] waits for room.
    pub fn sink(self, limit: usize, shared: Option<SharedBudget>) -> BlobSink {
        let limit = limit.clamp(1, u32::MAX as usize);
        let own = Arc::new(Semaphore::new(limit));
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = self.offset;
        let size = self.size;
        let task = tokio::spawn(drain_sink(self, rx, own.clone()));
        BlobSink {
            tx: Some(tx),
            own,
            shared,
            limit,
            accepted,
            size,
            task,
        }
    }
}

/// together. Cheap to clone (clones share the pool).
#[derive(Clone, Debug)]
pub struct SharedBudget {
    sem: Arc<Semaphore>,
    total: u32,
}

impl SharedBudget {
    /// A pool of `total` bytes (at most `u32::MAX`).
    pub fn new(total: usize) -> SharedBudget {
        let total = u32::try_from(total.max(1)).unwrap_or(u32::MAX);
        SharedBudget {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// A queued buffer and the budget it holds until it is stored.
struct Queued {
    data: Bytes,
    _own: OwnedSemaphorePermit,
    _shared: Option<OwnedSemaphorePermit>,
}

/// The storing side of a [`BlobSink`]: takes whatever has arrived (up to a batch) and stores
/// it in one blocking step, so batches grow when storing is the slower side.
async fn drain_sink(
    mut writer: BlobWriter,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    own: Arc<Semaphore>,
) -> Result<BlobWriter> {
    let res = async {
        let mut batch = Vec::with_capacity(SINK_BATCH_BUFS);
        let mut held = Vec::with_capacity(SINK_BATCH_BUFS);
        while let Some(q) = rx.recv().await {
            let mut bytes = q.data.len();
            batch.push(q.data.clone());
            held.push(q);
            while bytes < SINK_BATCH_BYTES && batch.len() < SINK_BATCH_BUFS {
                match rx.try_recv() {
                    Ok(q) => {
                        bytes += q.data.len();
                        batch.push(q.data.clone());
                        held.push(q);
                    }
                    Err(_) => break,
                }
            }
            writer.append(std::mem::take(&mut batch)).await?;
            // Stored: give the budget back.
            held.clear();
        }
        Ok(())
    }
    .await;
    // Wakes a producer waiting for room; its push fails and it collects the error here.
    // Whatever is still queued is dropped with `rx`, returning its budget.
    own.close();
    res.map(|()| writer)
}

/// A [`BlobWriter`] fed through a bounded queue; see [`BlobWriter::sink`].
pub struct BlobSink {
    tx: Option<mpsc::UnboundedSender<Queued>>,
    own: Arc<Semaphore>,
    shared: Option<SharedBudget>,
    limit: usize,
    accepted: u64,
    size: u64,
    task: tokio::task::JoinHandle<Result<BlobWriter>>,
}

impl BlobSink {
    /// Bytes accepted so far (stored or queued), counting from the start of the blob.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// Queue `data` for storing; waits while the queue is full. An error means storing has
    /// stopped: [`BlobSink::close`] says why.
    pub async fn push(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if data.len() as u64 > self.size - self.accepted {
            return Err(StoreError::TooLarge);
        }
        let stopped = || StoreError::Io(io::Error::other("storing stopped"));
        // A buffer larger than the limit takes the whole limit (it is stored on its own).
        let permits = u32::try_from(data.len().min(self.limit)).unwrap_or(u32::MAX);
        let own = self
            .own
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| stopped())?;
        let shared = match &self.shared {
            Some(pool) => Some(
                pool.sem
                    .clone()
                    .acquire_many_owned(permits.min(pool.total))
                    .await
                    .map_err(|_| stopped())?,
            ),
            None => None,
        };
        let n = data.len() as u64;
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(Queued {
            data,
            _own: own,
            _shared: shared,
        })
        .map_err(|_| stopped())?;
        self.accepted += n;
        Ok(())
    }

    /// Wait until everything queued is stored; returns the writer (with its exact offset), or
    /// the error that stopped storing (the upload then stays resumable at what was stored).
    pub async fn close(mut self) -> Result<BlobWriter> {
        self.tx = None;
        (&mut self.task).await.map_err(io::Error::other)?
    }
}
