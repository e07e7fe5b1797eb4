//! The task head of a classification task (DESIGN section 4): label scores read from the
//! normalised hidden state at the exit layer, `z = W·x + b`, with `W` fitted by multinomial
//! logistic regression and pulled toward the verbalizer rows `V` of the output head,
//!
//! `min_{W,b}  mean_i [log Σ_k exp z_ik − z_i,gold]  +  (λ/2)·|W − V|²  +  (μ/2)·|b|²`,
//!
//! `μ` = [`LABEL_BIAS_L2`]. As `λ → ∞` this is the verbalizer head with the fitted label bias of
//! contextual calibration, so the head only departs from the verbalizer rows as far as the
//! labelled examples support; `λ` is chosen on a held-out quarter of the examples from
//! [`RELATIVE_RIDGES`], then the head is refitted on all of them. The objective is strictly
//! convex; damped Newton steps solve it to a deterministic result.

use faer::linalg::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, Par, Side};
use serde::{Deserialize, Serialize};

use crate::metrics::LABEL_BIAS_L2;

/// Ridges `λ` tried, relative to the mean squared feature `|x|²/d` (so the choice does not
/// depend on the scale of the hidden state), strongest first.
pub const RELATIVE_RIDGES: [f64; 5] = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5];

/// The fewest examples a head is fitted on: below this the held-out quarter is too small to
/// choose the ridge.
pub const MIN_HEAD_EXAMPLES: usize = 8;

/// How a classification task's labels are read from the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabelReading {
    /// The verbalizer tokens' log-probabilities at the last block, plus the per-label bias of
    /// contextual calibration.
    Verbalizer,
    /// A task head fitted on the normalised hidden state at the exit ([`fit_head`]); the
    /// search may then exit early.
    Head,
}

/// Why a head cannot be fitted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeadError {
    /// Too few examples.
    #[error(
        "the task head needs at least {MIN_HEAD_EXAMPLES} labelled examples, got {got}; give the calibration split more examples"
    )]
    TooFewExamples {
        /// Examples given.
        got: usize,
    },
    /// Every example has the same label.
    #[error(
        "every one of the {n} examples the task head is fitted on has label {label:?}; give the calibration split examples of every label"
    )]
    OneClass {
        /// The only label present.
        label: String,
        /// Examples given.
        n: usize,
    },
    /// Shapes disagree (a caller bug surfaced as an error, not a panic).
    #[error("task head: {0}")]
    Shape(String),
}

/// A fitted head: `scores(x) = W·x + b` over the labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskHead {
    /// `W`, one row of `hidden` values per label.
    pub weight: Vec<Vec<f32>>,
    /// `b`, one per label.
    pub bias: Vec<f32>,
    /// The ridge `λ` chosen (absolute).
    pub ridge: f64,
}

impl TaskHead {
    /// The verbalizer head: `W = V`, the given bias (the contextual-calibration one).
    pub fn verbalizer(prior: &[Vec<f32>], bias: &[f64]) -> Self {
        Self {
            weight: prior.to_vec(),
            bias: bias.iter().map(|&b| b as f32).collect(),
            ridge: f64::INFINITY,
        }
    }

    /// Label scores of one state.
    pub fn scores(&self, state: &[f32]) -> Vec<f64> {
        self.weight
            .iter()
            .zip(&self.bias)
            .map(|(row, &b)| {
                let dot: f64 = row
                    .iter()
                    .zip(state)
                    .map(|(&w, &x)| f64::from(w) * f64::from(x))
                    .sum();
                dot + f64::from(b)
            })
            .collect()
    }

    /// `W` as a `(labels, hidden)` tensor: the label rows a bundle stores.
    pub fn rows(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        let width = self.weight.first().map_or(0, Vec::len);
        candle_core::Tensor::from_vec(self.weight.concat(), (self.weight.len(), width), device)
    }

