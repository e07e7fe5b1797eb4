//! The whole prune run for one task and board (DESIGN section 5): calibrate, factorize, score
//! the uniform baseline, search, refit the answer, measure both on the test split, and write
//! the prune folder ([`super::folder`]). The CLI parses arguments into [`PruneOptions`], calls
//! [`prune`] and prints the [`PruneReport`] it returns.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use whittle_boards::{BoardProfile, Dtype, feasibility};
use whittle_runtime::{MatrixKind, ModelConfig};

use super::folder::{
    BUNDLE_FILE, CHECKPOINT_FILE, GenomeFile, PruneFolder, RANK_MAP_FILE, write_factors,
    write_genome, write_head, write_report,
};
use super::report::{Outcome, PruneReport, RecoveryReport};
use super::{
    DenseReference, Evaluator, FactorBank, LABEL_LEARNING_RATE, LEARNING_RATE, RankPlan,
    RecoverSettings, TaskProblem, UniformResult, UniformStateCache, anchored_refit,
    chance_level_warning, matrices, recover, reductions, uniform_search,
};
use crate::bundle::{HeadChoice, PackOptions, ProvenanceInfo, check_bundle_task, pack_to_file};
use crate::calibrate::{CalibrationSettings, calibrate, calibration_sequences};
use crate::factorize::Method;
use crate::head::{LabelReading, MIN_HEAD_EXAMPLES, TaskHead};
use crate::model::{BaseModel, Llama};
use crate::plot::rank_map_svg;
use crate::progress::progress_bar;
use crate::search::{Genome, Problem, Search, SearchConfig};
use crate::task::{Metric, Split, Task};
use crate::vocab::VocabChoice;

/// The keep fractions the uniform baseline's binary search chooses from: 0.10, 0.15, …, 1.00.
pub fn keep_grid() -> Vec<f64> {
    (2..=20).map(|i| f64::from(i) * 0.05).collect()
}

/// The anchored refit of the answer (DESIGN "Anchored refit").
#[derive(Clone, Debug)]
pub struct RefitOptions {
    /// Calibration tokens the refit streams.
    pub tokens: usize,
    /// Weight λ of the plain objective added to the anchored one (0: purely anchored).
    pub anchor: f64,
}

/// Everything one prune run needs besides the model.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// The target board, with any budget overrides applied.
    pub board: BoardProfile,
    /// A classification task with a search split.
    pub task: Task,
    /// Weight storage the cost model assumes and the bundle uses.
    pub dtype: Dtype,
    /// The bundle's vocabulary: whole, or trimmed to the task (`crate::vocab`).
    pub vocab: VocabChoice,
    /// The search: levels, population, generations, seed, ε.
    pub search: SearchConfig,
    /// How the labels are read: a fitted task head (with an exit gene) or the verbalizer.
    pub reading: LabelReading,
    /// Calibration examples each candidate fits its label bias on (verbalizer reading).
    pub bias_examples: usize,
    /// Calibration examples the task head of the answer, of the uniform baseline and of the
    /// dense reference is fitted on before the test split (head reading).
    pub head_examples: usize,
    /// A uniform keep fraction to score as the baseline instead of binary-searching one.
    pub uniform_keep: Option<f64>,
    /// The refit of the answer; `None` skips it.
    pub refit: Option<RefitOptions>,
    /// Calibration tokens the recovery of the answer trains on; `None` skips it (the CLI
    /// default is 16,384).
    pub recover_tokens: Option<usize>,
    /// Recover toward the dense model's label distribution through its head at the exit
    /// (needs the head reading) instead of its state there.
    pub recover_labels: bool,
    /// Skips tried on the full split by the greedy sub-block refinement of the answer
    /// ([`TaskProblem::refine_sub_blocks`]); 0 leaves the answer as the search found it.
    pub refine_tries: usize,
    /// What calibration streams.
    pub calibration: CalibrationSettings,
    /// Folder of derived caches.
    pub cache_dir: PathBuf,
    /// Upper bound on padded tokens per forward batch.
    pub batch_tokens: usize,
    /// The prune folder to write.
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
}

