//! The search's parts on their own: settings, fitness, genomes, operators, water-filling.

use super::operators::{generation_rng, mutate, uniform_crossover};
use super::*;
use crate::model::synthetic::tiny_config;
use crate::prune::RankPlan;

fn check_invalid(change: impl FnOnce(&mut SearchConfig), setting: &str) {
    let mut config = SearchConfig::default();
    change(&mut config);
    let error = config.validate().expect_err("the config must be refused");
    let message = error.to_string();
    assert!(
        message.contains(setting),
        "{message:?} does not name {setting}"
    );
    assert!(message.contains("fix"), "{message:?} gives no fix");
}

#[test]
fn default_config_is_valid() {
    assert!(SearchConfig::default().validate().is_ok());
    let config = SearchConfig::default();
    assert_eq!(config.mutation_probability(210), 2.0 / 210.0);
    assert_eq!(config.mutation_probability(1), 1.0);
}

#[test]
fn settings_out_of_range_are_refused() {
    check_invalid(|c| c.population = 1, "population");
    check_invalid(|c| c.tournament = 0, "tournament");
    check_invalid(|c| c.tournament = 33, "tournament");
    check_invalid(|c| c.elitism = 32, "elitism");
    check_invalid(|c| c.crossover_p = 1.5, "crossover_p");
    check_invalid(|c| c.crossover_p = -0.1, "crossover_p");
    check_invalid(|c| c.crossover_p = f64::NAN, "crossover_p");
    check_invalid(|c| c.mutation_p = Some(2.0), "mutation_p");
    check_invalid(|c| c.epsilon = 0.0, "epsilon");
    check_invalid(|c| c.epsilon = 1.0, "epsilon");
    check_invalid(|c| c.patience = 0, "patience");
    check_invalid(|c| c.max_generations = 0, "max_generations");
    check_invalid(|c| c.early_reject_margin = -0.01, "early_reject_margin");
    check_invalid(|c| c.sigmoid_sharpness = 0.0, "sigmoid_sharpness");
    check_invalid(|c| c.infeasibility_penalty = 0.0, "infeasibility_penalty");
    check_invalid(|c| c.uniform_seed_levels = vec![12], "uniform_seed_levels");
}

#[test]
fn levels_must_descend_from_one() {
    for keeps in [
        vec![0.9, 0.5],
        vec![1.0],
        vec![1.0, 0.5, 0.5],
        vec![1.0, 0.5, 0.7],
        vec![1.0, 0.5, 0.0],
    ] {
        let unchecked: Levels =
            serde_json::from_value(serde_json::json!(keeps)).expect("a list of numbers");
        check_invalid(|c| c.levels = unchecked, "levels");
        assert!(Levels::new(keeps).is_err());
    }
    assert!(Levels::new(vec![1.0, f64::NAN]).is_err());
    assert!(Levels::new(vec![1.0; 257]).is_err());
    assert!(Levels::new(vec![1.0, 0.5, 0.25]).is_ok());
}

#[test]
fn config_reads_from_toml_with_defaults() {
    let config: SearchConfig =
        toml::from_str("population = 16\nseed = 7\nabsolute = true").expect("a valid config");
    assert_eq!(config.population, 16);
    assert_eq!(config.seed, 7);
    assert!(config.absolute);
    assert_eq!(config.tournament, 3);
    assert!(toml::from_str::<SearchConfig>("populaton = 16").is_err());
}

#[test]
fn target_is_relative_or_absolute() {
    let relative = SearchConfig::default();
    assert!((target_accuracy(0.8, &relative) - 0.76).abs() < 1e-12);
    let absolute = SearchConfig {
        absolute: true,
        epsilon: 0.02,
        ..SearchConfig::default()
    };
    assert!((target_accuracy(0.8, &absolute) - 0.78).abs() < 1e-12);
}

fn over_budget(cost: f64, memory_excess: f64, latency_excess: f64) -> Cost {
    Cost {
        cost,
        memory_excess,
        latency_excess,
    }
}

fn check_fitness(accuracy: f64, cost: Cost, expected: f64) {
    let got = fitness(accuracy, 0.8, &cost, &SearchConfig::default());
    assert!(
        (got - expected).abs() < 1e-9,
        "{accuracy} {cost:?}: {got}, not {expected}"
    );
}

