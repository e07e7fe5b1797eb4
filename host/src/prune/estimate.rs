//! The accuracy the search's constraint is checked against: predicted from a low-variance
//! signal and lowered by the noise of a split this size (DESIGN section 5, "drive the search
//! with a low-variance signal").
//!
//! Accuracy on a few hundred examples is noisy (one paired standard error against the dense
//! model is about 2 points on SST-2's 262 search sentences), and a search that keeps the most
//! pruned of a hundred genomes whose measured accuracy clears the target keeps the ones the
//! noise flattered: on unseen sentences they fall below the target. Two things counter that:
//!
//! - **A low-variance prediction.** The paired difference in mean gold log-probability
//!   against the dense model, `Δℓ`, has a standard error about a tenth of its spread across
//!   genomes, and on held-out data it is what it was on the search split. It becomes an
//!   accuracy through one slope, `Δacc ≈ β·Δℓ`, fitted through the origin on a few uniform
//!   plans (whose accuracies were not selected for luck): `predicted = a_dense + β·Δℓ`.
//! - **A margin for the split's own noise.** A held-out set of the same size differs from the
//!   expectation by about one paired standard error of the accuracy difference,
//!   `√(b + c − (c − b)²/n) / n` (`b` examples the dense model gets right and the candidate
//!   wrong, `c` the reverse), so the constraint asks `predicted − margin ≥ a*`.
//!
//! The measured accuracy must clear the target as well: `assured = min(predicted − margin,
//! measured)`.

use serde::Serialize;

use super::uniform::Scored;

/// How one candidate stands against the target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// Accuracy measured on the split, with the candidate's calibration-fitted bias.
    pub measured: f64,
    /// `a_dense + β·Δℓ`; the measured accuracy when no slope could be fitted.
    pub predicted: f64,
    /// One paired standard error of the accuracy difference against the dense model.
    pub margin: f64,
    /// `min(predicted − margin, measured)`: what the target is checked against.
    pub assured: f64,
}

/// The dense model's per-example results and the slope `β` that turns a log-probability
/// difference into an accuracy difference.
#[derive(Clone, Debug)]
pub struct AccuracyModel {
    dense: Scored,
    slope: Option<f64>,
}

impl AccuracyModel {
    /// Fits `β = Σ Δacc·Δℓ / Σ Δℓ²` on `probes` (the same split as `dense`); without probes
    /// that move the log-probability, or with a slope that is not positive, the prediction is
    /// the measured accuracy.
    pub fn fit(dense: Scored, probes: &[Scored]) -> Self {
        let (mut cross, mut square) = (0.0, 0.0);
        for probe in probes {
            let d_log_prob = probe.gold_log_prob - dense.gold_log_prob;
            cross += (probe.accuracy - dense.accuracy) * d_log_prob;
            square += d_log_prob * d_log_prob;
        }
        let slope = (square > 1e-12)
            .then(|| cross / square)
            .filter(|slope| slope.is_finite() && *slope > 0.0);
        Self { dense, slope }
    }

    /// The fitted slope `β`, if any.
    pub fn slope(&self) -> Option<f64> {
        self.slope
    }

    /// The dense model's measured accuracy.
    pub fn dense_accuracy(&self) -> f64 {
        self.dense.accuracy
    }

    /// How `candidate` (scored on the same split as the dense model) stands.
    pub fn estimate(&self, candidate: &Scored) -> Estimate {
        let measured = candidate.accuracy;
        let predicted = match self.slope {
            Some(slope) => {
                self.dense.accuracy + slope * (candidate.gold_log_prob - self.dense.gold_log_prob)
            }
            None => measured,
        };
        let (mut b, mut c) = (0.0_f64, 0.0_f64);
        for (dense, cand) in self.dense.correct.iter().zip(&candidate.correct) {
            match (dense, cand) {
                (true, false) => b += 1.0,
                (false, true) => c += 1.0,
                _ => {}
            }
        }
        let n = self.dense.correct.len().min(candidate.correct.len()).max(1) as f64;
        let margin = (b + c - (c - b).powi(2) / n).max(0.0).sqrt() / n;
        Estimate {
            measured,
            predicted,
            margin,
            assured: (predicted - margin).min(measured),
        }
    }
}