impl PruneOptions {
    /// Checks everything that can be checked before loading a model, and makes the output
    /// folder.
    pub fn validate(&self) -> anyhow::Result<()> {
        let epsilon = self.search.epsilon;
        if !(epsilon > 0.0 && epsilon < 1.0) {
            anyhow::bail!("--epsilon {epsilon} is outside (0, 1); e.g. 0.05 for 5%");
        }
        if let Some(keep) = self.uniform_keep
            && !(keep > 0.0 && keep <= 1.0)
        {
            anyhow::bail!(
                "--uniform-keep {keep} is outside (0, 1]; give a keep fraction such as 0.9"
            );
        }
        if self.reading == LabelReading::Head && self.head_examples < MIN_HEAD_EXAMPLES {
            anyhow::bail!(
                "--head-examples {} is too few to fit a task head; give at least {MIN_HEAD_EXAMPLES} (default 4096)",
                self.head_examples
            );
        }
        if self.recover_labels
            && self.recover_tokens.is_some()
            && self.reading != LabelReading::Head
        {
            anyhow::bail!(
                "--recover-objective labels reads the labels through the dense model's task head; use it with --reading head, or recover toward the states (--recover-objective states)"
            );
        }
        if self.recover_tokens == Some(0) {
            anyhow::bail!(
                "--recover-tokens 0 trains on nothing; give a budget such as 16384 (the default), or pass --no-recover to skip recovery"
            );
        }
        self.search.validate()?;
        let task = &self.task;
        if *task.metric() != Metric::Accuracy {
            anyhow::bail!(
                "task {} is scored by {}; the search needs a classification task (metric = \"accuracy\")",
                task.name(),
                task.metric()
            );
        }
        if task.examples(Split::Search)?.is_empty() {
            anyhow::bail!(
                "task {} has no search split; give its task file a `search` fraction under [splits]",
                task.name()
            );
        }
        let out = &self.out;
        std::fs::create_dir_all(out).with_context(|| {
            format!(
                "output folder {} cannot be created; pass --out to a writable folder",
                out.display()
            )
        })?;
        tempfile::NamedTempFile::new_in(out).with_context(|| {
            format!(
                "output folder {} is not writable; pass --out to a writable folder",
                out.display()
            )
        })?;
        Ok(())
    }
}

