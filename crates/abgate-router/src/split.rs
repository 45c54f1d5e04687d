//! Choosing a destination among a rule's weighted targets.
//!
//! Random per request, as Istio does, unless the rule names a stickiness key: then the
//! choice is a pure function of the key (see [`crate::sticky`]).

use std::sync::Arc;

use abgate_config::model::{HeaderRules, KeySource};
use abgate_telemetry::DestinationSeries;

use crate::cluster::Cluster;
use crate::sticky::StickySplit;

/// One weighted destination of a rule.
#[derive(Debug)]
pub struct Target {
    /// Where it goes.
    pub cluster: Arc<Cluster>,
    /// Relative weight.
    pub weight: u32,
    /// Destination-level header changes.
    pub headers: HeaderRules,
    /// The `model` this destination serves the request under, when its header changes
    /// set [`MODEL_HEADER`](crate::table::MODEL_HEADER): the forwarded body's `model` is
    /// replaced with it.
    pub model_rewrite: Option<String>,
    /// The experiment variant this target is, when an experiment routes.
    pub variant: Option<Arc<str>>,
    /// Telemetry series per endpoint, indexed like `cluster.endpoints`.
    pub series: Vec<Arc<DestinationSeries>>,
    /// The series for failures before an endpoint is chosen (no endpoint, no subset).
    pub unplaced: Arc<DestinationSeries>,
}

/// A sticky assignment: where the key comes from and how buckets map to targets.
#[derive(Debug)]
pub struct Stickiness {
    /// Header or cookie.
    pub source: KeySource,
    /// Hash salt (the experiment id, or the rule's identity).
    pub salt: String,
    split: StickySplit,
}

/// A rule's targets and how to choose among them.
#[derive(Debug)]
pub struct Split {
    /// The targets, in the order written.
    pub targets: Vec<Target>,
    /// Running sums of the weights, for a random draw.
    cumulative: Vec<u64>,
    /// Sticky assignment, when the rule has a key.
    pub stickiness: Option<Stickiness>,
}

impl Split {
    /// A split over `targets` (at least one with positive weight, as validation ensures).
    /// With a stickiness key, `baseline` is the target that gives up users as candidates grow.
    pub fn new(targets: Vec<Target>, sticky: Option<(KeySource, String)>, baseline: usize) -> Self {
        let mut sum = 0u64;
        let cumulative = targets
            .iter()
            .map(|t| {
                sum += u64::from(t.weight);
                sum
            })
            .collect();
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let stickiness = sticky.and_then(|(source, salt)| {
            let split =
                StickySplit::new(&weights, baseline.min(targets.len().saturating_sub(1))).ok()?;
            Some(Stickiness {
                source,
                salt,
                split,
            })
        });
        Self {
            targets,
            cumulative,
            stickiness,
        }
    }

    /// The target for a request. `key` is the stickiness key's value when the request
    /// carries one; without it the draw is random, from `random`.
    pub fn choose(&self, key: Option<&str>, random: &mut dyn FnMut() -> u64) -> &Target {
        let index = match (&self.stickiness, key) {
            (Some(s), Some(key)) => s.split.assign(&s.salt, key),
            _ => self.random_index(random()),
        };
        &self.targets[index]
    }

    fn random_index(&self, draw: u64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0);
        if total == 0 || self.targets.len() == 1 {
            return 0;
        }
        let point = draw % total;
        self.cumulative.partition_point(|&c| c <= point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abgate_config::model::TrafficPolicy;
    use abgate_telemetry::{DestinationLabels, Telemetry};

    fn target(name: &str, weight: u32) -> Target {
        Target {
            cluster: Arc::new(Cluster::new(
                "h".into(),
                Some(name.into()),
                None,
                Vec::new(),
                None,
                TrafficPolicy::default(),
            )),
            weight,
            headers: HeaderRules::default(),
            model_rewrite: None,
            variant: None,
            series: Vec::new(),
            unplaced: Telemetry::new().destination(DestinationLabels::new("h", "t")),
        }
    }

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 11
        }
    }

    #[test]
    fn zero_weight_destination_never_chosen() {
        let split = Split::new(vec![target("a", 0), target("b", 5)], None, 0);
        let mut rnd = lcg(1);
        assert!(
            (0..1000).all(|_| split.choose(None, &mut rnd).cluster.subset.as_deref() == Some("b"))
        );
    }

    #[test]
    fn random_split_follows_relative_weights() {
        let split = Split::new(vec![target("a", 3), target("b", 1)], None, 0);
        let mut rnd = lcg(42);
        let n = 40_000;
        let a = (0..n)
            .filter(|_| split.choose(None, &mut rnd).cluster.subset.as_deref() == Some("a"))
            .count();
        // Binomial(40000, 0.75): sd = sqrt(n p (1-p)) ≈ 86.6; allow 5 sd.
        let expected = n as f64 * 0.75;
        assert!((a as f64 - expected).abs() < 5.0 * 86.6, "{a}");
    }

    #[test]
    fn sticky_key_always_gets_the_same_target() {
        let split = Split::new(
            vec![target("baseline", 90), target("candidate", 10)],
            Some((KeySource::Header("x-user-id".into()), "exp".into())),
            0,
        );
        let mut rnd = lcg(7);
        for user in 0..200 {
            let key = format!("user-{user}");
            let first = split.choose(Some(&key), &mut rnd).cluster.subset.clone();
            assert!((0..5).all(|_| split.choose(Some(&key), &mut rnd).cluster.subset == first));
        }
    }
}
