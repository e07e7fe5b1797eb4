use anyhow::{Context, Result};
use faer::{Mat, MatRef, Par};

use super::methods::{OutputAlignedRoute, output_aligned};
use super::*;
use crate::test_rng::Rng;

/// A weight and calibration inputs whose coordinate `i` has scale `anisotropy^(i/(n-1))`.
pub(super) struct Problem {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) weight: Vec<f32>,
    mixing: Mat<f64>,
    pub(super) x: Mat<f64>,
    pub(super) stats: InputStats,
}

impl Problem {
    pub(super) fn new(
        seed: u64,
        rows: usize,
        cols: usize,
        n_tokens: usize,
        anisotropy: f64,
    ) -> Self {
        let mut rng = Rng(seed);
        let weight = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        let mixing = Mat::from_fn(cols, cols, |i, j| {
            let scale = anisotropy.powf(i as f64 / (cols.max(2) - 1) as f64);
            scale * if i == j { 1.0 } else { 0.3 * rng.normal() }
        });
        let x = inputs(&mut rng, mixing.as_ref(), n_tokens);
        let stats = stats_of(x.as_ref());
        Problem {
            rows,
            cols,
            weight,
            mixing,
            x,
            stats,
        }
    }

    /// Fresh inputs from the same distribution.
    pub(super) fn held_out(&self, seed: u64, n_tokens: usize) -> Mat<f64> {
        inputs(&mut Rng(seed), self.mixing.as_ref(), n_tokens)
    }

    pub(super) fn factorize(
        &self,
        method: Method,
        r_max: usize,
    ) -> Result<Factors, FactorizeError> {
        factorize(
            &self.weight,
            self.rows,
            self.cols,
            &self.stats,
            method,
            r_max,
        )
    }

    pub(super) fn w(&self) -> Mat<f64> {
        dense::from_row_major(&self.weight, self.rows, self.cols)
    }
}

/// Correlated inputs `mixing · z`, z standard normal, n × n_tokens.
fn inputs(rng: &mut Rng, mixing: MatRef<'_, f64>, n_tokens: usize) -> Mat<f64> {
    let z = Mat::from_fn(mixing.ncols(), n_tokens, |_, _| rng.normal());
    mixing * &z
}

fn stats_of(x: MatRef<'_, f64>) -> InputStats {
    InputStats {
        second_moment: x * x.transpose(),
        abs_sum: (0..x.nrows())
            .map(|i| (0..x.ncols()).map(|t| x[(i, t)].abs()).sum())
            .collect(),
        n_tokens: x.ncols() as u64,
    }
}

pub(super) fn second_moment(x: MatRef<'_, f64>) -> Mat<f64> {
    x * x.transpose()
}

/// `B_r A_r` in f64.
pub(super) fn product_at(factors: &Factors, rank: usize) -> Result<Mat<f64>> {
    let (b, a) = factors.truncated(rank)?;
    let b = dense::from_row_major(&b, factors.rows, rank);
    let a = dense::from_row_major(&a, rank, factors.cols);
    Ok(&b * &a)
}

pub(super) fn error(
    weight: &[f32],
    factors: &Factors,
    rank: usize,
    held_out: &Mat<f64>,
) -> Result<f64> {
    Ok(relative_output_error(weight, factors, rank, held_out)?)
}

fn check_optimal_on_calibration(
    seed: u64,
    rows: usize,
    cols: usize,
    ranks: &[usize],
) -> Result<()> {
    let problem = Problem::new(seed, rows, cols, 4 * cols, 30.0);
    let r_max = ranks.iter().copied().max().context("no ranks")?;
    let aligned = problem.factorize(Method::OutputAligned, r_max)?;
    for method in [Method::Svd, Method::InputPca, Method::Asvd] {
        let baseline = problem.factorize(method, r_max)?;
        for &rank in ranks {
            let ours = error(
                &problem.weight,
                &aligned,
                rank,
                &problem.stats.second_moment,
            )?;
            let theirs = error(
                &problem.weight,
                &baseline,
                rank,
                &problem.stats.second_moment,
            )?;
            assert!(
                ours <= theirs + 1e-6,
                "{rows}×{cols} rank {rank}: output_aligned {ours} > {method} {theirs}"
            );
        }
    }
    Ok(())
}

