//! The proxy's sync history, behind `/debug/proxy/history`: the last [`KEEP`] syncs, each
//! with what set it off (which Service or EndpointSlice changed, a periodic resync, a
//! retry), what that changed about each service port, the rule lines added and removed
//! ([`pkg::proxy::history`]) and how long it took. `?watch=true` streams each new one as a
//! line of JSON, so a learner can scale a Deployment and watch its rules appear.
//!
//! Upstream: none; kube-proxy has only the `sync_proxy_rules_*` metrics (pkg/proxy/metrics).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Syncs remembered.
pub const KEEP: usize = 100;
/// Rule lines kept per list of one record (a first sync at 5,000 services adds ~40,000).
pub const MAX_LINES: usize = 1000;

/// One sync, as `/debug/proxy/history` shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncRecord {
    /// 1 for the agent's first sync, counting up.
    pub seq: u64,
    /// When it started, RFC 3339.
    pub time: String,
    pub full: bool,
    /// What set it off, in the order it arrived.
    pub triggers: Vec<String>,
    /// What changed about each service port ([`pkg::proxy::history::summarize`]).
    pub changes: Vec<String>,
    /// Rule lines added and removed (at most [`MAX_LINES`] each; the totals say how many).
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub added_total: usize,
    pub removed_total: usize,
    pub millis: f64,
    pub error: Option<String>,
}

impl SyncRecord {
    /// Set the rule lines, keeping at most [`MAX_LINES`] of each list.
    pub fn with_lines(mut self, diff: pkg::proxy::history::RuleDiff) -> SyncRecord {
        (self.added_total, self.removed_total) = (diff.added.len(), diff.removed.len());
        self.added = diff.added.into_iter().take(MAX_LINES).collect();
        self.removed = diff.removed.into_iter().take(MAX_LINES).collect();
        self
    }
}

/// The ring of records and the channel that streams new ones.
pub struct History {
    records: Mutex<VecDeque<SyncRecord>>,
    tx: broadcast::Sender<SyncRecord>,
}

impl Default for History {
    fn default() -> History {
        History { records: Mutex::default(), tx: broadcast::channel(KEEP).0 }
    }
}

impl History {
    /// Keep `r` (numbered next), dropping the oldest beyond [`KEEP`], and tell watchers.
    pub fn record(&self, mut r: SyncRecord) {
        let mut records = self.records.lock().unwrap();
        r.seq = records.back().map_or(1, |last| last.seq + 1);
        if records.len() == KEEP {
            records.pop_front();
        }
        records.push_back(r.clone());
        let _ = self.tx.send(r); // nobody watching is fine
    }

    /// The records kept, oldest first, and a receiver of every later one (taken under the
    /// same lock, so a watcher misses none and sees none twice).
    pub fn subscribe(&self) -> (Vec<SyncRecord>, broadcast::Receiver<SyncRecord>) {
        let records = self.records.lock().unwrap();
        (records.iter().cloned().collect(), self.tx.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_hundred_numbered_and_streams_new_ones() {
        let h = History::default();
        for _ in 0..150 {
            h.record(SyncRecord::default());
        }
        let (kept, mut rx) = h.subscribe();
        assert_eq!(kept.len(), KEEP);
        assert_eq!((kept[0].seq, kept[99].seq), (51, 150));
        h.record(SyncRecord { full: true, ..Default::default() });
        let next = rx.try_recv().unwrap();
        assert_eq!((next.seq, next.full), (151, true));
    }

    #[test]
    fn long_line_lists_are_cut_but_counted() {
        let diff = pkg::proxy::history::RuleDiff { added: (0..2500).map(|i| i.to_string()).collect(), removed: vec![] };
        let r = SyncRecord::default().with_lines(diff);
        assert_eq!((r.added.len(), r.added_total, r.removed_total), (MAX_LINES, 2500, 0));
    }
}
