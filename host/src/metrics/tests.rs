use super::*;
use crate::test_rng::Rng;

fn check_normalized(input: &str, expected: &str) {
    assert_eq!(
        normalize_answer(input),
        expected,
        "normalize_answer({input:?})"
    );
}

fn check_squad(prediction: &str, golds: &[&str], expected_em: f64, expected_f1: f64) {
    let em = exact_match(prediction, golds);
    let f1 = f1(prediction, golds);
    assert_eq!(em, expected_em, "exact_match({prediction:?}, {golds:?})");
    assert!(
        (f1 - expected_f1).abs() < 1e-12,
        "f1({prediction:?}, {golds:?}) = {f1}, expected {expected_f1}"
    );
}

#[test]
fn normalization_follows_the_official_script() {
    check_normalized("", "");
    check_normalized("Denver Broncos", "denver broncos");
    check_normalized("The Cat!", "cat");
    check_normalized("  a  b\t\nc ", "b c");
    check_normalized("U.S. co-operation", "us cooperation");
    check_normalized("theory then another", "theory then another");
    check_normalized("A an AN The the", "");
    check_normalized("the_end", "theend");
    check_normalized("a's", "as");
    check_normalized("a’s", "’s");
    check_normalized("“Hello”, world", "“hello” world");
    check_normalized("(the) [a] {an}", "");
    check_normalized("1,000.5 km", "10005 km");
    check_normalized("ÉCOLE the Élite", "école élite");
}

#[test]
fn exact_match_and_f1_follow_the_official_script() {
    check_squad("Denver Broncos", &["Denver Broncos"], 1.0, 1.0);
    check_squad("the Denver Broncos!", &["Denver Broncos"], 1.0, 1.0);
    check_squad("Broncos", &["Denver Broncos"], 0.0, 2.0 / 3.0);
    check_squad("Denver Broncos won", &["Denver Broncos"], 0.0, 0.8);
    check_squad("Panthers", &["Denver Broncos"], 0.0, 0.0);
    check_squad(
        "Broncos",
        &["Carolina Panthers", "Broncos", "Denver"],
        1.0,
        1.0,
    );
    check_squad("Denver", &["Carolina", "Denver Broncos"], 0.0, 2.0 / 3.0);
    check_squad("a a b", &["a b b"], 0.0, 2.0 / 3.0);
    check_squad("x x y", &["x y y"], 0.0, 2.0 / 3.0);
    check_squad("", &[""], 1.0, 0.0);
    check_squad("the", &["a"], 1.0, 0.0);
    check_squad("anything", &[], 0.0, 0.0);
}

#[test]
fn accuracy_counts_matches() {
    assert_eq!(accuracy(&[], &[]), 0.0);
    assert_eq!(accuracy(&[1, 0, 2, 2], &[1, 1, 2, 0]), 0.5);
}

#[test]
fn perplexity_is_exp_of_mean_nll() {
    assert!((perplexity(4.0 * 2f64.ln(), 4) - 2.0).abs() < 1e-12);
    assert!(perplexity(1.0, 0).is_nan());
}

#[test]
fn roc_auc_counts_ties_half() {
    assert_eq!(
        roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
        Some(0.75)
    );
    assert_eq!(roc_auc(&[1.0, 2.0], &[false, true]), Some(1.0));
    assert_eq!(roc_auc(&[2.0, 1.0], &[false, true]), Some(0.0));
    assert_eq!(roc_auc(&[1.0, 1.0, 1.0], &[false, true, true]), Some(0.5));
    assert_eq!(roc_auc(&[1.0, 2.0], &[true, true]), None);
}

#[test]
fn predict_with_bias_takes_the_first_argmax() {
    let scores = vec![vec![0.0, 1.0], vec![2.0, 2.0], vec![-1.0, -3.0]];
    assert_eq!(predict_with_bias(&scores, &[0.0, 0.0]), [1, 0, 0]);
    assert_eq!(predict_with_bias(&scores, &[0.0, -1.5]), [0, 0, 0]);
    assert_eq!(predict_with_bias(&scores, &[0.0, 2.5]), [1, 1, 1]);
    assert_eq!(predict_with_bias(&scores, &[]), [1, 0, 0]);
}

