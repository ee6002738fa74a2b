//! How many containers are being created and started at once: at most twice as many as
//! the node has CPUs (`--max-parallel-starts`), the others wait their turn in arrival order.
//!
//! Starting a container is CPU work in other processes: containerd, a shim spawned for
//! it, `runc create` and `runc init` setting up namespaces, mounts and cgroups, then
//! `runc start` (about 50 ms of it per container on this lab's nodes). Twenty such starts
//! at once on two cores share the CPU evenly, so each takes about as long as all of them
//! together: the median start waits for nearly the whole burst. Queue them and the first
//! ones finish early while the last finishes no later — the same work, queued rather than
//! shared. Measured with bare `ctr run -d` in this lab (two nodes, ten containers each,
//! four rounds): all ten at once per node, p50 816 ms; two at a time, p50 594 ms; the
//! last one at about 1 s either way.
//!
//! But part of a start is waiting, not computing, and a queued start gets a smaller share
//! of a CPU that other work (probes, proxy syncs) also wants: with only as many starts as
//! CPUs, 100 replicas of a Deployment became Ready with a lower median but a later last
//! pod (p50 4.8-5.9 s, last 8.9-11.1 s, beside 6.2-8.9 s and 6.7-9.8 s with no limit).
//! Twice the CPUs keeps most of the gain for a burst and loses none at the tail (bursts
//! of 20, three rounds each, p50: no limit 984 ms, 2 at a time 868 ms, 4 at a time
//! 920 ms; the Deployment p50 5.4-5.9 s, last 8.8 s).
//!
//! Only the runtime's part is queued (create, output, start); the network, volumes and
//! image pulls are not (a slow pull must not hold up pods whose image is present). A
//! pod deleted while it waits leaves the queue, as its sync is cancelled.
//!
//! Upstream: none in the kubelet, which starts every pod's containers at once; the nearest
//! is its `--max-parallel-image-pulls`, which bounds pulls the same way.

use tokio::sync::{Semaphore, SemaphorePermit};

/// The queue of container starts on one node.
pub struct Starts {
    permits: Option<Semaphore>,
}

impl Starts {
    /// At most `n` starts at once; 0: no limit.
    pub fn new(n: usize) -> Starts {
        Starts { permits: (n > 0).then(|| Semaphore::new(n)) }
    }

    /// Wait for a turn; the turn ends when the returned guard is dropped.
    pub async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        match &self.permits {
            Some(s) => s.acquire().await.ok(),
            None => None,
        }
    }
}

/// The default: twice the CPUs this process may run on.
pub fn default_parallel_starts() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::Starts;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    async fn most_at_once(limit: usize, tasks: usize) -> usize {
        let starts = Arc::new(Starts::new(limit));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let all: Vec<_> = (0..tasks)
            .map(|_| {
                let (starts, now, most) = (starts.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    let _turn = starts.turn().await;
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in all {
            t.await.unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn no_more_than_the_limit_start_at_once_and_zero_is_no_limit() {
        assert_eq!(most_at_once(2, 10).await, 2);
        assert_eq!(most_at_once(0, 10).await, 10);
    }
}
