//! Task metrics, as pure functions on `f64`: accuracy, SQuAD v1.1 exact match and F1, the
//! per-label bias of contextual calibration (DESIGN section 4), ROC AUC and perplexity.

use std::collections::HashMap;

/// The fraction of positions where `predicted` equals `gold`; 0 for no examples.
///
/// # Panics
/// When the two slices differ in length (a caller bug, not an input error).
pub fn accuracy(predicted: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(
        predicted.len(),
        gold.len(),
        "accuracy: predicted and gold differ in length"
    );
    if gold.is_empty() {
        return 0.0;
    }
    let correct = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / gold.len() as f64
}

/// SQuAD v1.1 answer normalisation, as `normalize_answer` of the official evaluation script:
/// lowercase, remove ASCII punctuation (Python's `string.punctuation`), replace the words `a`,
/// `an`, `the` by a space, and collapse whitespace to single spaces.
///
/// Words are maximal runs of Unicode alphanumerics and `_`, standing in for Python's `\w`; the
/// two differ only on rare combining marks, which cannot sit next to an ASCII article.
pub fn normalize_answer(text: &str) -> String {
    let lowercase = text.to_lowercase();
    let mut without_articles = String::with_capacity(lowercase.len());
    let mut word = String::new();
    for c in lowercase.chars().filter(|c| !c.is_ascii_punctuation()) {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            push_unless_article(&mut without_articles, &mut word);
            without_articles.push(c);
        }
    }
    push_unless_article(&mut without_articles, &mut word);
    without_articles
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn push_unless_article(out: &mut String, word: &mut String) {
    if matches!(word.as_str(), "a" | "an" | "the") {
        out.push(' ');
    } else {
        out.push_str(word);
    }
    word.clear();
}

/// 1 when the normalised `prediction` equals some normalised gold answer, else 0 (also for no
/// golds).
pub fn exact_match<S: AsRef<str>>(prediction: &str, golds: &[S]) -> f64 {
    let prediction = normalize_answer(prediction);
    let matched = golds
        .iter()
        .any(|gold| normalize_answer(gold.as_ref()) == prediction);
    if matched { 1.0 } else { 0.0 }
}

/// The best token-level F1 of `prediction` against any gold answer (0 for no golds), as the
/// official SQuAD v1.1 script: tokens are the whitespace-separated words of the normalised
/// text, overlap is the multiset intersection, and no overlap (two empty answers included)
/// scores 0.
pub fn f1<S: AsRef<str>>(prediction: &str, golds: &[S]) -> f64 {
    let prediction = normalize_answer(prediction);
    let prediction_tokens: Vec<&str> = prediction.split_whitespace().collect();
    golds
        .iter()
        .map(|gold| {
            let gold = normalize_answer(gold.as_ref());
            token_f1(
                &prediction_tokens,
                &gold.split_whitespace().collect::<Vec<_>>(),
            )
        })
        .fold(0.0, f64::max)
}