/// A label drawn from `softmax(logits)`.
fn categorical(rng: &mut Rng, logits: &[f64]) -> usize {
    let probabilities = softmax_shifted(logits, &vec![0.0; logits.len()]);
    let mut u = rng.uniform();
    for (k, p) in probabilities.iter().enumerate() {
        if u < *p {
            return k;
        }
        u -= p;
    }
    logits.len() - 1
}

/// Scores whose labels are drawn from `softmax(scores + true_bias)`.
fn biased_sample(seed: u64, n: usize, true_bias: &[f64]) -> (Vec<Vec<f64>>, Vec<usize>) {
    let mut rng = Rng(seed);
    let scores: Vec<Vec<f64>> = (0..n)
        .map(|_| true_bias.iter().map(|_| 1.5 * rng.normal()).collect())
        .collect();
    let gold = scores
        .iter()
        .map(|row| {
            let shifted: Vec<f64> = row.iter().zip(true_bias).map(|(s, b)| s + b).collect();
            categorical(&mut rng, &shifted)
        })
        .collect();
    (scores, gold)
}

#[test]
fn fit_label_bias_recovers_a_known_bias() {
    let true_bias = [0.0, 1.0, -0.7];
    let (scores, gold) = biased_sample(7, 20_000, &true_bias);
    let bias = fit_label_bias(&scores, &gold);
    assert_eq!(bias.len(), 3);
    assert_eq!(bias[0], 0.0);
    for (fitted, expected) in bias.iter().zip(true_bias) {
        assert!(
            (fitted - expected).abs() < 0.06,
            "fitted {bias:?}, true {true_bias:?}"
        );
    }
}

#[test]
fn fit_label_bias_is_deterministic_and_zero_when_unbiased() {
    let (scores, gold) = biased_sample(3, 5_000, &[0.0, 0.0]);
    let bias = fit_label_bias(&scores, &gold);
    assert_eq!(bias, fit_label_bias(&scores, &gold));
    assert!(bias[1].abs() < 0.1, "{bias:?}");
}

#[test]
fn fit_label_bias_undoes_a_shift_of_the_scores() {
    let n_labels = 3;
    let mut rng = Rng(11);
    let mut sample = |n: usize| {
        let gold: Vec<usize> = (0..n).map(|i| i % n_labels).collect();
        let scores: Vec<Vec<f64>> = gold
            .iter()
            .map(|&g| {
                (0..n_labels)
                    .map(|k| rng.normal() + if k == g { 2.0 } else { 0.0 })
                    .zip([0.0, -2.5, 1.5])
                    .map(|(s, shift)| s + shift)
                    .collect()
            })
            .collect();
        (scores, gold)
    };
    let (calibration_scores, calibration_gold) = sample(3_000);
    let (test_scores, test_gold) = sample(3_000);
    let before = accuracy(&predict_with_bias(&test_scores, &[]), &test_gold);
    let bias = fit_label_bias(&calibration_scores, &calibration_gold);
    let after = accuracy(&predict_with_bias(&test_scores, &bias), &test_gold);
    assert!(before < 0.6, "before {before}");
    assert!(after > 0.75, "after {after} with bias {bias:?}");
    assert!(
        (bias[1] - 2.5).abs() < 0.3 && (bias[2] + 1.5).abs() < 0.3,
        "{bias:?}"
    );
}

#[test]
fn fit_label_bias_keeps_an_unseen_label_finite() {
    let scores = vec![
        vec![0.0, 0.5, 0.2],
        vec![0.3, 0.0, 0.1],
        vec![1.0, 0.9, 0.8],
    ];
    let gold = [0, 1, 0];
    let bias = fit_label_bias(&scores, &gold);
    assert!(bias.iter().all(|b| b.is_finite()), "{bias:?}");
    assert!(bias[2] < bias[1] - 3.0, "{bias:?}");
    assert_eq!(
        predict_with_bias(&scores, &bias)
            .iter()
            .filter(|&&p| p == 2)
            .count(),
        0
    );
}

#[test]
fn fit_label_bias_degenerate_inputs() {
    assert!(fit_label_bias(&[], &[]).is_empty());
    assert_eq!(fit_label_bias(&[vec![0.3]], &[0]), [0.0]);
}