    /// Label scores of every state.
    pub fn score_all(&self, states: &[Vec<f32>]) -> Vec<Vec<f64>> {
        states.iter().map(|s| self.scores(s)).collect()
    }
}

/// Fits the head on `states` (one hidden state per example) and `gold` labels, pulled toward
/// `prior` (the verbalizer rows, one per label); `labels` names the labels for errors.
pub fn fit_head(
    states: &[Vec<f32>],
    gold: &[usize],
    prior: &[Vec<f32>],
    labels: &[String],
) -> Result<TaskHead, HeadError> {
    let problem = Problem::new(states, gold, prior, labels)?;
    let ridge = problem.choose_ridge();
    let theta = problem.solve(ridge, problem.initial());
    Ok(problem.head(&theta, ridge))
}

impl Problem {
    /// The ridge of [`RELATIVE_RIDGES`] whose fit on three quarters of the examples predicts
    /// the held-out quarter best (mean log-likelihood), strongest first, each fit warm-started
    /// from the previous one.
    fn choose_ridge(&self) -> f64 {
        let n = self.design.nrows();
        let held_out = n / 4;
        let sub = self.subset(held_out..n);
        let check = self.subset(0..held_out);
        let mut best: Option<(f64, f64)> = None;
        let mut start = self.initial();
        for relative in RELATIVE_RIDGES {
            let ridge = relative * self.feature_scale;
            let theta = sub.solve(ridge, start.clone());
            let loss = check.loss(&theta, 0.0);
            if best.is_none_or(|(_, best_loss)| loss < best_loss) {
                best = Some((ridge, loss));
            }
            start = theta;
        }
        best.map_or(self.feature_scale, |(ridge, _)| ridge)
    }
}

/// Folds of [`cross_fit_scores`]: each head is fitted on four fifths of the examples.
pub const CROSS_FIT_FOLDS: usize = 5;

/// Scores every example with a head fitted on the other folds (folds by a fixed hash of the
/// position, so no ordering of the examples lines up with them): every score is out of
/// sample, and no example beyond `states` is run. This is how the search compares candidates
/// without extra forward passes. The ridge is chosen once, on the first fold's training
/// examples, and used for every fold.
pub fn cross_fit_scores(
    states: &[Vec<f32>],
    gold: &[usize],
    prior: &[Vec<f32>],
    labels: &[String],
) -> Result<Vec<Vec<f64>>, HeadError> {
    let mut scores = vec![Vec::new(); states.len()];
    let mut ridge = None;
    for fold in 0..CROSS_FIT_FOLDS {
        let (train_states, train_gold): (Vec<Vec<f32>>, Vec<usize>) = states
            .iter()
            .zip(gold)
            .enumerate()
            .filter(|(i, _)| fold_of(*i) != fold)
            .map(|(_, (s, &g))| (s.clone(), g))
            .unzip();
        let problem = Problem::new(&train_states, &train_gold, prior, labels)?;
        let ridge = *ridge.get_or_insert_with(|| problem.choose_ridge());
        let head = problem.head(&problem.solve(ridge, problem.initial()), ridge);
        for (i, state) in states
            .iter()
            .enumerate()
            .filter(|(i, _)| fold_of(*i) == fold)
        {
            scores[i] = head.scores(state);
        }
    }
    Ok(scores)
}

/// The fold position `i` belongs to: its Fibonacci hash, scaled to the folds.
fn fold_of(i: usize) -> usize {
    let hash = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 32;
    ((hash * CROSS_FIT_FOLDS as u64) >> 32) as usize
}

/// The regression problem: design rows `[x, 1]` as an `n × (d + 1)` matrix.
struct Problem {
    design: Mat<f64>,
    gold: Vec<usize>,
    prior: Mat<f64>,
    n_labels: usize,
    /// `mean |x|² / d`.
    feature_scale: f64,
}

const MAX_NEWTON_STEPS: usize = 50;
const MAX_HALVINGS: usize = 40;