#[test]
fn fitness_by_hand() {
    check_fitness(0.8, Cost::fits(0.5), 0.25);
    check_fitness(0.8, Cost::fits(1.0), 0.0);
    check_fitness(0.8, Cost::fits(1.5), 0.0);
    check_fitness(0.8 + 0.02, Cost::fits(0.0), 1.0 / (1.0 + (-1.0f64).exp()));
    check_fitness(0.8, over_budget(0.5, 0.2, 0.0), 0.25 - 1.0 - 0.2);
    check_fitness(0.8, over_budget(0.5, 0.1, 0.3), 0.25 - 1.0 - 0.4);
}

#[test]
fn over_budget_genomes_rank_below_every_genome_within_budget() {
    let config = SearchConfig::default();
    let accuracies = [0.0, 0.5, 0.79, 0.8, 0.81, 0.9, 1.0];
    let costs = [0.0, 0.1, 0.5, 0.99, 1.0];
    let excesses = [1e-12, 1e-3, 0.1, 1.0, 10.0];
    for &accuracy in &accuracies {
        let worst_within = costs
            .iter()
            .map(|&c| fitness(accuracy, 0.8, &Cost::fits(c), &config))
            .fold(f64::INFINITY, f64::min);
        for &cost in &costs {
            let mut previous = f64::INFINITY;
            for &excess in &excesses {
                let f = fitness(accuracy, 0.8, &over_budget(cost, excess, 0.0), &config);
                assert!(
                    f < worst_within,
                    "{accuracy} {cost} {excess}: {f} ≥ {worst_within}"
                );
                assert!(f < previous, "a larger excess must rank lower");
                previous = f;
                let latency = fitness(accuracy, 0.8, &over_budget(cost, 0.0, excess), &config);
                assert_eq!(f, latency);
            }
        }
    }
}

#[test]
fn genome_to_plan_uses_the_levels_keep_fractions() {
    let config = tiny_config();
    let levels = Levels::default();
    let n = Genome::n_genes(&config, false, false);
    let dense = Genome::uniform(n, 0).to_plan(&config, &levels);
    assert_eq!(dense.ok(), Some(RankPlan::dense(&config)));
    let matrices = |level| Genome::uniform(config.n_prunable_matrices(), level);
    let half = Genome::assemble(&config, matrices(6), [0, 0, 0], None).to_plan(&config, &levels);
    assert_eq!(half.ok(), Some(RankPlan::uniform(&config, 0.5)));
    let mut mixed = Genome::uniform(n, 0);
    mixed.0[crate::prune::matrix_index(1, whittle_runtime::MatrixKind::Up)] = 6;
    let plan = mixed.to_plan(&config, &levels).expect("a valid genome");
    let expected = RankPlan::uniform(&config, 0.5);
    assert_eq!(
        plan.rank(1, whittle_runtime::MatrixKind::Up),
        expected.rank(1, whittle_runtime::MatrixKind::Up)
    );
    assert_eq!(plan.rank(0, whittle_runtime::MatrixKind::Up), None);
    assert!(matches!(
        Genome::uniform(n - 1, 0).to_plan(&config, &levels),
        Err(SearchError::GenomeLength { .. })
    ));
    assert!(matches!(
        Genome::uniform(n, 12).to_plan(&config, &levels),
        Err(SearchError::LevelOutOfRange { level: 12, .. })
    ));
}

