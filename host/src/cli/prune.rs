//! `whittle prune --board B --task T`: parses the arguments into `PruneOptions`, runs
//! `whittle_host::prune::prune` and prints its report.

use std::path::PathBuf;

use clap::Args;
use whittle_boards::{BoardProfile, Dtype};
use whittle_host::head::LabelReading;
use whittle_host::prune::{PruneOptions, prune};
use whittle_host::search::SearchConfig;
use whittle_host::task::Task;
use whittle_host::vocab::VocabChoice;

use super::ModelArgs;
use super::session::{CalibrationArgs, RefitArgs, open_base};

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Target board: a name (`cargo xtask boards` lists them) or a profile file (`.toml`).
    #[arg(long, default_value = "jetson-orin")]
    board: String,
    /// A built-in classification task or a task file (.toml).
    #[arg(long, default_value = "sst2")]
    task: String,
    /// Relative accuracy tolerance: the target is (1 − ε) · dense accuracy on the search split.
    #[arg(long, default_value_t = 0.05)]
    epsilon: f64,
    /// Memory the model may use on the board, in MB (10⁶ bytes), instead of the profile's
    /// share of its memory.
    #[arg(long, value_name = "MB")]
    memory_budget_mb: Option<f64>,
    /// Decode latency budget per token, in milliseconds, instead of the profile's.
    #[arg(long, value_name = "MS")]
    latency_budget_ms: Option<f64>,
    /// Weight storage the cost model assumes and the bundle uses.
    #[arg(long, value_enum, default_value = "q8")]
    dtype: Dtype,
    /// The bundle's vocabulary: the model's whole one, or only the tokens the task's
    /// calibration and search inputs produce (an input with unseen words tokenizes into smaller
    /// kept pieces; on SST-2 a 65 MB instead of an 87 MB q8 bundle, 0.5 points less test
    /// accuracy: docs/RESULTS.md, "Task-vocabulary trimming").
    #[arg(long, value_enum, default_value = "full")]
    vocab: VocabChoice,
    /// One seed for everything random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Genomes per generation.
    #[arg(long, default_value_t = 16)]
    population: usize,
    /// Generation cap.
    #[arg(long, default_value_t = 5)]
    generations: usize,
    /// Stop after this many generations without improvement.
    #[arg(long, default_value_t = 2)]
    patience: usize,
    /// New genomes per generation promoted from the quarter split to the full one.
    #[arg(long, default_value_t = 4)]
    promotions: usize,
    /// How the labels are read: `head` fits a task head on the hidden state (logistic
    /// regression pulled toward the verbalizer rows) and lets the search exit early;
    /// `verbalizer` reads the label tokens' log-probabilities at the last block.
    #[arg(long, value_enum, default_value = "head")]
    reading: LabelReading,
    /// Calibration examples each candidate fits its label bias on (`--reading verbalizer`).
    #[arg(long, default_value_t = 64)]
    bias_examples: usize,
    /// Calibration examples the task heads measured on the test split (answer, uniform
    /// baseline, dense) are fitted on (`--reading head`).
    #[arg(long, default_value_t = 4096)]
    head_examples: usize,
    /// Use this uniform keep fraction as the baseline instead of binary-searching it (e.g.
    /// the `keep` a `whittle uniform` run found); in (0, 1].
    #[arg(long, value_name = "K")]
    uniform_keep: Option<f64>,
    #[command(flatten)]
    refit: RefitArgs,
    /// Recover the answer after the search on this many calibration tokens: train the
    /// matrices it changed toward the dense model (distillation, no labels); kept when it does
    /// not lower the assured search accuracy (docs/RESULTS.md, recovery) [default: 16384].
    #[arg(long, value_name = "N")]
    recover_tokens: Option<usize>,
    /// Leave the answer as the search found it (no recovery).
    #[arg(long)]
    no_recover: bool,
    /// What the recovery matches: `labels`, the dense model's label distribution through its
    /// task head at the exit, at its own learning rate (10⁻⁶, chosen on the held-out KL; the
    /// default with `--reading head`), or `states`, its state at the exit (the default with
    /// `--reading verbalizer`).
    #[arg(long, value_enum)]
    recover_objective: Option<RecoverObjective>,
    /// After the search, skip the answer's sub-blocks the task does not need: each kept
    /// block's attention and MLP is screened alone on a quarter of the search split, then up
    /// to N of them are added one at a time while the target stays assured on the whole split
    /// (0, the default: off; it takes minutes, docs/RESULTS.md).
    #[arg(long, value_name = "N", default_value_t = 0)]
    refine_tries: usize,
    /// Output folder [default: `out/<task>-<board>`, `out/<task>-<board>-<model>` for a model other than the default].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the search from the checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    calibration: CalibrationArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// What the recovery of the answer trains toward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RecoverObjective {
    /// The dense model's label distribution through its task head at the exit.
    Labels,
    /// The dense model's normed state at the exit.
    States,
}

