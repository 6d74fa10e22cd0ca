//! The results of one run, as written to `bench-results/latest.json`.
//!
//! A metric is "lower is better" (milliseconds, microseconds, KiB) unless
//! `higher_is_better` (rates: requests/s, placements/s, commits/s). A ratio
//! is always flotilla's median divided by the peer's, so < 1 means flotilla
//! wins on a lower-is-better metric and loses on a rate.
//! What it must never do: invent a figure for a peer that was skipped (a
//! skipped peer carries its reason and no ratio).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::util::Stats;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub format: u32,
    pub started_at: String,
    pub finished_at: String,
    pub quick: bool,
    pub command: String,
    pub machine: Machine,
    /// Tool name → version line.
    pub versions: BTreeMap<String, String>,
    /// Peers or measurements that could not run, with the reason.
    pub skipped: Vec<String>,
    /// Differences between the setups that a reader must know.
    pub notes: Vec<String>,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    pub os: String,
    pub cpu: String,
    pub cpus: usize,
    pub mem_total_kib: u64,
    pub load_avg_at_start: String,
    pub cgroups: String,
    pub flotilla_commit: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Metric {
    /// Stable key, used for history across runs.
    pub key: String,
    pub group: String,
    pub name: String,
    /// "ms", "µs", "KiB", or a rate ("req/s", "placements/s", ...).
    pub unit: String,
    /// True for rates: a ratio above 1 is then flotilla ahead.
    #[serde(default)]
    pub higher_is_better: bool,
    pub flotilla: Option<Stats>,
    pub peers: Vec<Peer>,
    /// The project's goal for this metric, if any, e.g. "≤ 1.0× runc".
    pub goal: Option<Goal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    pub stats: Option<Stats>,
    pub skipped: Option<String>,
    /// flotilla median / peer median.
    pub ratio: Option<f64>,
}

/// A goal: flotilla's figure must be at most `max_ratio` × the named
/// peer's, or at most `max_value` in the metric's unit, or (for a rate) at
/// least `min_value`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    pub text: String,
    pub peer: Option<String>,
    pub max_ratio: Option<f64>,
    pub max_value: Option<f64>,
    #[serde(default)]
    pub min_value: Option<f64>,
}

impl Metric {
    pub fn new(key: &str, group: &str, name: &str, unit: &str) -> Metric {
        Metric {
            key: key.into(),
            group: group.into(),
            name: name.into(),
            unit: unit.into(),
            higher_is_better: false,
            flotilla: None,
            peers: Vec::new(),
            goal: None,
        }
    }

    /// Adds a measured peer (ratio computed when flotilla's figure exists;
    /// call after setting `flotilla`).
    pub fn peer(&mut self, name: &str, stats: Option<Stats>) {
        let ratio = match (&self.flotilla, &stats) {
            (Some(f), Some(p)) if p.median > 0.0 => Some(f.median / p.median),
            _ => None,
        };
        self.peers.push(Peer {
            name: name.into(),
            stats,
            skipped: None,
            ratio,
        });
    }

    /// A rate: higher is better.
    pub fn rate(mut self) -> Metric {
        self.higher_is_better = true;
        self
    }

    /// Whether flotilla is ahead of (or level with) a peer at `ratio`.
    pub fn ahead(&self, ratio: f64) -> bool {
        if self.higher_is_better {
            ratio >= 1.0
        } else {
            ratio <= 1.0
        }
    }

    pub fn skip(&mut self, name: &str, reason: &str) {
        self.peers.push(Peer {
            name: name.into(),
            stats: None,
            skipped: Some(reason.into()),
            ratio: None,
        });
    }

    /// How far flotilla is from its goal: > 1 means behind (the factor by
    /// which it misses), None when there is no goal or no figure.
    pub fn goal_gap(&self) -> Option<f64> {
        let g = self.goal.as_ref()?;
        let f = self.flotilla.as_ref()?;
        if let Some(min) = g.min_value {
            return Some(min / f.median);
        }
        if let Some(max) = g.max_value {
            return Some(f.median / max);
        }
        let peer = self
            .peers
            .iter()
            .find(|p| Some(&p.name) == g.peer.as_ref())?;
        Some(peer.ratio? / g.max_ratio?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_goal_gap() {
        let mut m = Metric::new("k", "g", "n", "ms");
        m.flotilla = Stats::from_samples(vec![10.0]);
        m.peer("runc", Stats::from_samples(vec![5.0]));
        m.skip("docker", "not installed");
        assert_eq!(m.peers[0].ratio, Some(2.0));
        assert_eq!(m.peers[1].ratio, None);
        m.goal = Some(Goal {
            text: "no slower than runc".into(),
            peer: Some("runc".into()),
            max_ratio: Some(1.0),
            max_value: None,
            min_value: None,
        });
        assert_eq!(m.goal_gap(), Some(2.0));
        m.goal = Some(Goal {
            text: "< 2 MiB".into(),
            peer: None,
            max_ratio: None,
            max_value: Some(20.0),
            min_value: None,
        });
        assert_eq!(m.goal_gap(), Some(0.5));
        let mut r = Metric::new("r", "g", "n", "req/s").rate();
        r.flotilla = Stats::from_samples(vec![50.0]);
        r.peer("direct", Stats::from_samples(vec![100.0]));
        assert_eq!(r.peers[0].ratio, Some(0.5));
        assert!(!r.ahead(0.5) && r.ahead(1.2));
        r.goal = Some(Goal {
            text: "at least 100/s".into(),
            peer: None,
            max_ratio: None,
            max_value: None,
            min_value: Some(100.0),
        });
        assert_eq!(r.goal_gap(), Some(2.0));
    }
}
