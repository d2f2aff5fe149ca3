//! Graceful shutdown: a cloneable handle every task can wait on, and the OS signals that
//! trigger it.

use tokio::sync::watch;

/// Cloneable; `trigger` once, every `wait` resolves.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once `trigger` has been called (immediately if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|triggered| *triggered).await;
    }
}

/// Resolves on SIGINT or SIGTERM. If the handlers cannot be installed it never resolves
/// (and logs why), rather than shutting the node down spuriously.
pub async fn wait_for_signal() {
    listen_for_signals().wait().await
}

/// SIGINT and SIGTERM listeners, installed when made: a signal that comes before
/// [`Signals::wait`] is awaited waits for it, where before the listeners exist it would end
/// the process at once (the default action), leaving whatever it started running.
pub struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

/// Installs the listeners now (within a Tokio runtime).
pub fn listen_for_signals() -> Signals {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(int), Ok(term)) => Signals(Some((int, term))),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot install signal handlers");
            Signals(None)
        }
    }
}

impl Signals {
    /// Resolves on SIGINT or SIGTERM (never, if the listeners could not be installed).
    pub async fn wait(self) {
        match self.0 {
            Some((mut int, mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let task = tokio::spawn(async move { waiter.wait().await });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        task.await.expect("waiter finished");
        assert!(shutdown.is_triggered());
        shutdown.clone().wait().await;
    }
}