impl Problem {
    fn new(
        states: &[Vec<f32>],
        gold: &[usize],
        prior: &[Vec<f32>],
        labels: &[String],
    ) -> Result<Self, HeadError> {
        let n = states.len();
        if n < MIN_HEAD_EXAMPLES {
            return Err(HeadError::TooFewExamples { got: n });
        }
        if gold.len() != n {
            return Err(HeadError::Shape(format!(
                "{n} states but {} labels",
                gold.len()
            )));
        }
        let n_labels = prior.len();
        if n_labels < 2 || labels.len() != n_labels {
            return Err(HeadError::Shape(format!(
                "{n_labels} verbalizer rows for {} labels",
                labels.len()
            )));
        }
        let d = prior[0].len();
        if prior.iter().any(|row| row.len() != d) || states.iter().any(|s| s.len() != d) {
            return Err(HeadError::Shape(format!(
                "states and verbalizer rows must all have {d} values"
            )));
        }
        if let Some(&bad) = gold.iter().find(|&&g| g >= n_labels) {
            return Err(HeadError::Shape(format!(
                "gold label {bad} of {n_labels} labels"
            )));
        }
        if gold.iter().all(|&g| g == gold[0]) {
            return Err(HeadError::OneClass {
                label: labels[gold[0]].clone(),
                n,
            });
        }
        let design = Mat::from_fn(
            n,
            d + 1,
            |i, j| {
                if j < d { f64::from(states[i][j]) } else { 1.0 }
            },
        );
        let squares: f64 = states
            .iter()
            .flat_map(|s| s.iter().map(|&x| f64::from(x) * f64::from(x)))
            .sum();
        let feature_scale = (squares / (n * d) as f64).max(f64::MIN_POSITIVE);
        Ok(Self {
            design,
            gold: gold.to_vec(),
            prior: Mat::from_fn(n_labels, d, |k, j| f64::from(prior[k][j])),
            n_labels,
            feature_scale,
        })
    }

    /// `Xᵀ·m / n` for the design `X` of `n` rows.
    fn design_t_times(&self, m: &Mat<f64>) -> Mat<f64> {
        let mut out = Mat::zeros(self.dim(), m.ncols());
        matmul::matmul(
            out.as_mut(),
            Accum::Replace,
            self.design.transpose(),
            m.as_ref(),
            1.0 / self.design.nrows() as f64,
            Par::rayon(0),
        );
        out
    }

    fn dim(&self) -> usize {
        self.design.ncols()
    }

    fn subset(&self, rows: std::ops::Range<usize>) -> Self {
        let start = rows.start;
        let len = rows.len();
        Self {
            design: Mat::from_fn(len, self.dim(), |i, j| self.design[(start + i, j)]),
            gold: self.gold[rows].to_vec(),
            prior: self.prior.clone(),
            n_labels: self.n_labels,
            feature_scale: self.feature_scale,
        }
    }

    /// `θ` as a `(d + 1) × K` matrix: column `k` is `[w_k, b_k]`; starts at `W = V`, `b = 0`.
    fn initial(&self) -> Mat<f64> {
        let d = self.dim() - 1;
        Mat::from_fn(self.dim(), self.n_labels, |j, k| {
            if j < d { self.prior[(k, j)] } else { 0.0 }
        })
    }

    /// Logits `n × K`.
    fn logits(&self, theta: &Mat<f64>) -> Mat<f64> {
        let mut out = Mat::zeros(self.design.nrows(), self.n_labels);
        matmul::matmul(
            out.as_mut(),
            Accum::Replace,
            self.design.as_ref(),
            theta.as_ref(),
            1.0,
            Par::rayon(0),
        );
        out
    }