fn token_f1(prediction: &[&str], gold: &[&str]) -> f64 {
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for token in gold {
        *gold_counts.entry(token).or_default() += 1;
    }
    let mut same = 0usize;
    for token in prediction {
        if let Some(count) = gold_counts.get_mut(token).filter(|count| **count > 0) {
            *count -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / prediction.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The L2 weight on the bias in [`fit_label_bias`]: it keeps the bias of a label that never
/// occurs as gold finite (about −10 instead of −∞) and moves the others by ~1e-4 relative.
pub const LABEL_BIAS_L2: f64 = 1e-4;

/// The most calibration examples a label bias is fitted on: the first ones of the split, in
/// its hash order (a fair subsample). Larger than every built-in task's calibration split but
/// `sst2`'s, whose 60,614 train rows would cost more than the fit gains.
pub const LABEL_BIAS_EXAMPLES: usize = 1024;

/// Contextual calibration: the per-label bias `b` (with `b[0] = 0`) that maximises the mean
/// log-likelihood `mean_i log softmax(scores[i] + b)[gold[i]] − (LABEL_BIAS_L2 / 2)·|b|²`.
///
/// The objective is strictly concave; damped Newton steps with a backtracking line search run
/// until the gradient vanishes (a deterministic result for given inputs). Returns an empty
/// vector for no examples. Scores must be finite.
///
/// # Panics
/// When `scores` and `gold` differ in length, rows differ in length, or a gold index is out of
/// range (caller bugs).
pub fn fit_label_bias(scores: &[Vec<f64>], gold: &[usize]) -> Vec<f64> {
    assert_eq!(
        scores.len(),
        gold.len(),
        "fit_label_bias: scores and gold differ in length"
    );
    let Some(n_labels) = scores.first().map(Vec::len) else {
        return Vec::new();
    };
    assert!(
        scores.iter().all(|row| row.len() == n_labels),
        "fit_label_bias: rows of scores differ in length"
    );
    assert!(
        gold.iter().all(|&g| g < n_labels),
        "fit_label_bias: a gold index is out of range"
    );
    let problem = BiasProblem {
        scores,
        gold,
        n_labels,
    };
    let mut bias = vec![0.0; n_labels];
    let mut value = problem.objective(&bias);
    for _ in 0..MAX_NEWTON_STEPS {
        let (gradient, hessian) = problem.gradient_and_negative_hessian(&bias);
        if gradient.iter().all(|g| g.abs() <= GRADIENT_TOLERANCE) {
            break;
        }
        let Some(step) = solve_positive_definite(hessian, gradient.clone()) else {
            break;
        };
        let slope: f64 = gradient.iter().zip(&step).map(|(g, s)| g * s).sum();
        let mut scale = 1.0;
        let mut improved = None;
        for _ in 0..MAX_HALVINGS {
            let candidate: Vec<f64> = std::iter::once(0.0)
                .chain(bias.iter().skip(1).zip(&step).map(|(b, s)| b + scale * s))
                .collect();
            let candidate_value = problem.objective(&candidate);
            if candidate_value >= value + 1e-4 * scale * slope {
                improved = Some((candidate, candidate_value));
                break;
            }
            scale *= 0.5;
        }
        let Some((next, next_value)) = improved else {
            break;
        };
        bias = next;
        value = next_value;
    }
    bias
}

const MAX_NEWTON_STEPS: usize = 200;
const MAX_HALVINGS: usize = 60;
const GRADIENT_TOLERANCE: f64 = 1e-12;

struct BiasProblem<'a> {
    scores: &'a [Vec<f64>],
    gold: &'a [usize],
    n_labels: usize,
}

impl BiasProblem<'_> {
    fn objective(&self, bias: &[f64]) -> f64 {
        let mut total = 0.0;
        for (row, &g) in self.scores.iter().zip(self.gold) {
            let shifted: Vec<f64> = row.iter().zip(bias).map(|(s, b)| s + b).collect();
            total += shifted.get(g).copied().unwrap_or(0.0) - log_sum_exp(&shifted);
        }
        let penalty: f64 = bias.iter().map(|b| b * b).sum();
        total / self.scores.len() as f64 - 0.5 * LABEL_BIAS_L2 * penalty
    }

    /// The gradient and the negated Hessian over the free coordinates `b[1..]`.
    fn gradient_and_negative_hessian(&self, bias: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let free = self.n_labels - 1;
        let n = self.scores.len() as f64;
        let mut gradient = vec![0.0; free];
        let mut hessian = vec![vec![0.0; free]; free];
        for (row, &g) in self.scores.iter().zip(self.gold) {
            let probabilities = softmax_shifted(row, bias);
            for (k, &p_k) in probabilities.iter().enumerate().skip(1) {
                let observed = if k == g { 1.0 } else { 0.0 };
                gradient[k - 1] += (observed - p_k) / n;
                for (l, &p_l) in probabilities.iter().enumerate().skip(1) {
                    let diagonal = if k == l { p_k } else { 0.0 };
                    hessian[k - 1][l - 1] += (diagonal - p_k * p_l) / n;
                }
            }
        }
        for (k, b) in bias.iter().enumerate().skip(1) {
            gradient[k - 1] -= LABEL_BIAS_L2 * b;
            hessian[k - 1][k - 1] += LABEL_BIAS_L2;
        }
        (gradient, hessian)
    }
}

fn log_sum_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

fn softmax_shifted(scores: &[f64], bias: &[f64]) -> Vec<f64> {
    let shifted: Vec<f64> = scores.iter().zip(bias).map(|(s, b)| s + b).collect();
    let normaliser = log_sum_exp(&shifted);
    shifted.iter().map(|s| (s - normaliser).exp()).collect()
}

/// Solves `a x = b` for a symmetric positive definite `a` by Cholesky; `None` if `a` is not.
fn solve_positive_definite(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let diagonal = a[j][j] - (0..j).map(|k| a[j][k] * a[j][k]).sum::<f64>();
        if diagonal.is_nan() || diagonal <= 0.0 {
            return None;
        }
        let root = diagonal.sqrt();
        a[j][j] = root;
        for i in j + 1..n {
            a[i][j] = (a[i][j] - (0..j).map(|k| a[i][k] * a[j][k]).sum::<f64>()) / root;
        }
    }
    for i in 0..n {
        b[i] = (b[i] - (0..i).map(|k| a[i][k] * b[k]).sum::<f64>()) / a[i][i];
    }
    for i in (0..n).rev() {
        b[i] = (b[i] - (i + 1..n).map(|k| a[k][i] * b[k]).sum::<f64>()) / a[i][i];
    }
    Some(b)
}