#[test]
fn a_width_gene_prunes_its_blocks_mlp_by_neurons_instead_of_factor_pairs() {
    use whittle_runtime::MatrixKind;
    let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
    let levels = Levels::default();
    let matrices = Genome::uniform(config.n_prunable_matrices(), 2);
    let mut genome = Genome::assemble(&config, matrices, [0, 0, 0], None);
    // Block 3's MLP at level 4 (keep 0.7): floor(0.7 · 1536) = 1075 → 1072 neurons.
    genome.0[Genome::mlp_gene(&config, 3)] = 4;
    let plan = genome.to_plan(&config, &levels).expect("a valid genome");
    assert_eq!(width_for_keep(0.7, 1536), Some(1072));
    assert_eq!(plan.mlp_width(3), Some(1072));
    assert_eq!(plan.mlp_width(2), None);
    for kind in [MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down] {
        assert_eq!(plan.rank(3, kind), None, "no factor pair under a width");
        assert!(plan.rank(2, kind).is_some());
    }
    assert!(
        plan.rank(3, MatrixKind::Q).is_some(),
        "attention keeps its factor pairs"
    );
    // Exact count: the block's MLP keeps 3 · 1072 · 576 parameters.
    let without = RankPlan::uniform(&config, 0.9);
    let r = crate::prune::reductions(&config, &plan, None);
    let r0 = crate::prune::reductions(&config, &without, None);
    let mlp_ranks: usize = [MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down]
        .into_iter()
        .map(|kind| without.rank(3, kind).unwrap_or(0) * 2112)
        .sum();
    assert_eq!(
        r.kept_linear_params,
        r0.kept_linear_params - mlp_ranks + 3 * 1072 * 576
    );
    assert_eq!(width_for_keep(1.0, 1536), None);
    assert_eq!(width_for_keep(0.001, 1536), Some(8));
    assert_eq!(width_for_keep(f64::NAN, 1536), None);
}

#[test]
fn a_value_gene_prunes_its_blocks_value_heads_and_the_last_level_skips_a_sub_block() {
    use whittle_runtime::{BlockWidths, MatrixKind};
    let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
    let levels = Levels::default();
    let most_pruned = levels.most_pruned();
    let matrices = Genome::uniform(config.n_prunable_matrices(), 2);
    let mut genome = Genome::assemble(&config, matrices, [0, 0, 0], None);
    // Block 3's value heads at level 6 (keep 0.5): 32 of 64 dimensions; block 4's attention
    // and block 5's MLP at the last level: skipped.
    genome.0[Genome::value_gene(&config, 3)] = 6;
    genome.0[Genome::value_gene(&config, 4)] = most_pruned;
    genome.0[Genome::mlp_gene(&config, 5)] = most_pruned;
    let plan = genome.to_plan(&config, &levels).expect("a valid genome");
    assert_eq!(value_width_for_keep(0.5, 64), Some(32));
    assert_eq!(plan.value_width(3), Some(32));
    assert_eq!(plan.value_width(4), Some(0));
    assert_eq!(plan.mlp_width(5), Some(0));
    assert_eq!(plan.value_width(2), None);
    for kind in [MatrixKind::V, MatrixKind::O] {
        assert_eq!(
            plan.rank(3, kind),
            None,
            "no factor pair under a value width"
        );
        assert!(plan.changes(3, kind));
    }
    assert!(
        plan.rank(3, MatrixKind::Q).is_some(),
        "q keeps its factor pair"
    );
    for kind in [MatrixKind::Q, MatrixKind::K, MatrixKind::V, MatrixKind::O] {
        assert_eq!(
            plan.rank(4, kind),
            None,
            "a skipped attention has no factors"
        );
        assert!(plan.changes(4, kind));
    }
    assert_eq!(
        plan.block_widths(&config, 4),
        BlockWidths {
            mlp: config.intermediate_size,
            value: 0,
            pairs: 0,
        }
    );
    // Exact count: block 3's v and o keep 3·32·576 + 576·9·32; block 4 keeps its MLP's
    // factor pairs only; block 5 its attention's.
    let r = crate::prune::reductions(&config, &plan, None);
    let r0 = crate::prune::reductions(&config, &RankPlan::uniform(&config, 0.9), None);
    // Every other block's matrices are factor pairs at level 2, as block 2's.
    let pairs = |kinds: &[MatrixKind]| factor_params(&config, &plan, 2, kinds);
    let attention = [MatrixKind::Q, MatrixKind::K, MatrixKind::V, MatrixKind::O];
    let mlp = [MatrixKind::Gate, MatrixKind::Up, MatrixKind::Down];
    let expected = r0.kept_linear_params - pairs(&[MatrixKind::V, MatrixKind::O])
        + 3 * 32 * 576
        + 576 * 9 * 32
        - pairs(&attention)
        - pairs(&mlp);
    assert_eq!(r.kept_linear_params, expected);
    assert_eq!(value_width_for_keep(1.0, 64), None);
    assert_eq!(value_width_for_keep(0.001, 64), Some(1));
    assert_eq!(value_width_for_keep(f64::NAN, 64), None);
}

