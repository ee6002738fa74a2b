//! Probes: when the kubelet asks a container whether it is alive, ready or started, and
//! when the answers count. A probe runs every `periodSeconds` (10) after
//! `initialDelaySeconds` (0), each try bounded by `timeoutSeconds` (1); its published
//! result changes only after `successThreshold` (1) successes or `failureThreshold` (3)
//! failures in a row. Readiness starts failed (a pod is not ready until its probe says
//! so), liveness starts succeeded; while a startup probe has not succeeded, the other two
//! wait. A published liveness (or startup) failure restarts the container.
//!
//! Upstream: pkg/kubelet/prober/worker.go, pkg/probe/http/http.go, pkg/apis/core/v1/defaults.go (SetDefaults_Probe)

use crate::api::Probe;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    /// As events name it: `Liveness probe failed: ...`.
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }
    pub fn lower(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }
}

/// A probe's timing with Kubernetes' defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    pub fn of(p: &Probe) -> Timing {
        let secs = |v: Option<i32>, d: i32, min: i32| Duration::from_secs(v.unwrap_or(d).max(min) as u64);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// One try's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Counts as success, with a note (an HTTP redirect).
    Warning(String),
    Failure(String),
}

impl Outcome {
    pub fn ok(&self) -> bool {
        !matches!(self, Outcome::Failure(_))
    }
}

/// An HTTP probe's answer: 2xx succeeds, 3xx succeeds with a warning, anything else fails.
pub fn http_outcome(code: u16) -> Outcome {
    match code {
        200..=299 => Outcome::Success,
        300..=399 => Outcome::Warning(format!("Probe terminated redirects, Response status: {code}")),
        _ => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// The event for a try that did not simply succeed: (reason, message).
pub fn event(kind: ProbeKind, o: &Outcome) -> Option<(&'static str, String)> {
    match o {
        Outcome::Success => None,
        Outcome::Warning(w) => Some(("ProbeWarning", format!("{} probe warning: {w}", kind.title()))),
        Outcome::Failure(f) => Some(("Unhealthy", format!("{} probe failed: {f}", kind.title()))),
    }
}

/// A probe worker's memory: the published result and the current run of equal answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub kind: ProbeKind,
    /// `None`: no result yet (a startup probe before its first success).
    pub result: Option<bool>,
    last: Option<bool>,
    run: u32,
    /// After a published liveness/startup failure: wait for the restarted container.
    pub on_hold: bool,
}

impl State {
    pub fn new(kind: ProbeKind) -> State {
        let result = match kind {
            ProbeKind::Readiness => Some(false),
            ProbeKind::Liveness => Some(true),
            ProbeKind::Startup => None,
        };
        State { kind, result, last: None, run: 0, on_hold: false }
    }

    /// A new container (restarted): start over.
    pub fn reset(&mut self) {
        *self = State::new(self.kind);
    }

    /// Count one try; returns the newly published result when it changes.
    pub fn observe(&mut self, ok: bool, t: &Timing) -> Option<bool> {
        if self.on_hold {
            return None;
        }
        self.run = if self.last == Some(ok) { self.run + 1 } else { 1 };
        self.last = Some(ok);
        let threshold = if ok { t.success_threshold } else { t.failure_threshold };
        if self.run < threshold || self.result == Some(ok) {
            return None;
        }
        self.result = Some(ok);
        if !ok && self.kind != ProbeKind::Readiness {
            self.on_hold = true;
            self.run = 0;
        }
        Some(ok)
    }
}

/// Whether a probe of this kind tries now: the container runs, the initial delay has
/// passed, and (liveness, readiness) the startup probe, if any, has succeeded.
pub fn due(kind: ProbeKind, running_for: Option<Duration>, started: bool, t: &Timing) -> bool {
    let Some(up) = running_for else { return false };
    if up < t.initial_delay {
        return false;
    }
    match kind {
        ProbeKind::Startup => !started,
        _ => started,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_publish_changes_only() {
        let t = timing(2, 3);
        let mut r = State::new(ProbeKind::Readiness);
        assert_eq!(r.result, Some(false), "not ready until the probe says so");
        assert_eq!(r.observe(true, &t), None);
        assert_eq!(r.observe(true, &t), Some(true));
        assert_eq!(r.observe(false, &t), None);
        assert_eq!(r.observe(false, &t), None);
        assert_eq!(r.observe(true, &t), None, "a success breaks the run of failures");
        for _ in 0..2 {
            assert_eq!(r.observe(false, &t), None);
        }
        assert_eq!(r.observe(false, &t), Some(false));
        let mut l = State::new(ProbeKind::Liveness);
        let t = timing(1, 2);
        assert_eq!((l.observe(false, &t), l.observe(false, &t)), (None, Some(false)));
        assert!(l.on_hold, "waits for the restarted container");
        assert_eq!(l.observe(false, &t), None);
        l.reset();
        assert_eq!(l.result, Some(true));
    }

    #[test]
    fn defaults_gating_and_http() {
        let t = Timing::of(&Probe::default());
        assert_eq!((t.period.as_secs(), t.timeout.as_secs(), t.success_threshold, t.failure_threshold), (10, 1, 1, 3));
        assert!(!due(ProbeKind::Readiness, Some(Duration::from_secs(5)), false, &t), "waits for the startup probe");
        assert!(due(ProbeKind::Startup, Some(Duration::from_secs(5)), false, &t));
        assert!(!due(ProbeKind::Liveness, None, true, &t), "not running");
        assert_eq!(http_outcome(204), Outcome::Success);
        assert!(http_outcome(302).ok());
        assert_eq!(
            event(ProbeKind::Readiness, &http_outcome(500)),
            Some(("Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 500".into()))
        );
    }
}