/// Calibration statistics of `task` (cached under `cache_dir`) and the output-aligned factor
/// bank built from them, with the number of calibration positions counted: the first two
/// stages of [`prune`], also used by the diagnostics.
pub fn calibrated_bank(
    base: &BaseModel,
    task: &Task,
    settings: &CalibrationSettings,
    cache_dir: &std::path::Path,
    batch_tokens: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(FactorBank, u64)> {
    let calibration = calibrate(
        &base.model,
        &base.digest,
        task,
        settings,
        cache_dir,
        batch_tokens.max(1),
        progress,
    )?;
    // The bank is a function of the statistics and the weights: cached beside them, keyed by
    // the statistics' key, the method and the bank's format.
    let method = Method::OutputAligned;
    let key = crate::calibrate::cache_key(&base.digest, task, settings)?;
    let path = cache_dir.join(format!("{key}.{}.v{BANK_FORMAT}.bank", method.name()));
    let neurons = cache_dir.join(format!("{key}.neurons.v{NEURONS_FORMAT}.safetensors"));
    let config = *base.model.llama.config();
    if path.is_file() {
        progress.set_message(format!("reading the factor bank {}", path.display()));
        match FactorBank::load(&path, &config, method, base.model.llama.device()) {
            Ok(bank) => {
                let bank = bank.with_units(&base.model.llama, &calibration, &neurons, progress)?;
                return Ok((bank, calibration.n_tokens));
            }
            Err(error) => eprintln!("ignoring factor bank cache {}: {error:#}", path.display()),
        }
    }
    let bank = FactorBank::build(&base.model.llama, &calibration, method, progress)?;
    if let Err(error) = bank.save(&path) {
        eprintln!(
            "warning: cannot cache the factor bank at {}: {error:#}; the next run factorizes again",
            path.display()
        );
    }
    let bank = bank.with_units(&base.model.llama, &calibration, &neurons, progress)?;
    Ok((bank, calibration.n_tokens))
}

/// The most matrices the precision refinement tries at q4 on the full split.
const PRECISION_TRIES: usize = 8;

/// Format of the cached factor bank; bump when the factorization changes.
const BANK_FORMAT: u32 = 1;

/// Format of the cached MLP neuron orders; bump when the selection changes.
const NEURONS_FORMAT: u32 = 1;

/// Version of what the uniform plans' cached states depend on besides the bank (the way a
/// plan is applied and run); bump when that changes.
const UNIFORM_STATES_FORMAT: u32 = 1;

/// Runs the whole pipeline on `base` and writes the prune folder. A search that finds no
/// genome meeting both the target and the budgets still writes its outputs and returns its
/// report with `feasible: false`; the caller decides how to fail.
pub fn prune(base: &BaseModel, options: &PruneOptions) -> anyhow::Result<PruneReport> {
    let started = Instant::now();
    options.validate()?;
    let PruneOptions {
        board, task, dtype, ..
    } = options;
    let dtype = *dtype;
    let out = &options.out;
    let epsilon = options.search.epsilon;
    let levels = options.search.levels.clone();
    let model = &base.model;
    let config = *model.llama.config();
    let head_rows = Some(task.labels().len());
    // A task the runtime cannot render (its prompt has several input fields) is still searched
    // and reported; only the bundle is left out, and the user hears so before the search.
    let bundle_skipped = check_bundle_task(task)
        .err()
        .map(|error| format!("{error:#}"));
    if let Some(reason) = &bundle_skipped {
        eprintln!(
            "note: {BUNDLE_FILE} will not be written ({reason}); the search, genome.json, factors.safetensors and the reports will be"
        );
    }

    // A board that cannot hold even the most pruned genome fails before any search.
    let reading = options.reading;
    let most_pruned = (levels.len() - 1) as u8;
    // Every sub-block skipped: the embedding, the kept blocks' norms and the head.
    let smallest = Genome::assemble(
        &config,
        Genome::uniform(config.n_prunable_matrices(), most_pruned),
        [most_pruned; 3],
        (reading == LabelReading::Head).then_some(most_pruned),
    );
    let smallest_plan = smallest.to_plan(&config, &levels)?;
    let smallest_prediction = smallest_plan.predict(board, &config, dtype, head_rows)?;
    let smallest_fit = feasibility(board, &smallest_prediction);
    if !smallest_fit.fits {
        anyhow::bail!("even the most pruned model does not fit: {smallest_fit}");
    }

    let batch_tokens = options.batch_tokens.max(1);
    let progress = progress_bar();
    let (bank, calibration_tokens) = calibrated_bank(
        base,
        task,
        &options.calibration,
        &options.cache_dir,
        batch_tokens,
        &progress,
    )?;
    // The search reads each candidate's labels from the search split alone (a head cross-fitted
    // on it, pulled toward the dense model's head at the candidate's exit; or the bias fitted
    // on a few calibration examples); the test split's reading is fitted on calibration
    // examples, for the dense model exactly as for the answer.
    let test_fit_examples = match reading {
        LabelReading::Head => options.head_examples,
        LabelReading::Verbalizer => options.bias_examples,
    };
    let evaluator = Evaluator::new(model, task, Split::Search, test_fit_examples, batch_tokens)?
        .with_reading(reading, true);
    let test = Evaluator::new(model, task, Split::Test, test_fit_examples, batch_tokens)?
        .with_reading(reading, false);
    // Everything the dense model contributes (its heads at every exit, its states on the
    // search and test splits) is computed once per model and task and cached.
    let reference = match reading {
        LabelReading::Head => Some(DenseReference::load_or_compute(
            base,
            task,
            &evaluator,
            &test,
            &options.cache_dir,
            batch_tokens,
            &progress,
        )?),
        LabelReading::Verbalizer => None,
    };
    // The uniform plans' states depend on the model, the bank and the search split only.
    let uniform_cache = UniformStateCache::new(
        options.cache_dir.clone(),
        crate::calibrate::derived_cache_key(
            UNIFORM_STATES_FORMAT,
            &base.digest,
            task,
            &[Split::Search],
            &(
                crate::calibrate::cache_key(&base.digest, task, &options.calibration)?,
                BANK_FORMAT,
                NEURONS_FORMAT,
                batch_tokens,
            ),
        )?,
    );
    let mut problem = TaskProblem::new(
        bank,
        evaluator,
        reference.as_ref(),
        levels.clone(),
        board.clone(),
        dtype,
        head_rows,
        Some(uniform_cache),
        &progress,
    )?;

    let uniform_started = Instant::now();
    let grid = keep_grid();
    progress.set_length(grid.len() as u64);
    progress.set_position(0);
    progress.set_message("uniform baseline: scoring keep fractions");
    let dense_accuracy = problem.dense_accuracy();
    let chance_level = chance_level_warning(
        dense_accuracy,
        problem.full_evaluator().majority_rate(),
        problem.full_evaluator().len(),
    );
    if let Some(warning) = &chance_level {
        eprintln!("warning: {warning}");
    }
    let mut accuracy_at = |keep: f64| -> anyhow::Result<f64> {
        let (_, estimate) = problem.score_uniform(keep)?;
        progress.inc(1);
        progress.suspend(|| {
            eprintln!(
                "uniform keep {keep:.2}: search accuracy {:.4}, predicted {:.4} ± {:.4}, assured {:.4}",
                estimate.measured, estimate.predicted, estimate.margin, estimate.assured
            )
        });
        Ok(estimate.assured)
    };
    let uniform = match options.uniform_keep {
        // A baseline found earlier (e.g. by `whittle uniform`) is scored, not searched again.
        Some(keep) => {
            let accuracy = accuracy_at(keep)?;
            UniformResult {
                dense_accuracy,
                target_accuracy: (1.0 - epsilon) * dense_accuracy,
                keep,
                accuracy,
                trials: vec![(keep, accuracy)],
            }
        }
        None => uniform_search(&grid, epsilon, dense_accuracy, &mut accuracy_at)?,
    };
    let uniform_seconds = uniform_started.elapsed().as_secs_f64();
    let uniform_level = levels
        .keeps()
        .iter()
        .rposition(|&k| k >= uniform.keep - 1e-9)
        .unwrap_or(0) as u8;
    let uniform_genome = problem.genome(
        Genome::uniform(config.n_prunable_matrices(), uniform_level),
        [0, 0, 0],
        0,
    );

    let checkpoint = out.join(CHECKPOINT_FILE);
    let search_config = options.search.clone();
    let max_generations = search_config.max_generations;
    let mut search = if options.resume {
        Search::resume(problem, search_config, &checkpoint)?
    } else {
        Search::new(problem, search_config)?
    }
    .with_uniform_baseline(uniform_genome)?
    .checkpoint_to(&checkpoint);
    progress.set_length(max_generations as u64);
    progress.set_position(0);
    progress.set_message("search: generations");
    let search_started = Instant::now();
    let result = search.run(|report| {
        progress.set_position(report.generation as u64 + 1);
        let megabytes = report
            .best
            .to_plan(&config, &levels)
            .ok()
            .and_then(|plan| {
                plan.predict(board, &config, dtype, head_rows).ok()
            })
            .map_or(f64::NAN, |prediction| prediction.bundle_bytes as f64 / 1e6);
        let line = format!(
            "gen {} · fitness {:.3} · assured acc {:.3} · {megabytes:.1} MB · cost {:.3}",
            report.generation, report.best_fitness, report.best_accuracy, report.best_cost
        );
        let elapsed = search_started.elapsed().as_secs_f64();
        let done = report.generation + 1;
        let left = elapsed / done as f64 * max_generations.saturating_sub(done) as f64;
        progress.suspend(|| {
            eprintln!(
                "{line} · {} quarter / {} full evaluations, {} rejected early, {} costlier than the answer left out · {elapsed:.0} s, at most {left:.0} s left",
                report.quarter_evaluations, report.full_evaluations, report.rejected, report.costlier,
            )
        });
        progress.set_message(line);
    })?;
    let search_seconds = search_started.elapsed().as_secs_f64();
    let mut problem = search.into_problem();
    // The answer's sub-blocks the task does not need, skipped one at a time while the target
    // holds (only an admissible answer is refined).
    let (best, refinement) = match options.refine_tries {
        tries if tries > 0 && result.feasible => {
            progress.set_message("refining: skipping sub-blocks of the answer");
            let (refined, refinement) =
                problem.refine_sub_blocks(&result.best, result.target_accuracy, tries)?;
            (refined, Some(refinement))
        }
        _ => (result.best.clone(), None),
    };
    // A q4 answer's q8 matrices, each tried at q4 while the target holds.
    let (best, precision_refinement) = match problem.has_precision_genes() && result.feasible {
        true => {
            progress.set_message("refining: the answer's q8 matrices at q4");
            let (refined, refinement) =
                problem.refine_precision(&best, result.target_accuracy, PRECISION_TRIES)?;
            (refined, Some(refinement))
        }
        false => (best, None),
    };

    let refit_sequences = match &options.refit {
        Some(refit) => {
            let settings = CalibrationSettings {
                max_tokens: refit.tokens,
                ..options.calibration.clone()
            };
            calibration_sequences(model, task, &settings)?
        }
        None => Vec::new(),
    };
    let mut tested_plans: std::collections::HashMap<RankPlan, super::Scored> =
        std::collections::HashMap::new();
    let mut finish = |plan: RankPlan,
                      refit: Option<&RefitOptions>|
     -> anyhow::Result<(Outcome, Llama, RankPlan, Option<TaskHead>)> {
        let (_, estimate) = problem.score_plan(&plan)?;
        let pruned = problem.bank().apply(&model.llama, &plan)?;
        // The refit solves for factor pairs only; a plan without any has nothing to refit.
        let refit = refit.filter(|_| plan.kept_ranks().iter().any(Option::is_some));
        // The refit is kept only when it does not lower the assured search-split accuracy (on
        // SST-2 it does; see docs/RESULTS.md); the outcome reports the model kept.
        let (kept, refit_kept, estimate) = match refit {
            None => (pruned, false, estimate),
            Some(refit) => {
                let mut refitted = anchored_refit(
                    &model.llama,
                    &pruned,
                    &plan,
                    &refit_sequences,
                    model.tokenizer.pad_id(),
                    batch_tokens,
                    refit.anchor,
                    &progress,
                )?;
                // A refitted 4-bit pair goes back to its grid, as the bundle stores it.
                super::round_planned_q4(&mut refitted, &plan)?;
                let refit_scored = problem.full_evaluator().score(&refitted, &progress)?;
                let refit_estimate = problem.accuracy_model().estimate(&refit_scored);
                if refit_estimate.assured >= estimate.assured {
                    (refitted, true, refit_estimate)
                } else {
                    (pruned, false, estimate)
                }
            }
        };
        let prediction = problem.prediction(&plan)?;
        let counted = reductions(&config, &plan, head_rows);
        // A plain plan scored before (the uniform baseline at keep 1.0 is the dense model) is
        // not run again: each test score fits its own head on calibration examples. The dense
        // model's test states and its head at full depth (fitted on the same calibration
        // examples) come from the dense reference.
        let dense_reference = (plan == RankPlan::dense(&config))
            .then_some(reference.as_ref())
            .flatten()
            .and_then(|reference| {
                Some((reference.head(config.n_layers)?, reference.test_states()))
            });
        let tested = match (refit_kept, tested_plans.get(&plan), dense_reference) {
            (false, Some(scored), _) => scored.clone(),
            (_, _, Some((head, (states, gold)))) => test.score_states_with_head(head, states, gold),
            _ => test.score(&kept, &progress)?,
        };
        if !refit_kept {
            tested_plans.insert(plan.clone(), tested.clone());
        }
        let outcome = Outcome {
            search_accuracy: estimate.measured,
            search_predicted: estimate.predicted,
            search_margin: estimate.margin,
            search_assured: estimate.assured,
            refit_kept,
            test_accuracy: tested.accuracy,
            exit_layer: plan.exit(),
            neuron_pruned_mlps: (0..plan.exit())
                .filter(|&layer_idx| plan.mlp_width(layer_idx).is_some())
                .count(),
            value_pruned_attentions: (0..plan.exit())
                .filter(|&layer_idx| plan.value_width(layer_idx).is_some())
                .count(),
            pair_pruned_attentions: (0..plan.exit())
                .filter(|&layer_idx| plan.pairs(layer_idx).is_some())
                .count(),
            linear_reduction: counted.linear_reduction,
            total_reduction: counted.total_reduction,
            bundle_bytes: prediction.bundle_bytes,
            predicted_decode_ms: prediction.decode_ms_per_token(),
            runtime_memory_bytes: prediction.runtime_memory_bytes,
        };
        Ok((outcome, kept, plan, tested.head))
    };
    // The uniform baseline is reported as the binary search found it (plain factors); the
    // refit, which costs minutes, is tried on the answer only.
    progress.set_message("test split: dense, uniform baseline, answer");
    let (dense_outcome, _, _, _) = finish(RankPlan::dense(&config), None)?;
    let dense_test = dense_outcome.test_accuracy;
    let (uniform_outcome, _, _, _) = finish(RankPlan::uniform(&config, uniform.keep), None)?;
    let best_plan = best.to_plan(&config, &levels)?;
    let (mut searched_outcome, mut pruned_llama, plan, mut head) =
        finish(best_plan, options.refit.as_ref())?;
    let recovery = match options.recover_tokens {
        Some(tokens) => {
            // With the label objective the student matches the dense model's label
            // distribution through the dense head at the answer's exit.
            let label_head = reference
                .as_ref()
                .filter(|_| options.recover_labels)
                .and_then(|r| r.head(plan.exit()));
            let recovered = recover_answer(
                base,
                options,
                tokens,
                &plan,
                &pruned_llama,
                &searched_outcome,
                &problem,
                &test,
                label_head,
                &progress,
            )?;
            if let Some((llama, report, tested, estimate)) = recovered {
                if report.kept {
                    pruned_llama = llama;
                    head = tested.head;
                    searched_outcome.search_accuracy = estimate.measured;
                    searched_outcome.search_predicted = estimate.predicted;
                    searched_outcome.search_margin = estimate.margin;
                    searched_outcome.search_assured = estimate.assured;
                    searched_outcome.test_accuracy = tested.accuracy;
                }
                Some(report)
            } else {
                None
            }
        }
        None => None,
    };
    // The verbalizer reading of the dense model, as `eval` reports it, beside the head's.
    let dense_test_verbalizer = reference
        .as_ref()
        .map(DenseReference::test_accuracy_verbalizer);
    progress.finish_and_clear();
    let fit = feasibility(board, &problem.prediction(&plan)?);

    write_factors(out, &pruned_llama, &plan)?;
    write_genome(
        out,
        &GenomeFile {
            genome: best.0.clone(),
            levels: levels.keeps().to_vec(),
            ranks: plan.ranks().to_vec(),
            exit: (plan.exit() < config.n_layers).then_some(plan.exit()),
            mlp_widths: plan
                .mlp_widths()
                .iter()
                .any(Option::is_some)
                .then(|| plan.mlp_widths().to_vec()),
            value_widths: plan
                .value_widths()
                .iter()
                .any(Option::is_some)
                .then(|| plan.value_widths().to_vec()),
            rotary_pairs: (0..plan.exit())
                .any(|layer_idx| plan.pairs(layer_idx).is_some())
                .then(|| {
                    (0..plan.exit())
                        .map(|layer_idx| pruned_llama.rotary_pairs(layer_idx).map(<[_]>::to_vec))
                        .collect()
                }),
            dtypes: (!plan.dtypes().is_empty()).then(|| plan.dtypes().to_vec()),
        },
    )?;
    write_head(out, head.as_ref())?;
    // A fitted head is stored as the label rows of a task-pruned head.
    let head_choice = match head {
        Some(_) => HeadChoice::Task,
        None => HeadChoice::Full,
    };
    if bundle_skipped.is_none() {
        let folder = PruneFolder::open(out)?;
        let path = out.join(BUNDLE_FILE);
        let packed = pack_to_file(
            base,
            &model.with_llama(pruned_llama.clone()),
            task,
            Some(&folder),
            PackOptions {
                sequence: None,
                store_prefix: true,
                vocab: options.vocab,
                // Read from the folder's genome.json, written above.
                matrix_dtypes: Vec::new(),
                dtype,
                head: head_choice,
                signing_key: None,
                provenance: ProvenanceInfo {
                    board: board.name.clone(),
                    epsilon: Some(epsilon),
                    seed: Some(options.search.seed),
                    dense_accuracy: Some(dense_test),
                    pruned_accuracy: Some(searched_outcome.test_accuracy),
                    ..Default::default()
                },
            },
            4096,
            &path,
        )?;
        println!("{}", crate::bundle::describe(&packed, head_choice, &path));
    }
    write_rank_map(out, &config, &plan, task, board)?;
    let report = PruneReport {
        board: board.name.clone(),
        task: task.name().to_owned(),
        epsilon,
        dtype,
        dense_accuracy: problem.dense_accuracy(),
        chance_level_warning: chance_level,
        dense_test_accuracy: dense_test,
        dense_test_accuracy_verbalizer: dense_test_verbalizer,
        reading,
        head_examples: (reading == LabelReading::Head).then_some(options.head_examples),
        search_n: problem.full_evaluator().len(),
        test_n: test.len(),
        calibration_tokens,
        target_accuracy: uniform.target_accuracy,
        accuracy_slope: problem.accuracy_model().slope(),
        uniform: uniform_outcome,
        uniform_keep: uniform.keep,
        searched: searched_outcome,
        bundle: bundle_skipped.is_none().then(|| BUNDLE_FILE.to_owned()),
        bundle_skipped,
        feasible: result.feasible && fit.fits,
        board_fit: fit.to_string(),
        seed: options.search.seed,
        generations: result.generations,
        evaluations: result.evaluations,
        refit: options.refit.is_some(),
        recovery,
        refinement,
        precision_refinement,
        uniform_seconds,
        search_seconds,
        seconds: started.elapsed().as_secs_f64(),
        output_dir: out.clone(),
    };
    write_report(out, &report)?;
    Ok(report)
}

/// Recovers the answer ([`recover`]) on `tokens` calibration tokens (an eighth more held out
/// for the loss) and scores it on the search split (with its estimate) and the test split.
/// `None` when the plan changes nothing before its exit (the dense model at an exit: nothing
/// to train).
#[allow(clippy::too_many_arguments)]
fn recover_answer(
    base: &BaseModel,
    options: &PruneOptions,
    tokens: usize,
    plan: &RankPlan,
    pruned: &Llama,
    before: &Outcome,
    problem: &TaskProblem,
    test: &Evaluator,
    label_head: Option<&crate::head::TaskHead>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Option<(Llama, RecoveryReport, super::Scored, super::Estimate)>> {
    let config = *base.model.llama.config();
    if !matrices(&config).any(|(layer_idx, kind)| plan.recovers(layer_idx, kind)) {
        eprintln!(
            "note: the answer changes no matrix before its exit that it keeps at 8 bits or more; nothing to recover"
        );
        return Ok(None);
    }
    let settings = CalibrationSettings {
        max_tokens: tokens + tokens / 8,
        ..options.calibration.clone()
    };
    let mut sequences = calibration_sequences(&base.model, &options.task, &settings)?;
    let held_out = sequences.split_off(sequences.len() * 8 / 9);
    let (recovered, recovery) = recover(
        &base.model.llama,
        pruned,
        plan,
        &sequences,
        &held_out,
        base.model.tokenizer.pad_id(),
        RecoverSettings {
            batch_tokens: options.batch_tokens.clamp(1, 1024),
            learning_rate: match label_head {
                Some(_) => LABEL_LEARNING_RATE,
                None => LEARNING_RATE,
            },
            seed: options.search.seed,
            label_head,
        },
        progress,
    )?;
    let scored = problem.full_evaluator().score(&recovered, progress)?;
    let estimate = problem.accuracy_model().estimate(&scored);
    let tested = test.score(&recovered, progress)?;
    let kept = estimate.assured >= before.search_assured;
    let report = RecoveryReport {
        training: recovery,
        search_accuracy_before: before.search_accuracy,
        search_accuracy_after: estimate.measured,
        search_assured_before: before.search_assured,
        search_assured_after: estimate.assured,
        test_accuracy_before: before.test_accuracy,
        test_accuracy_after: tested.accuracy,
        kept,
    };
    Ok(Some((recovered, report, tested, estimate)))
}

/// `ranks.svg` in `out`: the kept rank per layer and matrix (and its dtype where the plan chose).
pub fn write_rank_map(
    out: &std::path::Path,
    config: &ModelConfig,
    plan: &RankPlan,
    task: &Task,
    board: &BoardProfile,
) -> anyhow::Result<()> {
    let kinds: Vec<&str> = MatrixKind::ALL.iter().map(|k| k.name()).collect();
    let mut keep = Vec::new();
    let mut labels = Vec::new();
    let mut q4 = Vec::new();
    for kind in MatrixKind::ALL {
        let (rows, cols) = config.matrix_shape(kind);
        let full_rank = rows.min(cols);
        let mut keep_row = Vec::new();
        let mut label_row = Vec::new();
        let mut q4_row = Vec::new();
        let mlp = matches!(kind, MatrixKind::Gate | MatrixKind::Up | MatrixKind::Down);
        for layer_idx in 0..config.n_layers {
            let skipped = match mlp {
                true => plan.mlp_width(layer_idx) == Some(0),
                false => plan.value_width(layer_idx) == Some(0),
            };
            let value_width = plan
                .value_width(layer_idx)
                .filter(|_| matches!(kind, MatrixKind::V | MatrixKind::O));
            let pairs = plan
                .pairs(layer_idx)
                .filter(|_| matches!(kind, MatrixKind::Q | MatrixKind::K));
            match plan.rank(layer_idx, kind) {
                _ if layer_idx >= plan.exit() => {
                    keep_row.push(0.0);
                    label_row.push("×".to_owned());
                }
                _ if skipped => {
                    keep_row.push(0.0);
                    label_row.push("–".to_owned());
                }
                _ if mlp && plan.mlp_width(layer_idx).is_some() => {
                    let width = plan
                        .mlp_width(layer_idx)
                        .unwrap_or(config.intermediate_size);
                    keep_row.push(width as f64 / config.intermediate_size as f64);
                    label_row.push(format!("n{width}"));
                }
                _ if value_width.is_some() => {
                    let width = value_width.unwrap_or(config.head_dim());
                    keep_row.push(width as f64 / config.head_dim() as f64);
                    label_row.push(format!("v{width}"));
                }
                _ if pairs.is_some() => {
                    let pairs = pairs.unwrap_or(config.head_dim() / 2);
                    keep_row.push(2.0 * pairs as f64 / config.head_dim() as f64);
                    label_row.push(format!("p{pairs}"));
                }
                Some(rank) => {
                    keep_row.push(rank as f64 / full_rank as f64);
                    label_row.push(rank.to_string());
                }
                None => {
                    keep_row.push(1.0);
                    label_row.push("D".to_owned());
                }
            }
            q4_row.push(layer_idx < plan.exit() && !skipped && plan.is_q4(layer_idx, kind));
        }
        keep.push(keep_row);
        q4.push(q4_row);
        labels.push(label_row);
    }
    rank_map_svg(
        &out.join(RANK_MAP_FILE),
        &format!(
            "kept rank per layer and matrix{} ({} on {}; D = dense, nW = MLP of W neurons, vW = W value dimensions per head, pW = W rotary pairs per query/key head, – = sub-block skipped, × = removed past the exit)",
            if plan.dtypes().is_empty() {
                ""
            } else {
                ", green at 4 bits, blue at 8"
            },
            task.name(),
            board.name,
        ),
        &kinds,
        &keep,
        &labels,
        &q4,
    )
}