/// The board with the budget overrides applied.
fn board(args: &PruneArgs) -> anyhow::Result<BoardProfile> {
    let mut board = BoardProfile::resolve(&args.board)?;
    if let Some(mb) = args.memory_budget_mb {
        let bytes = mb * 1e6;
        if !(bytes > 0.0 && bytes.is_finite()) {
            anyhow::bail!("--memory-budget-mb {mb} must be a positive number of megabytes");
        }
        if bytes > board.memory_bytes as f64 {
            anyhow::bail!(
                "--memory-budget-mb {mb} contradicts board {}: it has only {:.0} MB of memory; give a budget within it or choose a larger board",
                board.name,
                board.memory_bytes as f64 / 1e6
            );
        }
        board.model_memory_share = bytes / board.memory_bytes as f64;
    }
    if let Some(ms) = args.latency_budget_ms {
        if !(ms > 0.0 && ms.is_finite()) {
            anyhow::bail!("--latency-budget-ms {ms} must be a positive number of milliseconds");
        }
        board.latency_budget_ms_per_token = Some(ms);
    }
    Ok(board)
}

/// Calibration tokens the recovery trains on unless `--recover-tokens` says otherwise.
const DEFAULT_RECOVER_TOKENS: usize = 16384;

fn options(args: &PruneArgs) -> anyhow::Result<PruneOptions> {
    if args.no_recover && (args.recover_tokens.is_some() || args.recover_objective.is_some()) {
        anyhow::bail!(
            "--no-recover skips the recovery, so --recover-tokens and --recover-objective mean nothing with it; drop one or the other"
        );
    }
    let board = board(args)?;
    let task = Task::resolve(&args.task)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let name = format!("{}-{}", task.name(), board.name);
        match args.model.slug() {
            Some(model) => PathBuf::from("out").join(format!("{name}-{model}")),
            None => PathBuf::from("out").join(name),
        }
    });
    Ok(PruneOptions {
        board,
        task,
        dtype: args.dtype,
        vocab: args.vocab,
        search: SearchConfig {
            population: args.population,
            max_generations: args.generations,
            patience: args.patience,
            max_promotions: args.promotions,
            seed: args.seed,
            epsilon: args.epsilon,
            ..SearchConfig::default()
        },
        reading: args.reading,
        bias_examples: args.bias_examples,
        head_examples: args.head_examples,
        uniform_keep: args.uniform_keep,
        refit: args.refit.options(),
        recover_tokens: (!args.no_recover)
            .then_some(args.recover_tokens.unwrap_or(DEFAULT_RECOVER_TOKENS)),
        recover_labels: match args.recover_objective {
            Some(objective) => objective == RecoverObjective::Labels,
            None => args.reading == LabelReading::Head,
        },
        refine_tries: args.refine_tries,
        calibration: args.calibration.settings("calibration")?,
        cache_dir: args.calibration.cache_dir(),
        batch_tokens: args.calibration.batch_tokens,
        out,
        resume: args.resume,
    })
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let options = options(&args)?;
    options.validate()?;
    let base = open_base(&args.model)?;
    let report = prune(&base, &options)?;
    println!("{}", report.summary_line());
    println!("outputs in {}", report.output_dir.display());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if !report.feasible {
        anyhow::bail!(
            "no genome met both the accuracy target and the board's budgets; {} holds the closest one (report.json: \"feasible\": false); raise --epsilon or the budget, or search longer (--population, --generations)",
            report.output_dir.display()
        );
    }
    Ok(())
}
