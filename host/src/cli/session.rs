//! What the pruning subcommands share: opening the base model, and calibration arguments.

use std::path::PathBuf;

use clap::Args;
use whittle_host::calibrate::{self, Calibration, CalibrationSettings, DEFAULT_CALIBRATION_TOKENS};
use whittle_host::model::{self, BaseModel};
use whittle_host::progress::progress_bar;
use whittle_host::prune::RefitOptions;
use whittle_host::task::Task;

use super::ModelArgs;

#[derive(Debug, Args)]
pub struct CalibrationArgs {
    /// Calibration token budget: examples of the calibration split are streamed until it is
    /// reached.
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_TOKENS, value_name = "N")]
    pub calibration_tokens: usize,
    /// Share of the budget taken from WikiText-2 (general text) as a regulariser, in [0, 1].
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub wikitext_share: f64,
    /// Folder of derived caches [default: $WHITTLE_CACHE_DIR or ~/.cache/whittle/cache].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Upper bound on padded tokens per forward batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
}

/// The anchored refit (DESIGN "Anchored refit").
#[derive(Debug, Args)]
pub struct RefitArgs {
    /// Skip the anchored refit (use the plain truncated factors).
    #[arg(long)]
    pub no_refit: bool,
    /// Calibration tokens the anchored refit streams.
    #[arg(long, default_value_t = 8192)]
    pub refit_tokens: usize,
    /// Weight λ of the plain objective ‖W X − M X‖² added to the refit's ‖W X − M X̂‖²: 0 is
    /// the pure anchored refit, large values approach the plain factors.
    #[arg(long, default_value_t = 0.0, value_name = "λ")]
    pub refit_anchor: f64,
}

impl RefitArgs {
    /// `None` with `--no-refit`.
    pub fn options(&self) -> Option<RefitOptions> {
        (!self.no_refit).then_some(RefitOptions {
            tokens: self.refit_tokens,
            anchor: self.refit_anchor,
        })
    }
}

impl CalibrationArgs {
    pub fn settings(&self, split: &str) -> anyhow::Result<CalibrationSettings> {
        if !(0.0..=1.0).contains(&self.wikitext_share) {
            anyhow::bail!(
                "--wikitext-share {} is outside [0, 1]; give a fraction such as 0.25",
                self.wikitext_share
            );
        }
        if self.calibration_tokens == 0 {
            anyhow::bail!("--calibration-tokens must be positive");
        }
        Ok(CalibrationSettings {
            split: split.to_owned(),
            max_tokens: self.calibration_tokens,
            wikitext_share: self.wikitext_share,
        })
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(whittle_boards::default_cache_dir)
    }
}

/// The model `args` names (fetched if it is the default and missing), loaded and hashed.
pub fn open_base(args: &ModelArgs) -> anyhow::Result<BaseModel> {
    let path = args.resolve()?;
    BaseModel::open(&path, &model::device(args.cuda)?)
}

/// Calibration statistics of `split` (cached on disk), with a progress bar.
pub fn calibrate(
    base: &BaseModel,
    task: &Task,
    args: &CalibrationArgs,
    split: &str,
) -> anyhow::Result<Calibration> {
    let progress = progress_bar();
    let calibration = calibrate::calibrate(
        &base.model,
        &base.digest,
        task,
        &args.settings(split)?,
        &args.cache_dir(),
        args.batch_tokens.max(1),
        &progress,
    )?;
    progress.finish_and_clear();
    Ok(calibration)
}
