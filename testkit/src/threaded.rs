//! A [`System`] on a runtime of its own, for blocking tests (and async tests that must not
//! share their runtime with the servers).

use crate::{System, SystemBuilder};
use std::future::Future;
use std::ops::Deref;
use tokio::runtime::Runtime;

/// A [`System`] whose servers run on their own runtime (two worker threads); its methods
/// block. Stops, and waits for the servers to end, when dropped.
pub struct ThreadedSystem {
    system: Option<System>,
    runtime: Option<Runtime>,
}

impl SystemBuilder {
    /// Like [`SystemBuilder::start`], on a new runtime of the system's own; callable from
    /// blocking and async code alike.
    pub fn start_on_thread(self) -> anyhow::Result<ThreadedSystem> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let system = run_on(&runtime, self.start())??;
        Ok(ThreadedSystem {
            system: Some(system),
            runtime: Some(runtime),
        })
    }
}

/// Runs `f` on `runtime` and waits for its output; `Err` if the runtime dropped it.
fn run_on<T: Send + 'static>(
    runtime: &Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| anyhow::anyhow!("the system's runtime stopped"))
}

impl ThreadedSystem {
    /// [`System::stop`]: stops every server and waits until they have shut down.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.with_system(|mut system| async move {
            let result = system.stop().await;
            (system, result)
        })
    }

    /// [`System::restart`] with the same configuration: on the same ports and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.with_system(|mut system| async move {
            let result = system.restart(|_| {}).await;
            (system, result)
        })
    }

    /// Moves the system onto its runtime for `f`, and back.
    fn with_system<F>(&mut self, f: impl FnOnce(System) -> F) -> anyhow::Result<()>
    where
        F: Future<Output = (System, anyhow::Result<()>)> + Send + 'static,
    {
        let (Some(system), Some(runtime)) = (self.system.take(), &self.runtime) else {
            anyhow::bail!("the system is gone");
        };
        let (system, result) = run_on(runtime, f(system))?;
        self.system = Some(system);
        result
    }
}

impl Deref for ThreadedSystem {
    type Target = System;

    fn deref(&self) -> &System {
        // Only `with_system` takes it out, and puts it back before returning.
        self.system.as_ref().expect("the system is present")
    }
}

impl Drop for ThreadedSystem {
    fn drop(&mut self) {
        if let (Some(mut system), Some(runtime)) = (self.system.take(), &self.runtime) {
            let _ = run_on(runtime, async move {
                let _ = system.stop().await;
            });
        }
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime inside an async test would panic; nothing runs on it now.
            runtime.shutdown_background();
        }
    }
}
