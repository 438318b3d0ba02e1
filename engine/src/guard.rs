//! The training guard's state: what a divergence rollback changed (the learning-rate scale,
//! how many were taken) and the outlier detector of `train.skip_update_zscore`. Saved in
//! each checkpoint's `state.json` (`guard`), so a resumed run continues with the same
//! learning rate and judges outliers against the same recent steps as an uninterrupted one.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Steps the outlier detector remembers (llm.c's window).
pub const OUTLIER_WINDOW: usize = 128;
/// Steps the detector must have seen before it judges one.
pub const OUTLIER_MIN_STEPS: usize = 16;

/// The guard's state after a step (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardState {
    /// The factor every step's scheduled learning rate is multiplied by: 1, times
    /// `train.rollback_lr_factor` per rollback taken.
    pub lr_scale: f64,
    /// Rollbacks taken so far (each after a diverged step).
    pub rollbacks: u32,
    /// The losses of the last steps, oldest first (at most [`OUTLIER_WINDOW`]); empty when
    /// `train.skip_update_zscore` is off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub losses: Vec<f64>,
    /// Their gradient norms, likewise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grad_norms: Vec<f64>,
}

impl Default for GuardState {
    fn default() -> Self {
        Self { lr_scale: 1.0, rollbacks: 0, losses: Vec::new(), grad_norms: Vec::new() }
    }
}

/// A window of recent values and the z-score of a new one against it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutlierDetector {
    window: VecDeque<f64>,
}

impl OutlierDetector {
    /// A detector that remembers `values` (oldest first; only the last [`OUTLIER_WINDOW`]).
    pub fn from_values(values: &[f64]) -> Self {
        let mut d = Self::default();
        for &v in values {
            d.push(v);
        }
        d
    }

    /// The remembered values, oldest first.
    pub fn values(&self) -> Vec<f64> {
        self.window.iter().copied().collect()
    }

    /// How many standard deviations `x` lies above the window's mean (negative below);
    /// `None` while fewer than [`OUTLIER_MIN_STEPS`] values are known or when they are all
    /// equal. Then `x` joins the window (outliers too, as in llm.c, so a lasting change of
    /// level stops being one).
    pub fn observe(&mut self, x: f64) -> Option<f64> {
        let z = self.zscore(x);
        self.push(x);
        z
    }

    fn zscore(&self, x: f64) -> Option<f64> {
        let n = self.window.len();
        if n < OUTLIER_MIN_STEPS {
            return None;
        }
        let mean = self.window.iter().sum::<f64>() / n as f64;
        let var = self.window.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        let std = var.sqrt();
        (std > 0.0).then(|| (x - mean) / std)
    }

    fn push(&mut self, x: f64) {
        if self.window.len() == OUTLIER_WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscores_against_the_recent_window() {
        let mut d = OutlierDetector::default();
        for i in 0..OUTLIER_MIN_STEPS {
            assert_eq!(d.observe(1.0 + (i % 2) as f64), None, "too few values to judge");
        }
        // mean 1.5, std 0.5: 4.0 is 5 standard deviations above
        let z = d.observe(4.0).unwrap();
        assert!((z - 5.0).abs() < 1e-12, "{z}");
        let z = d.observe(1.0).unwrap();
        assert!(z < 0.0, "{z}");
        let mut full = OutlierDetector::default();
        for i in 0..OUTLIER_WINDOW + 10 {
            full.observe(i as f64);
        }
        let values = full.values();
        assert_eq!(values.len(), OUTLIER_WINDOW);
        assert_eq!(values[0], 10.0, "the oldest values leave the window");
        assert_eq!(OutlierDetector::from_values(&values), full);
        assert_eq!(OutlierDetector::from_values(&[2.0; 20]).observe(2.0), None, "equal values have no deviation");
    }
}
