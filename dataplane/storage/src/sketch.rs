//! A mergeable quantile sketch with a relative-error guarantee (kept per block for numeric
//! fields, and in query aggregations): values fall into logarithmic
//! buckets `(γ^(i-1), γ^i]` with `γ = (1 + α) / (1 - α)`, so any quantile is answered within a
//! relative error `α` ([`RELATIVE_ACCURACY`], 1 %) of a value that is really at that rank.
//! Storage members compute sketches locally; the query node merges them by adding bucket
//! counts, which is exact (the merged sketch equals the sketch of all values).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// α: the relative error bound of every quantile.
pub const RELATIVE_ACCURACY: f64 = 0.01;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sketch {
    /// Bucket index → count, for positive values.
    #[serde(default)]
    pub positive: BTreeMap<i32, u64>,
    /// Bucket index of |v| → count, for negative values.
    #[serde(default)]
    pub negative: BTreeMap<i32, u64>,
    #[serde(default)]
    pub zeros: u64,
}

/// Values this close to zero count as zero (keeps bucket indexes bounded).
const MIN_MAGNITUDE: f64 = 1e-9;

fn index_of(magnitude: f64) -> i32 {
    (magnitude.ln() / gamma().ln()).ceil() as i32
}

fn value_of(index: i32) -> f64 {
    // The midpoint (in relative terms) of (γ^(i-1), γ^i].
    let g = gamma();
    2.0 * g.powi(index) / (g + 1.0)
}

impl Sketch {
    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let magnitude = value.abs();
        if magnitude < MIN_MAGNITUDE {
            self.zeros += 1;
        } else if value > 0.0 {
            *self.positive.entry(index_of(magnitude)).or_default() += 1;
        } else {
            *self.negative.entry(index_of(magnitude)).or_default() += 1;
        }
    }

    pub fn merge(&mut self, other: &Sketch) {
        for (i, c) in &other.positive {
            *self.positive.entry(*i).or_default() += c;
        }
        for (i, c) in &other.negative {
            *self.negative.entry(*i).or_default() += c;
        }
        self.zeros += other.zeros;
    }

    pub fn count(&self) -> u64 {
        self.positive.values().sum::<u64>() + self.negative.values().sum::<u64>() + self.zeros
    }

    /// The value at quantile `q` (0..=1), using the "nearest rank" definition: the smallest
    /// value with at least `q·n` values at or below it. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.negative.iter().rev() {
            seen += c;
            if seen >= rank {
                return Some(-value_of(*i));
            }
        }
        seen += self.zeros;
        if seen >= rank {
            return Some(0.0);
        }
        for (i, c) in &self.positive {
            seen += c;
            if seen >= rank {
                return Some(value_of(*i));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(values: &mut [f64], q: f64) -> f64 {
        values.sort_by(f64::total_cmp);
        let rank = ((q * values.len() as f64).ceil() as usize).max(1);
        values[rank - 1]
    }

    proptest! {
        #[test]
        fn quantiles_are_within_the_relative_error(
            values in proptest::collection::vec(-1e6f64..1e6, 1..400),
            q in 0.0f64..=1.0,
        ) {
            let mut sketch = Sketch::default();
            for v in &values {
                sketch.add(*v);
            }
            let mut sorted = values.clone();
            let truth = exact(&mut sorted, q);
            let got = sketch.quantile(q).expect("not empty");
            let tolerance = truth.abs() * RELATIVE_ACCURACY * 1.0001 + MIN_MAGNITUDE;
            prop_assert!((got - truth).abs() <= tolerance, "q {q}: got {got}, truth {truth}");
        }

        #[test]
        fn merging_equals_sketching_everything(
            a in proptest::collection::vec(0f64..1e4, 0..100),
            b in proptest::collection::vec(-50f64..1e4, 0..100),
        ) {
            let mut left = Sketch::default();
            a.iter().for_each(|v| left.add(*v));
            let mut right = Sketch::default();
            b.iter().for_each(|v| right.add(*v));
            let mut all = Sketch::default();
            a.iter().chain(b.iter()).for_each(|v| all.add(*v));
            left.merge(&right);
            prop_assert_eq!(left, all);
        }
    }

    #[test]
    fn empty_and_zero() {
        assert_eq!(Sketch::default().quantile(0.5), None);
        let mut s = Sketch::default();
        s.add(0.0);
        s.add(f64::NAN);
        assert_eq!(s.count(), 1);
        assert_eq!(s.quantile(0.99), Some(0.0));
    }
}