#[test]
fn output_aligned_is_optimal_on_its_calibration_statistics() -> Result<()> {
    check_optimal_on_calibration(1, 8, 16, &[1, 3, 6])?;
    check_optimal_on_calibration(2, 12, 12, &[2, 5, 9])?;
    check_optimal_on_calibration(3, 20, 8, &[1, 4, 7])?;
    Ok(())
}

fn check_beats_svd_held_out(
    seed: u64,
    rows: usize,
    cols: usize,
    rank: usize,
    margin: f64,
) -> Result<()> {
    let problem = Problem::new(seed, rows, cols, 8 * cols, 100.0);
    let held_out = second_moment(problem.held_out(seed + 100, 8 * cols).as_ref());
    let aligned = problem.factorize(Method::OutputAligned, rank)?;
    let ours = error(&problem.weight, &aligned, rank, &held_out)?;
    for method in [Method::Svd, Method::InputPca, Method::Asvd] {
        let theirs = error(
            &problem.weight,
            &problem.factorize(method, rank)?,
            rank,
            &held_out,
        )?;
        assert!(
            ours <= theirs,
            "{rows}×{cols} r={rank}: {ours} > {method} {theirs}"
        );
        if method == Method::Svd {
            assert!(
                ours < margin * theirs,
                "{rows}×{cols}: {ours} vs svd {theirs}"
            );
        }
    }
    Ok(())
}

#[test]
fn output_aligned_beats_svd_clearly_on_anisotropic_held_out_inputs() -> Result<()> {
    check_beats_svd_held_out(10, 16, 32, 6, 0.5)?;
    check_beats_svd_held_out(11, 24, 24, 6, 0.5)?;
    check_beats_svd_held_out(12, 40, 16, 4, 0.5)?;
    Ok(())
}

/// `U_r U_rᵀ` from the leading `r` columns of `u`.
fn projector(u: MatRef<'_, f64>, r: usize) -> Mat<f64> {
    let ur = u.subcols(0, r);
    ur * ur.transpose()
}

fn max_abs_difference(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    (a - b).norm_max()
}

fn check_routes_agree(seed: u64, rows: usize, cols: usize) -> Result<()> {
    let problem = Problem::new(seed, rows, cols, 3 * cols, 10.0);
    let w = problem.w();
    let k = rows.min(cols);
    let decomposed = |route| output_aligned(w.as_ref(), &problem.stats, k, route, Par::Seq);
    let eigen = decomposed(OutputAlignedRoute::Eigen)?;
    let svd = decomposed(OutputAlignedRoute::Svd)?;
    let e_eigen = eigen.error_curve.context("eigen route: no curve")?;
    let e_svd = svd.error_curve.context("svd route: no curve")?;
    for (r, (a, b)) in e_eigen.iter().zip(&e_svd).enumerate() {
        assert!((a - b).abs() < 1e-9, "{rows}×{cols} e({r}): {a} vs {b}");
    }
    for r in 1..k {
        let difference = max_abs_difference(
            projector(eigen.b.as_ref(), r).as_ref(),
            projector(svd.b.as_ref(), r).as_ref(),
        );
        assert!(
            difference < 1e-8,
            "{rows}×{cols} projector r={r}: {difference}"
        );
    }
    Ok(())
}

#[test]
fn output_aligned_eigen_and_svd_routes_agree() -> Result<()> {
    check_routes_agree(20, 6, 10)?;
    check_routes_agree(21, 9, 9)?;
    check_routes_agree(22, 14, 7)?;
    Ok(())
}

fn check_error_curve(seed: u64, rows: usize, cols: usize) -> Result<()> {
    let problem = Problem::new(seed, rows, cols, 2 * cols, 10.0);
    let k = rows.min(cols);
    let factors = problem.factorize(Method::OutputAligned, k)?;
    let curve = factors.error_curve.clone().context("no error curve")?;
    assert_eq!(curve.len(), k + 1);
    assert!(
        (curve[0] - 1.0).abs() < 1e-12 && curve[k].abs() < 1e-12,
        "{curve:?}"
    );
    for (rank, e) in curve.iter().enumerate() {
        let measured = error(
            &problem.weight,
            &factors,
            rank,
            &problem.stats.second_moment,
        )?;
        assert!(
            (measured * measured - e).abs() < 1e-6,
            "{rows}×{cols} r={rank}: {} vs e(r) {e}",
            measured * measured
        );
    }
    assert!(curve.windows(2).all(|pair| pair[1] <= pair[0]));
    Ok(())
}