/// The argmax of `scores[i] + bias` for every example (the first on ties). A bias shorter than
/// a row counts as 0 for the missing labels; an empty row predicts label 0.
pub fn predict_with_bias(scores: &[Vec<f64>], bias: &[f64]) -> Vec<usize> {
    scores
        .iter()
        .map(|row| {
            let mut best = (0, f64::NEG_INFINITY);
            for (k, score) in row.iter().enumerate() {
                let shifted = score + bias.get(k).copied().unwrap_or(0.0);
                if shifted > best.1 {
                    best = (k, shifted);
                }
            }
            best.0
        })
        .collect()
}

/// The area under the ROC curve of `margins` (higher = more positive) against `positive`:
/// the probability that a random positive outranks a random negative, ties counting half.
/// `None` when either class is absent.
///
/// # Panics
/// When the two slices differ in length (a caller bug).
pub fn roc_auc(margins: &[f64], positive: &[bool]) -> Option<f64> {
    assert_eq!(
        margins.len(),
        positive.len(),
        "roc_auc: margins and labels differ in length"
    );
    let n_positive = positive.iter().filter(|&&p| p).count();
    let n_negative = positive.len() - n_positive;
    if n_positive == 0 || n_negative == 0 {
        return None;
    }
    let mut order: Vec<(f64, bool)> = margins
        .iter()
        .copied()
        .zip(positive.iter().copied())
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let tied = order[start..]
            .iter()
            .take_while(|(margin, _)| margin.total_cmp(&order[start].0).is_eq())
            .count();
        let average_rank = start as f64 + (tied as f64 + 1.0) / 2.0;
        let tied_positives = order[start..start + tied]
            .iter()
            .filter(|(_, p)| *p)
            .count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start += tied;
    }
    let (p, q) = (n_positive as f64, n_negative as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * q))
}

/// `exp(total_nll / n_tokens)`: the perplexity of `n_tokens` predicted tokens whose negative
/// log-likelihoods (natural log) sum to `total_nll`. NaN for no tokens.
pub fn perplexity(total_nll: f64, n_tokens: usize) -> f64 {
    if n_tokens == 0 {
        return f64::NAN;
    }
    (total_nll / n_tokens as f64).exp()
}

#[cfg(test)]
mod tests;