/// A warning when the dense model's accuracy on `n` examples is not clearly above always
/// answering the most frequent label (`majority`): less than two binomial standard errors of
/// that rate above it. On such a task (this model on PubMedQA or BoolQ) any accuracy target is
/// met by a model that has lost what it knew, so the search's answer says nothing about the
/// pruning.
pub fn chance_level_warning(dense: f64, majority: f64, n: usize) -> Option<String> {
    let standard_error = (majority * (1.0 - majority) / n.max(1) as f64).sqrt();
    (dense < majority + 2.0 * standard_error).then(|| {
        format!(
            "the dense model's search accuracy {dense:.4} is within two standard errors \
             ({:.4}) of always answering the most frequent label ({majority:.4}, {n} examples): \
             this model does not solve the task, so the accuracy target constrains nothing and \
             any pruning will look admissible; choose a task the model solves, or a larger model",
            2.0 * standard_error
        )
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn chance_level_is_flagged_only_within_noise_of_the_majority() {
        // Below the majority rate (a model at chance, as this one on PubMedQA's test split).
        assert!(super::chance_level_warning(0.536, 0.552, 250).is_some());
        // Within two standard errors above (2 · 0.0314 on 250 examples at 0.552).
        assert!(super::chance_level_warning(0.60, 0.552, 250).is_some());
        // Far above it (SST-2: dense 0.8817 on 262 examples whose labels are about balanced).
        assert!(super::chance_level_warning(0.8817, 0.51, 262).is_none());
        assert!(super::chance_level_warning(0.62, 0.552, 250).is_none());
    }
    use super::*;

    fn scored(correct: &[bool], gold_log_prob: f64) -> Scored {
        let n = correct.len() as f64;
        Scored {
            accuracy: correct.iter().filter(|&&c| c).count() as f64 / n,
            accuracy_uncalibrated: 0.0,
            label_bias: vec![0.0, 0.0],
            gold_log_prob,
            correct: correct.to_vec(),
            gold_log_probs: vec![gold_log_prob; correct.len()],
            head: None,
        }
    }

    /// 100 examples, the first `right` correct.
    fn first_right(right: usize, gold_log_prob: f64) -> Scored {
        let correct: Vec<bool> = (0..100).map(|i| i < right).collect();
        scored(&correct, gold_log_prob)
    }

    #[test]
    fn the_dense_model_is_assured_its_own_accuracy() {
        let dense = first_right(90, -0.3);
        let model = AccuracyModel::fit(dense.clone(), &[first_right(70, -0.5)]);
        let e = model.estimate(&dense);
        assert_eq!(e.margin, 0.0);
        assert!((e.assured - 0.9).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn the_slope_goes_through_the_origin_by_hand() {
        // Probes: Δℓ −0.1 → Δacc −0.10, Δℓ −0.2 → Δacc −0.30; β = (0.01 + 0.06) / (0.01 +
        // 0.04) = 1.4.
        let dense = first_right(90, -0.3);
        let probes = [first_right(80, -0.4), first_right(60, -0.5)];
        let model = AccuracyModel::fit(dense, &probes);
        let slope = model.slope().unwrap_or(f64::NAN);
        assert!((slope - 1.4).abs() < 1e-12, "{slope}");
    }

    #[test]
    fn a_lucky_candidate_is_held_to_its_log_probability_and_the_noise() {
        // The candidate measures as well as dense but swaps 10 right answers for 10 wrong
        // ones and loses 0.05 nats: predicted 0.9 − 1.4·0.05 = 0.83; b = c = 10, margin
        // √20 / 100 = 0.0447; assured 0.7853.
        let dense = first_right(90, -0.3);
        let probes = [first_right(80, -0.4), first_right(60, -0.5)];
        let model = AccuracyModel::fit(dense, &probes);
        let correct: Vec<bool> = (0..100).map(|i| (10..100).contains(&i)).collect();
        let e = model.estimate(&scored(&correct, -0.35));
        assert!((e.measured - 0.9).abs() < 1e-12);
        assert!((e.predicted - 0.83).abs() < 1e-12, "{e:?}");
        assert!((e.margin - 20f64.sqrt() / 100.0).abs() < 1e-12, "{e:?}");
        assert!((e.assured - (0.83 - 20f64.sqrt() / 100.0)).abs() < 1e-12);
    }

    #[test]
    fn the_measured_accuracy_caps_the_assured_one() {
        let dense = first_right(90, -0.3);
        let model = AccuracyModel::fit(dense, &[first_right(80, -0.4)]);
        // Same log-probability as dense but 20 points worse: assured is the measured 0.7.
        let e = model.estimate(&first_right(70, -0.3));
        assert!((e.assured - 0.7).abs() < 1e-12, "{e:?}");
    }

    #[test]
    fn without_a_usable_slope_the_prediction_is_the_measurement() {
        let dense = first_right(90, -0.3);
        // No probe moves the log-probability; or the slope comes out negative.
        for probes in [vec![first_right(80, -0.3)], vec![first_right(80, -0.2)]] {
            let model = AccuracyModel::fit(dense.clone(), &probes);
            assert_eq!(model.slope(), None);
            let e = model.estimate(&first_right(85, -0.35));
            assert!((e.predicted - 0.85).abs() < 1e-12, "{e:?}");
        }
    }
}