#[test]
fn error_curve_is_the_closed_form_calibration_error() -> Result<()> {
    check_error_curve(30, 5, 11)?;
    check_error_curve(31, 8, 8)?;
    check_error_curve(32, 13, 6)?;
    Ok(())
}

fn check_full_rank_reproduces(seed: u64, rows: usize, cols: usize, method: Method) -> Result<()> {
    let problem = Problem::new(seed, rows, cols, 2 * cols, 10.0);
    let k = rows.min(cols);
    let factors = problem.factorize(method, k)?;
    let w = problem.w();
    let difference = max_abs_difference(w.as_ref(), product_at(&factors, k)?.as_ref());
    assert!(difference < 1e-4, "{method} {rows}×{cols}: {difference}");
    Ok(())
}

#[test]
fn full_rank_factors_reproduce_the_weight() -> Result<()> {
    for method in [Method::Svd, Method::OutputAligned, Method::Asvd] {
        check_full_rank_reproduces(40, 6, 10, method)?;
        check_full_rank_reproduces(41, 10, 10, method)?;
        check_full_rank_reproduces(42, 12, 5, method)?;
    }
    check_full_rank_reproduces(43, 12, 5, Method::InputPca)?;
    check_full_rank_reproduces(44, 7, 7, Method::InputPca)?;
    Ok(())
}

fn check_keep(rows: usize, cols: usize, keep: f64, expected: Option<usize>) {
    assert_eq!(
        rank_for_keep(keep, rows, cols),
        expected,
        "{rows}×{cols} k={keep}"
    );
}

#[test]
fn rank_for_keep_rounds_down_to_multiples_of_eight() {
    check_keep(576, 576, 0.5, Some(144));
    check_keep(192, 576, 1.0, None);
    check_keep(192, 576, 1.5, None);
    check_keep(576, 1536, 0.1, Some(40));
    // floor(0.9 · 1536·576/2112) = 377 → 376, and 376 · 2112 < 1536 · 576: it does save.
    check_keep(1536, 576, 0.9, Some(376));
    check_keep(576, 576, 1e-6, Some(8));
    check_keep(576, 576, 0.0, Some(8));
    check_keep(576, 576, -0.5, Some(8));
    check_keep(576, 576, f64::NAN, None);
    check_keep(8, 8, 0.5, None);
    check_keep(16, 16, 0.5, None);
    check_keep(24, 24, 0.1, Some(8));
}

#[test]
fn max_useful_rank_is_the_largest_saving_multiple_of_eight() {
    for (rows, cols, expected) in [
        (576, 576, 280),
        (1536, 576, 416),
        (576, 1536, 416),
        (192, 576, 136),
        (64, 64, 24),
        (8, 8, 8),
    ] {
        assert_eq!(max_useful_rank(rows, cols), expected, "{rows}×{cols}");
    }
}

fn check_degenerate(rows: usize, cols: usize, stats: &InputStats, warned: &[Method]) -> Result<()> {
    let weight: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7) % 11) as f32 - 5.0)
        .collect();
    let k = rows.min(cols);
    for method in Method::ALL {
        let factors = factorize(&weight, rows, cols, stats, method, k)?;
        let finite = factors.b.iter().chain(&factors.a).all(|v| v.is_finite())
            && (factors.error_curve.iter().flatten()).all(|e| e.is_finite());
        assert!(finite, "{method} {rows}×{cols}: non-finite factors");
        if warned.contains(&method) {
            assert!(
                factors
                    .warnings
                    .iter()
                    .any(|w| w.contains("rank-deficient")),
                "{method}: {:?}",
                factors.warnings
            );
        }
        let held_out = Mat::<f64>::identity(cols, cols);
        assert!(error(&weight, &factors, k / 2, &held_out)?.is_finite());
    }
    Ok(())
}

#[test]
fn zero_second_moment_gives_finite_factors_and_a_warning() -> Result<()> {
    let data = [Method::OutputAligned, Method::InputPca, Method::Asvd];
    for (rows, cols) in [(6, 16), (24, 16)] {
        let stats = InputStats {
            second_moment: Mat::zeros(cols, cols),
            abs_sum: vec![0.0; cols],
            n_tokens: 0,
        };
        check_degenerate(rows, cols, &stats, &data)?;
    }
    Ok(())
}