    /// Per-example label probabilities `n × K` and the mean negative log-likelihood.
    fn probabilities(&self, theta: &Mat<f64>) -> (Mat<f64>, f64) {
        let logits = self.logits(theta);
        let n = logits.nrows();
        let mut probs = Mat::zeros(n, self.n_labels);
        let mut nll = 0.0;
        for i in 0..n {
            let max = (0..self.n_labels)
                .map(|k| logits[(i, k)])
                .fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..self.n_labels)
                .map(|k| (logits[(i, k)] - max).exp())
                .sum();
            for k in 0..self.n_labels {
                probs[(i, k)] = (logits[(i, k)] - max).exp() / sum;
            }
            nll += max + sum.ln() - logits[(i, self.gold[i])];
        }
        (probs, nll / n.max(1) as f64)
    }

    /// The objective at `theta` with ridge `ridge` (0: the plain mean negative
    /// log-likelihood).
    fn loss(&self, theta: &Mat<f64>, ridge: f64) -> f64 {
        self.probabilities(theta).1 + self.penalty(theta, ridge)
    }

    fn penalty(&self, theta: &Mat<f64>, ridge: f64) -> f64 {
        let d = self.dim() - 1;
        let mut total = 0.0;
        for k in 0..self.n_labels {
            for j in 0..d {
                let delta = theta[(j, k)] - self.prior[(k, j)];
                total += 0.5 * ridge * delta * delta;
            }
            total += 0.5 * LABEL_BIAS_L2 * theta[(d, k)] * theta[(d, k)];
        }
        total
    }

    /// The minimiser, by damped Newton from `theta`.
    fn solve(&self, ridge: f64, theta: Mat<f64>) -> Mat<f64> {
        match self.n_labels {
            2 => self.solve_binary(ridge, &theta),
            _ => self.solve_multinomial(ridge, theta),
        }
    }

    /// Two labels: only `δ = (w₁ − v₁) − (w₀ − v₀)` and `c = b₁ − b₀` reach the likelihood,
    /// and the penalty is least with the deviations opposite and equal (`w₀ = v₀ − δ/2`,
    /// `w₁ = v₁ + δ/2`, `b = ∓c/2`), where it is `(λ/4)|δ|² + (μ/4)c²`. So the two-label
    /// problem is one binary logistic regression on `d + 1` unknowns with the offset
    /// `(v₁ − v₀)·x`: the same minimiser at an eighth of the Newton cost.
    fn solve_binary(&self, ridge: f64, start: &Mat<f64>) -> Mat<f64> {
        let p = self.dim();
        let d = p - 1;
        let rows = self.design.nrows();
        let n = rows as f64;
        let prior_gap: Vec<f64> = (0..d)
            .map(|j| self.prior[(1, j)] - self.prior[(0, j)])
            .collect();
        let offsets: Vec<f64> = (0..rows)
            .map(|i| (0..d).map(|j| prior_gap[j] * self.design[(i, j)]).sum())
            .collect();
        let targets: Vec<f64> = self
            .gold
            .iter()
            .map(|&g| f64::from(u8::from(g == 1)))
            .collect();
        let penalty: Vec<f64> = (0..p)
            .map(|j| {
                if j < d {
                    ridge / 2.0
                } else {
                    LABEL_BIAS_L2 / 2.0
                }
            })
            .collect();
        let mut theta = Mat::from_fn(p, 1, |j, _| {
            if j < d {
                (start[(j, 1)] - self.prior[(1, j)]) - (start[(j, 0)] - self.prior[(0, j)])
            } else {
                start[(d, 1)] - start[(d, 0)]
            }
        });
        let margins = |theta: &Mat<f64>| -> Vec<f64> {
            let mut z = Mat::zeros(rows, 1);
            matmul::matmul(
                z.as_mut(),
                Accum::Replace,
                self.design.as_ref(),
                theta.as_ref(),
                1.0,
                Par::rayon(0),
            );
            (0..rows).map(|i| z[(i, 0)] + offsets[i]).collect()
        };
        let objective = |theta: &Mat<f64>| -> f64 {
            let nll: f64 = margins(theta)
                .iter()
                .zip(&targets)
                .map(|(&z, &y)| softplus(z) - y * z)
                .sum();
            let reg: f64 = (0..p)
                .map(|j| 0.5 * penalty[j] * theta[(j, 0)].powi(2))
                .sum();
            nll / n + reg
        };
        let mut value = objective(&theta);
        for _ in 0..MAX_NEWTON_STEPS {
            let z = margins(&theta);
            let probs: Vec<f64> = z.iter().map(|&z| sigmoid(z)).collect();
            let residual = Mat::from_fn(rows, 1, |i, _| probs[i] - targets[i]);
            let mut gradient = self.design_t_times(&residual);
            for j in 0..p {
                gradient[(j, 0)] += penalty[j] * theta[(j, 0)];
            }
            if (0..p).map(|j| gradient[(j, 0)].abs()).fold(0.0, f64::max) <= 1e-10 {
                break;
            }
            let weighted = Mat::from_fn(rows, p, |i, j| {
                probs[i] * (1.0 - probs[i]) * self.design[(i, j)]
            });
            let mut hessian = self.design_t_times(&weighted);
            for j in 0..p {
                hessian[(j, j)] += penalty[j];
            }
            let Ok(llt) = hessian.llt(Side::Lower) else {
                break;
            };
            let step = llt.solve(&gradient);
            let slope: f64 = (0..p).map(|j| gradient[(j, 0)] * step[(j, 0)]).sum();
            if !damped_step(&mut theta, &mut value, &step, slope, objective) {
                break;
            }
        }
        Mat::from_fn(p, 2, |j, k| {
            let sign = if k == 1 { 0.5 } else { -0.5 };
            if j < d {
                self.prior[(k, j)] + sign * theta[(j, 0)]
            } else {
                sign * theta[(d, 0)]
            }
        })
    }

    /// Damped Newton from `theta` on every label's row.
    fn solve_multinomial(&self, ridge: f64, mut theta: Mat<f64>) -> Mat<f64> {
        let (p, n_labels) = (self.dim(), self.n_labels);
        let d = p - 1;
        let mut value = self.loss(&theta, ridge);
        for _ in 0..MAX_NEWTON_STEPS {
            let (probs, _) = self.probabilities(&theta);
            // Gradient, stacked label by label: (1/n) Xᵀ(P − Y) + penalty.
            let mut residual = probs.clone();
            for (i, &g) in self.gold.iter().enumerate() {
                residual[(i, g)] -= 1.0;
            }
            let mut gradient = self.design_t_times(&residual);
            for k in 0..n_labels {
                for j in 0..d {
                    gradient[(j, k)] += ridge * (theta[(j, k)] - self.prior[(k, j)]);
                }
                gradient[(d, k)] += LABEL_BIAS_L2 * theta[(d, k)];
            }
            let size = p * n_labels;
            let norm = (0..p)
                .flat_map(|j| (0..n_labels).map(move |k| (j, k)))
                .map(|(j, k)| gradient[(j, k)].abs())
                .fold(0.0, f64::max);
            if norm <= 1e-10 {
                break;
            }
            // Hessian blocks (k, l): (1/n) Xᵀ diag(p_k (δ_kl − p_l)) X, plus the penalty.
            let mut hessian = Mat::<f64>::zeros(size, size);
            // With two labels p₀(1 − p₀) = p₁(1 − p₁) = p₀p₁, so the three blocks are B, −B, B
            // for one product B.
            let weighted_gram = |k: usize, l: usize| {
                let delta = if k == l { 1.0 } else { 0.0 };
                let weighted = Mat::from_fn(self.design.nrows(), p, |i, j| {
                    probs[(i, k)] * (delta - probs[(i, l)]) * self.design[(i, j)]
                });
                self.design_t_times(&weighted)
            };
            let shared = (n_labels == 2).then(|| weighted_gram(0, 0));
            for k in 0..n_labels {
                for l in k..n_labels {
                    let block = match &shared {
                        Some(b) if k == l => b.clone(),
                        Some(b) => Mat::from_fn(p, p, |a, c| -b[(a, c)]),
                        None => weighted_gram(k, l),
                    };
                    for a in 0..p {
                        for b in 0..p {
                            hessian[(k * p + a, l * p + b)] = block[(a, b)];
                            hessian[(l * p + b, k * p + a)] = block[(a, b)];
                        }
                    }
                }
                for j in 0..d {
                    hessian[(k * p + j, k * p + j)] += ridge;
                }
                hessian[(k * p + d, k * p + d)] += LABEL_BIAS_L2;
            }
            let rhs = Mat::from_fn(size, 1, |r, _| gradient[(r % p, r / p)]);
            let Ok(llt) = hessian.llt(Side::Lower) else {
                break;
            };
            let stacked = llt.solve(&rhs);
            let slope: f64 = (0..size)
                .map(|r| rhs_at(&gradient, r, p) * stacked[(r, 0)])
                .sum();
            let step = Mat::from_fn(p, n_labels, |j, k| stacked[(k * p + j, 0)]);
            let objective = |theta: &Mat<f64>| self.loss(theta, ridge);
            if !damped_step(&mut theta, &mut value, &step, slope, objective) {
                break;
            }
        }
        theta
    }

    fn head(&self, theta: &Mat<f64>, ridge: f64) -> TaskHead {
        let d = self.dim() - 1;
        TaskHead {
            weight: (0..self.n_labels)
                .map(|k| (0..d).map(|j| theta[(j, k)] as f32).collect())
                .collect(),
            bias: (0..self.n_labels).map(|k| theta[(d, k)] as f32).collect(),
            ridge,
        }
    }
}