#[test]
fn a_pair_gene_prunes_its_blocks_query_key_heads_by_whole_rotary_pairs() {
    use whittle_runtime::{BlockWidths, MatrixKind};
    let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
    let levels = Levels::default();
    let most_pruned = levels.most_pruned();
    let matrices = Genome::uniform(config.n_prunable_matrices(), 2);
    let mut genome = Genome::assemble(&config, matrices, [0, 0, 0], None);
    // Block 3's pairs at level 6 (keep 0.5): 16 of 32; block 4's at the last level (0.05):
    // one pair; block 5's attention skipped, its pair gene then moot.
    genome.0[Genome::pair_gene(&config, 3)] = 6;
    genome.0[Genome::pair_gene(&config, 4)] = most_pruned;
    genome.0[Genome::pair_gene(&config, 5)] = 6;
    genome.0[Genome::value_gene(&config, 5)] = most_pruned;
    let plan = genome.to_plan(&config, &levels).expect("a valid genome");
    assert_eq!(pairs_for_keep(0.5, 32), Some(16));
    assert_eq!(plan.pairs(3), Some(16));
    assert_eq!(plan.pairs(4), Some(1));
    assert_eq!(plan.pairs(5), None, "a skipped attention keeps no pairs");
    assert_eq!(plan.pairs(2), None);
    for kind in [MatrixKind::Q, MatrixKind::K] {
        assert_eq!(
            plan.rank(3, kind),
            None,
            "no factor pair under rotary pairs"
        );
        assert!(plan.changes(3, kind));
    }
    assert!(
        plan.rank(3, MatrixKind::V).is_some(),
        "v keeps its factor pair"
    );
    assert_eq!(
        plan.block_widths(&config, 3),
        BlockWidths {
            mlp: config.intermediate_size,
            value: config.head_dim(),
            pairs: 16,
        }
    );
    // Exact count against block 2 (factor pairs at level 2): block 3's q and k keep
    // 9·2·16·576 + 3·2·16·576, block 4's 9·2·576 + 3·2·576.
    let r = crate::prune::reductions(&config, &plan, None);
    let r0 = crate::prune::reductions(&config, &RankPlan::uniform(&config, 0.9), None);
    let factor = |kinds: &[MatrixKind]| factor_params(&config, &plan, 2, kinds);
    let qk = [MatrixKind::Q, MatrixKind::K];
    let attention = [MatrixKind::Q, MatrixKind::K, MatrixKind::V, MatrixKind::O];
    let expected =
        r0.kept_linear_params - 2 * factor(&qk) + (9 + 3) * 2 * 16 * 576 + (9 + 3) * 2 * 576
            - factor(&attention);
    assert_eq!(r.kept_linear_params, expected);
    assert_eq!(pairs_for_keep(1.0, 32), None);
    assert_eq!(pairs_for_keep(0.001, 32), Some(1));
}

#[test]
fn the_exit_gene_spans_every_block_to_a_quarter_of_the_model() {
    // 30 blocks, 12 levels: 30, 28, …, 8, in whole steps of two blocks, above a quarter.
    let exits: Vec<usize> = (0..12).map(|level| exit_for_level(30, 12, level)).collect();
    assert_eq!(exits, (0..12).map(|l| 30 - 2 * l).collect::<Vec<_>>());
    assert_eq!(min_exit(30), 7);
    assert_eq!(exit_for_level(30, 4, 3), 7, "never below a quarter");
    assert_eq!(exit_for_level(1, 12, 11), 1);

    let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
    let levels = Levels::default();
    let n = Genome::n_genes(&config, false, false);
    let plain = Genome::uniform(n, 2);
    let with_exit = plain.clone().with_exit_level(&config, 6);
    assert_eq!(with_exit.len(), n + 1);
    let plan = with_exit.to_plan(&config, &levels).expect("a valid genome");
    assert_eq!(plan.exit(), exit_for_level(30, 12, 6));
    assert_eq!(
        plan.ranks(),
        plain.to_plan(&config, &levels).unwrap().ranks()
    );
    assert_eq!(plain.to_plan(&config, &levels).unwrap().exit(), 30);
    assert!(matches!(
        plain
            .clone()
            .with_exit_level(&config, 12)
            .to_plan(&config, &levels),
        Err(SearchError::LevelOutOfRange { level: 12, .. })
    ));
}