#[test]
fn too_few_tokens_give_finite_factors_and_a_warning() -> Result<()> {
    let data = [Method::OutputAligned, Method::InputPca, Method::Asvd];
    for (rows, cols) in [(6, 16), (24, 16), (16, 16)] {
        let problem = Problem::new(70, rows, cols, 3, 10.0);
        check_degenerate(rows, cols, &problem.stats, &data)?;
        let factors = problem.factorize(Method::OutputAligned, 3)?;
        assert!(factors.warnings.iter().any(|w| w.contains("ridge")));
        let curve = factors.error_curve.context("no error curve")?;
        assert!(
            curve[3] < 1e-3,
            "three tokens are almost exactly captured: {curve:?}"
        );
    }
    Ok(())
}

#[test]
fn factorize_all_preserves_order_and_matches_sequential_runs() -> Result<()> {
    let problems = [
        Problem::new(80, 12, 20, 40, 10.0),
        Problem::new(81, 20, 12, 40, 10.0),
        Problem::new(82, 16, 16, 40, 10.0),
    ];
    let jobs: Vec<Job<'_>> = problems
        .iter()
        .flat_map(|p| {
            Method::ALL.into_iter().map(move |method| Job {
                weight: &p.weight,
                rows: p.rows,
                cols: p.cols,
                stats: &p.stats,
                method,
                r_max: 5,
            })
        })
        .collect();
    let parallel = factorize_all(&jobs);
    assert_eq!(parallel.len(), jobs.len());
    for (job, result) in jobs.iter().zip(parallel) {
        let expected = factorize(job.weight, job.rows, job.cols, job.stats, job.method, 5)?;
        let actual = result?;
        assert_eq!(
            (actual.method, actual.rows, actual.cols),
            (job.method, job.rows, job.cols)
        );
        assert_eq!(actual.b, expected.b);
        assert_eq!(actual.a, expected.a);
        assert_eq!(actual.error_curve, expected.error_curve);
    }
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let problem = Problem::new(90, 4, 6, 12, 1.0);
    let run = |weight: &[f32], stats: &InputStats, r_max| {
        factorize(weight, 4, 6, stats, Method::OutputAligned, r_max)
    };
    assert!(matches!(
        run(&problem.weight[1..], &problem.stats, 2),
        Err(FactorizeError::WeightShape { .. })
    ));
    let mut nan_weight = problem.weight.clone();
    nan_weight[3] = f32::NAN;
    assert!(matches!(
        run(&nan_weight, &problem.stats, 2),
        Err(FactorizeError::NonFiniteWeight { .. })
    ));
    let mut nan_stats = problem.stats.clone();
    nan_stats.second_moment[(2, 1)] = f64::INFINITY;
    assert!(matches!(
        run(&problem.weight, &nan_stats, 2),
        Err(FactorizeError::BadStatistics { .. })
    ));
    for r_max in [0, 5] {
        assert!(matches!(
            run(&problem.weight, &problem.stats, r_max),
            Err(FactorizeError::Rank { .. })
        ));
    }
    let factors = problem.factorize(Method::Svd, 2)?;
    assert!(matches!(
        relative_output_error(&problem.weight, &factors, 3, &problem.stats.second_moment),
        Err(FactorizeError::RankAboveStored { .. })
    ));
    Ok(())
}

#[test]
fn method_names_round_trip() -> Result<()> {
    for method in Method::ALL {
        assert_eq!(method.name().parse::<Method>()?, method);
        assert_eq!(method.to_string(), method.name());
    }
    assert!("pca".parse::<Method>().is_err());
    Ok(())
}

/// The refitted down of `width` neurons, expanded back to every neuron (zeros elsewhere).
fn neurons_product(
    selection: &NeuronSelection,
    rows: usize,
    cols: usize,
    width: usize,
) -> Mat<f64> {
    let refit = selection.refit_down(width);
    let kept = selection.kept(width);
    let mut m = Mat::zeros(rows, cols);
    for i in 0..rows {
        for (s, &j) in kept.iter().enumerate() {
            m[(i, j)] = f64::from(refit[i * width + s]);
        }
    }
    m
}

