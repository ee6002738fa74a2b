//! Where a pod's start goes: a stopwatch that a sync pass marks after each step (network:
//! netns and veth; files, volumes, image, create, start, status), logged as one line when the pass started a
//! container, e.g. `pod=web-1 total_ms=72 steps=network 19.1, files 0.2, volumes 0.0,
//! observe 0.5, image 0.0, queued 0.0, create 4.1, io 1.6, start_task 41.9, observe 0.6,
//! status 3.2` (`queued`: waiting for a turn to start, [`super::starts`]).
//! It is how one reads, in `/var/log/ownkube/agent.log`, which part of "pod created →
//! Running" is the kubelet's.
//!
//! Upstream: pkg/kubelet/util/pod_startup_latency_tracker.go (the kubelet's own breakdown
//! of pod startup, which it exports as metrics)

use std::time::Instant;

/// Milliseconds per named step, in order; a step marked twice is listed twice.
pub struct Steps {
    began: Instant,
    last: Instant,
    parts: Vec<(&'static str, f64)>,
}

impl Default for Steps {
    fn default() -> Self {
        let now = Instant::now();
        Steps { began: now, last: now, parts: vec![] }
    }
}

impl Steps {
    /// The step `name` ended now (it began when the previous one ended).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.parts.push((name, (now - self.last).as_secs_f64() * 1000.0));
        self.last = now;
    }

    /// Milliseconds since the stopwatch started.
    pub fn total_ms(&self) -> f64 {
        self.began.elapsed().as_secs_f64() * 1000.0
    }

    /// `"network 19.1, files 0.2, ..."`.
    pub fn summary(&self) -> String {
        self.parts.iter().map(|(n, ms)| format!("{n} {ms:.1}")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::Steps;

    #[test]
    fn steps_are_listed_in_order_and_add_up() {
        let mut s = Steps::default();
        s.mark("sandbox");
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.mark("start");
        let sum: f64 = s.parts.iter().map(|p| p.1).sum();
        assert!(s.parts[1].1 >= 5.0 && sum <= s.total_ms() + 0.01, "{}", s.summary());
        assert!(s.summary().starts_with("sandbox 0.") && s.summary().contains(", start "), "{}", s.summary());
    }
}