#[test]
fn mutation_moves_genes_one_level_within_range() {
    let mut rng = generation_rng(1, 0);
    let parent = Genome(vec![0, 5, 10, 0, 5, 10]);
    for _ in 0..50 {
        let mut child = parent.clone();
        mutate(&mut rng, &mut child, 1.0, &[10; 6]);
        for (&p, &c) in parent.levels().iter().zip(child.levels()) {
            assert!(c <= 10 && p.abs_diff(c) <= 1, "{p} → {c}");
        }
    }
    let mut unchanged = parent.clone();
    mutate(&mut rng, &mut unchanged, 0.0, &[10; 6]);
    assert_eq!(unchanged, parent);
}

#[test]
fn a_two_level_gene_flips_and_stays_within_its_levels() {
    let mut rng = generation_rng(3, 0);
    let parent = Genome(vec![0, 1, 5]);
    for _ in 0..20 {
        let mut child = parent.clone();
        mutate(&mut rng, &mut child, 1.0, &[1, 1, 10]);
        assert_eq!(&child.levels()[..2], &[1, 0]);
    }
}

#[test]
fn crossover_takes_each_gene_from_a_parent() {
    let mut rng = generation_rng(2, 0);
    let (first, second) = (Genome(vec![0; 64]), Genome(vec![9; 64]));
    let child = uniform_crossover(&mut rng, &first, &second);
    assert!(child.levels().iter().all(|&l| l == 0 || l == 9));
    assert!(child.levels().contains(&0) && child.levels().contains(&9));
}

#[test]
fn generation_streams_differ_and_repeat() {
    use rand::Rng;
    let draw = |seed, generation| generation_rng(seed, generation).random::<u64>();
    assert_eq!(draw(1, 3), draw(1, 3));
    assert_ne!(draw(1, 3), draw(1, 4));
    assert_ne!(draw(1, 3), draw(2, 3));
}

/// Three levels (dense, half, a tenth) and 100, 50, 10 bytes per matrix.
fn check_water_filling(errors: &[[f64; 3]], budget_fraction: f64, expected: &[u8]) {
    let errors: Vec<Vec<f64>> = errors.iter().map(|e| e.to_vec()).collect();
    let bytes = vec![vec![100.0, 50.0, 10.0]; errors.len()];
    let genome = water_filling(&errors, &bytes, budget_fraction).expect("valid curves");
    assert_eq!(genome.levels(), expected, "budget {budget_fraction}");
}

#[test]
fn water_filling_gives_levels_where_error_drops_steeply() {
    let steep_then_flat = [[0.0, 0.5, 1.0], [0.0, 0.01, 0.02]];
    check_water_filling(&steep_then_flat, 0.0, &[2, 2]);
    check_water_filling(&steep_then_flat, 0.35, &[1, 2]);
    check_water_filling(&steep_then_flat, 0.55, &[0, 2]);
    check_water_filling(&steep_then_flat, 0.8, &[0, 1]);
    check_water_filling(&steep_then_flat, 1.0, &[0, 0]);
    let flat_then_steep = [[0.0, 0.01, 0.02], [0.0, 0.5, 1.0]];
    check_water_filling(&flat_then_steep, 0.35, &[2, 1]);
    // Equal curves: ties go to the lower matrix index.
    check_water_filling(&[[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]], 0.35, &[1, 2]);
}

#[test]
fn water_filling_takes_free_levels_and_refuses_bad_curves() {
    let errors = vec![vec![0.0, 0.0, 1.0], vec![0.0, 0.3, 0.6]];
    let bytes = vec![vec![50.0, 50.0, 10.0], vec![100.0, 50.0, 10.0]];
    let genome = water_filling(&errors, &bytes, 0.4).expect("valid curves");
    assert_eq!(genome.levels(), &[0, 2]);
    let seeds = water_filling_seeds(&errors, &bytes, &[0.0, 0.4, 0.41, 1.0]).expect("valid");
    assert_eq!(seeds.len(), 3);
    assert!(water_filling(&errors, &bytes[..1], 0.5).is_err());
    assert!(water_filling(&errors, &bytes, -0.5).is_err());
    let nan = vec![vec![0.0, f64::NAN, 1.0], vec![0.0, 0.3, 0.6]];
    assert!(water_filling(&nan, &bytes, 0.5).is_err());
    let ragged = vec![vec![0.0, 1.0], vec![0.0, 0.3, 0.6]];
    assert!(water_filling(&ragged, &bytes, 0.5).is_err());
}