#[test]
fn neuron_refit_is_the_nystrom_form_and_its_error_curve_is_exact() -> Result<()> {
    let (rows, cols) = (6, 14);
    let problem = Problem::new(21, rows, cols, 400, 30.0);
    let c = problem.stats.second_moment.as_ref();
    let selection = select_neurons(&problem.weight, rows, cols, c, cols - 1)?;
    assert_eq!(selection.max_width(), cols - 1);
    let mut distinct = selection.order.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), cols - 1, "every neuron picked once");
    let w = problem.w();
    let total = (&w * c * w.transpose()).diagonal().column_vector().sum();
    for width in [1, 3, 7, cols - 1] {
        let kept = selection.kept(width);
        // W C[:,S] C[S,S]⁻¹ by a dense solve.
        let c_ss = Mat::from_fn(width, width, |a, b| c[(kept[a], kept[b])]);
        let w_cs = Mat::from_fn(rows, width, |i, b| {
            (0..cols).map(|j| w[(i, j)] * c[(j, kept[b])]).sum::<f64>()
        });
        let expected =
            w_cs * faer::linalg::solvers::DenseSolveCore::inverse(&c_ss.partial_piv_lu());
        let refit = selection.refit_down(width);
        for i in 0..rows {
            for b in 0..width {
                let got = f64::from(refit[i * width + b]);
                let want = expected[(i, b)];
                assert!(
                    (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "width {width}: {got} vs {want}"
                );
            }
        }
        // The curve is the relative output error of that refit on the statistics.
        let diff = &w - neurons_product(&selection, rows, cols, width);
        let err = (&diff * c * diff.transpose())
            .diagonal()
            .column_vector()
            .sum()
            / total;
        let curve = selection.error_curve[width];
        assert!(
            (err - curve).abs() < 1e-4,
            "width {width}: {err} vs curve {curve}"
        );
    }
    assert!(
        selection
            .error_curve
            .windows(2)
            .all(|e| e[1] <= e[0] + 1e-12)
    );
    // The first pick is the single neuron that explains most of the output.
    let gain = |j: usize| {
        let wc: f64 = (0..rows)
            .map(|i| {
                (0..cols)
                    .map(|k| w[(i, k)] * c[(k, j)])
                    .sum::<f64>()
                    .powi(2)
            })
            .sum();
        wc / c[(j, j)]
    };
    let best = (0..cols)
        .max_by(|&a, &b| gain(a).total_cmp(&gain(b)))
        .context("a neuron")?;
    assert_eq!(selection.order[0], best);
    Ok(())
}

#[test]
fn neuron_selection_refuses_a_wrong_shape() {
    let c = Mat::<f64>::identity(4, 4);
    assert!(select_neurons(&[1.0; 12], 3, 5, c.as_ref(), 2).is_err());
    assert!(select_neurons(&[1.0; 12], 3, 4, c.as_ref(), 2).is_ok());
    let nan = Mat::from_fn(4, 4, |_, _| f64::NAN);
    assert!(select_neurons(&[1.0; 12], 3, 4, nan.as_ref(), 2).is_err());
}

#[test]
fn a_selection_rebuilt_from_its_order_refits_the_same_down() -> Result<()> {
    let (rows, cols) = (6, 14);
    let problem = Problem::new(22, rows, cols, 400, 30.0);
    let c = problem.stats.second_moment.as_ref();
    let selection = select_neurons(&problem.weight, rows, cols, c, cols - 1)?;
    let rebuilt = NeuronSelection::from_order(
        &problem.weight,
        rows,
        cols,
        c,
        selection.order.clone(),
        selection.error_curve.clone(),
    )?;
    for width in [1, 5, cols - 1] {
        let (a, b) = (selection.refit_down(width), rebuilt.refit_down(width));
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() < 1e-4 * (1.0 + x.abs()),
                "width {width}: {x} vs {y}"
            );
        }
    }
    // An order that repeats a neuron, names one the MLP lacks, or lacks an error per width
    // is refused.
    let curve = selection.error_curve.clone();
    let mut repeated = selection.order.clone();
    repeated[1] = repeated[0];
    let mut outside = selection.order.clone();
    outside[0] = cols;
    for (order, curve) in [
        (repeated, curve.clone()),
        (outside, curve.clone()),
        (selection.order.clone(), curve[1..].to_vec()),
    ] {
        let error = NeuronSelection::from_order(&problem.weight, rows, cols, c, order, curve);
        assert!(
            matches!(error, Err(FactorizeError::NeuronOrder { .. })),
            "{error:?}"
        );
    }
    Ok(())
}