/// Moves `theta` to `theta − s·step` for the largest `s` of 1, ½, ¼, … that lowers `objective`
/// by at least `10⁻⁴·s·slope` (Armijo) and `value` to its objective; whether Newton should go
/// on: false when no such `s` exists (`theta` unchanged) or the decrease was too small.
fn damped_step(
    theta: &mut Mat<f64>,
    value: &mut f64,
    step: &Mat<f64>,
    slope: f64,
    objective: impl Fn(&Mat<f64>) -> f64,
) -> bool {
    let mut scale = 1.0;
    for _ in 0..MAX_HALVINGS {
        let candidate = Mat::from_fn(theta.nrows(), theta.ncols(), |i, j| {
            theta[(i, j)] - scale * step[(i, j)]
        });
        let candidate_value = objective(&candidate);
        if candidate_value <= *value - 1e-4 * scale * slope {
            let converged = *value - candidate_value <= 1e-12 * candidate_value.abs().max(1.0);
            (*theta, *value) = (candidate, candidate_value);
            return !converged;
        }
        scale *= 0.5;
    }
    false
}

/// `log(1 + eᶻ)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn rhs_at(gradient: &Mat<f64>, r: usize, p: usize) -> f64 {
    gradient[(r % p, r / p)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn labels() -> Vec<String> {
        vec!["negative".into(), "positive".into()]
    }

    /// Two Gaussian classes separated along one direction that the prior does not point at.
    fn data(n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut rng = Rng(seed);
        let mut states = Vec::new();
        let mut gold = Vec::new();
        for i in 0..n {
            let g = i % 2;
            let mut x: Vec<f32> = (0..6).map(|_| rng.normal() as f32).collect();
            x[2] += if g == 1 { 1.5 } else { -1.5 };
            states.push(x);
            gold.push(g);
        }
        (states, gold)
    }

    fn accuracy(head: &TaskHead, states: &[Vec<f32>], gold: &[usize]) -> f64 {
        let right = states
            .iter()
            .zip(gold)
            .filter(|(s, g)| {
                let z = head.scores(s);
                usize::from(z[1] > z[0]) == **g
            })
            .count();
        right as f64 / gold.len() as f64
    }

    #[test]
    fn the_head_finds_the_direction_the_prior_misses() {
        let (states, gold) = data(400, 1);
        let prior = vec![vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0], vec![0.0; 6]];
        let head = fit_head(&states, &gold, &prior, &labels()).unwrap();
        let (test, test_gold) = data(400, 2);
        let verbalizer = TaskHead::verbalizer(&prior, &[0.0, 0.0]);
        assert!(accuracy(&verbalizer, &test, &test_gold) < 0.6);
        assert!(accuracy(&head, &test, &test_gold) > 0.9);
    }

    #[test]
    fn cross_fitted_scores_are_out_of_sample_and_cover_every_example() {
        let (states, gold) = data(200, 3);
        let prior = vec![vec![0.0; 6], vec![0.0; 6]];
        let scores = cross_fit_scores(&states, &gold, &prior, &labels()).unwrap();
        assert_eq!(scores.len(), 200);
        assert!(scores.iter().all(|s| s.len() == 2));
        let right = scores
            .iter()
            .zip(&gold)
            .filter(|(s, g)| usize::from(s[1] > s[0]) == **g)
            .count();
        assert!(right > 170, "{right}");
    }

    #[test]
    fn bad_inputs_name_the_fix() {
        let (states, _) = data(20, 4);
        let prior = vec![vec![0.0; 6], vec![0.0; 6]];
        let err = fit_head(&states, &[1; 20], &prior, &labels()).unwrap_err();
        assert_eq!(
            err,
            HeadError::OneClass {
                label: "positive".into(),
                n: 20
            }
        );
        assert!(err.to_string().contains("examples of every label"));
        let err = fit_head(&states[..3], &[0, 1, 0], &prior, &labels()).unwrap_err();
        assert!(err.to_string().contains("at least"), "{err}");
        let err = fit_head(&states, &[0; 19], &prior, &labels()).unwrap_err();
        assert!(matches!(err, HeadError::Shape(_)));
    }

    #[test]
    fn the_two_label_shortcut_finds_the_multinomial_minimiser() {
        let (states, gold) = data(120, 6);
        let prior = vec![
            vec![0.3, -0.2, 0.1, 0.0, 0.5, 0.0],
            vec![0.0, 0.4, -0.3, 0.2, 0.0, 0.1],
        ];
        let problem = Problem::new(&states, &gold, &prior, &labels()).unwrap();
        for ridge in [1e-3, 1e-1] {
            let binary = problem.solve_binary(ridge, &problem.initial());
            let multinomial = problem.solve_multinomial(ridge, problem.initial());
            let (a, b) = (
                problem.loss(&binary, ridge),
                problem.loss(&multinomial, ridge),
            );
            assert!((a - b).abs() < 1e-9, "ridge {ridge}: {a} vs {b}");
            for j in 0..problem.dim() {
                for k in 0..2 {
                    let gap = (binary[(j, k)] - multinomial[(j, k)]).abs();
                    assert!(gap < 1e-5, "ridge {ridge} ({j}, {k}): {gap}");
                }
            }
        }
    }

    #[test]
    fn a_strong_ridge_keeps_the_verbalizer_rows() {
        let (states, gold) = data(100, 5);
        let prior = vec![vec![0.3, 0.0, -1.0, 0.0, 0.0, 0.0], vec![0.0; 6]];
        let problem = Problem::new(&states, &gold, &prior, &labels()).unwrap();
        let theta = problem.solve(1e6, problem.initial());
        let head = problem.head(&theta, 1e6);
        for (row, prior_row) in head.weight.iter().zip(&prior) {
            for (w, v) in row.iter().zip(prior_row) {
                assert!((w - v).abs() < 1e-3, "{w} vs {v}");
            }
        }
    }
}