#[test]
fn among_admissible_genomes_the_cheapest_ranks_first_whatever_its_margin() {
    use super::operators::Score;
    let score = |fitness: f64, admissible: bool, cost: f64| Score {
        fitness,
        signal: 0.0,
        admissible,
        full: true,
        cost,
    };
    // A wide accuracy margin gives more fitness; the answer is still the smaller model.
    let wide_margin = score(0.33, true, 0.58);
    let cheaper = score(0.26, true, 0.55);
    assert!(cheaper.cmp_rank(&wide_margin).is_gt());
    // An admissible genome outranks any inadmissible one, however cheap.
    let too_inaccurate = score(0.30, false, 0.20);
    assert!(wide_margin.cmp_rank(&too_inaccurate).is_gt());
    // Among inadmissible genomes fitness decides, so the search can climb out.
    assert!(
        score(0.2, false, 0.9)
            .cmp_rank(&score(0.1, false, 0.1))
            .is_gt()
    );
}

/// Parameters of block `layer_idx`'s `kinds` as the factor pairs `plan` gives them.
fn factor_params(
    config: &whittle_runtime::ModelConfig,
    plan: &RankPlan,
    layer_idx: usize,
    kinds: &[whittle_runtime::MatrixKind],
) -> usize {
    kinds
        .iter()
        .map(|&kind| {
            let (rows, cols) = config.matrix_shape(kind);
            plan.rank(layer_idx, kind).unwrap_or(0) * (rows + cols)
        })
        .sum()
}

#[test]
fn precision_genes_sit_before_the_exit_gene_and_give_each_matrix_its_dtype() {
    use whittle_boards::Dtype;
    let config = whittle_runtime::ModelConfig::SMOLLM2_135M;
    let levels = Levels::default();
    let n_matrices = config.n_prunable_matrices();
    let plain = Genome::uniform(Genome::n_genes(&config, false, false), 0);
    let with_exit = plain.clone().with_exit_level(&config, 6);
    // q4 for every third matrix; the exit gene stays last and keeps its level.
    let mixed = with_exit.with_precision(&config, |index| index % 3 == 0);
    assert_eq!(mixed.len(), Genome::n_genes(&config, true, true));
    assert_eq!(mixed.levels().last(), Some(&6));
    assert_eq!(mixed.levels()[Genome::precision_gene(&config, 3)], 1);
    assert_eq!(mixed.levels()[Genome::precision_gene(&config, 4)], 0);
    let plan = mixed.to_plan(&config, &levels).expect("a valid genome");
    assert_eq!(plan.exit(), exit_for_level(30, 12, 6));
    assert_eq!(plan.dtypes().len(), n_matrices);
    for (index, &dtype) in plan.dtypes().iter().enumerate() {
        let expected = if index % 3 == 0 { Dtype::Q4 } else { Dtype::Q8 };
        assert_eq!(dtype, expected, "matrix {index}");
    }
    // Setting them again replaces them; a genome without an exit gene gets none.
    let again = mixed.with_precision(&config, |_| false);
    assert_eq!(again.len(), Genome::n_genes(&config, true, true));
    assert!(
        again
            .to_plan(&config, &levels)
            .unwrap()
            .dtypes()
            .iter()
            .all(|&d| d == Dtype::Q8)
    );
    let no_exit = plain.with_precision(&config, |_| true);
    assert_eq!(no_exit.len(), Genome::n_genes(&config, false, true));
    let plan = no_exit.to_plan(&config, &levels).unwrap();
    assert_eq!(plan.exit(), 30);
    assert!(plan.is_q4(0, whittle_runtime::MatrixKind::Q));
    // Moving the exit of a genome with precision genes keeps them.
    let moved = no_exit.with_exit_level(&config, 2);
    assert_eq!(moved.len(), Genome::n_genes(&config, true, true));
    assert!(
        moved
            .to_plan(&config, &levels)
            .unwrap()
            .is_q4(0, whittle_runtime::MatrixKind::Q)
    );
}
