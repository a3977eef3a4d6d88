//! Liveness for a supervisor (systemd's `WatchdogSec=`): the daemon says it is alive only
//! after every connection worker thread has run a task, so a wedged worker (a blocking call,
//! a tight loop) stops the pings and the supervisor restarts the daemon. This is the only
//! thing that replaces a daemon: the load balancer's health check never does it for a stale
//! directory (stale is not dead), and a wedged daemon that still answers health checks from
//! its main runtime is caught here.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::LocalPoolHandle;

/// Tells a supervisor the daemon is alive, every `every`, while it is.
#[derive(Clone)]
pub struct Watchdog {
    /// How often to say so (half the supervisor's timeout).
    pub every: Duration,
    /// Says so (`sd_notify` `WATCHDOG=1` in the binary).
    pub alive: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Whether every worker of `workers` runs a task within `within`; `Err` names the first
/// that did not.
pub(crate) async fn workers_answer(
    workers: &LocalPoolHandle,
    within: Duration,
) -> Result<(), usize> {
    for idx in 0..workers.num_threads() {
        let ran = tokio::time::timeout(within, workers.spawn_pinned_by_idx(|| async {}, idx));
        if !matches!(ran.await, Ok(Ok(()))) {
            return Err(idx);
        }
    }
    Ok(())
}

/// Pings `watchdog` for as long as the process runs and every worker answers.
pub(crate) async fn run(workers: LocalPoolHandle, watchdog: Watchdog) {
    let mut tick = tokio::time::interval(watchdog.every);
    let mut silent = false;
    loop {
        tick.tick().await;
        match workers_answer(&workers, watchdog.every).await {
            Ok(()) => {
                if silent {
                    tracing::info!("every connection worker answers again");
                    silent = false;
                }
                (watchdog.alive)();
            }
            Err(idx) => {
                if !silent {
                    tracing::error!(
                        worker = idx,
                        "a connection worker did not answer within {}; not telling the \
                         supervisor the daemon is alive (it restarts a daemon that stays so)",
                        humantime::format_duration(watchdog.every)
                    );
                }
                silent = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wedged_worker_is_seen_and_a_free_one_answers() {
        let workers = LocalPoolHandle::new(2);
        let within = Duration::from_millis(300);
        assert_eq!(workers_answer(&workers, within).await, Ok(()));
        // Worker 1 blocks its thread (as a blocking call in a connection's task would).
        let _wedge =
            workers.spawn_pinned_by_idx(|| async { std::thread::sleep(Duration::from_secs(2)) }, 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(workers_answer(&workers, within).await, Err(1));
    }
}
