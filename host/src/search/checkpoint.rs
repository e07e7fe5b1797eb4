//! The search state saved after every generation (JSON, written atomically) and its checks on
//! resume.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::state::State;
use super::{SearchConfig, SearchError};

/// Version of the checkpoint layout; a checkpoint of another version is refused.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// Everything needed to continue a search after a generation. No random state is saved: each
/// generation's random stream is derived from the seed and the generation index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`] of the writer.
    pub format: u32,
    /// Genes of the problem.
    pub n_genes: usize,
    /// The problem's dense accuracy (identifies the model and task).
    pub dense_accuracy: f64,
    /// The settings, seed included.
    pub config: SearchConfig,
    /// The engine's state.
    #[serde(flatten)]
    pub state: State,
}

impl Checkpoint {
    /// Reads a checkpoint written by [`Checkpoint::write`].
    pub fn read(path: &Path) -> Result<Self, SearchError> {
        let text = std::fs::read_to_string(path).map_err(|source| SearchError::CheckpointRead {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| SearchError::CheckpointCorrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the checkpoint through a temporary file in the same folder and a rename, so a
    /// crash never leaves a half-written checkpoint.
    pub fn write(&self, path: &Path) -> Result<(), SearchError> {
        let fail = |source| SearchError::CheckpointWrite {
            path: path.to_path_buf(),
            source,
        };
        let bytes = serde_json::to_vec(self).map_err(|e| fail(e.into()))?;
        whittle_boards::files::write_atomically(path, &bytes).map_err(fail)
    }

    pub(super) fn from_state(
        state: &State,
        n_genes: usize,
        dense_accuracy: f64,
        config: &SearchConfig,
    ) -> Self {
        Self {
            format: CHECKPOINT_FORMAT,
            n_genes,
            dense_accuracy,
            config: config.clone(),
            state: state.clone(),
        }
    }

    /// The engine's state, after checking that the checkpoint belongs to this problem and
    /// config (`max_generations` and `patience` may differ) and is consistent.
    pub(super) fn into_state(
        self,
        path: &Path,
        n_genes: usize,
        dense_accuracy: f64,
        config: &SearchConfig,
    ) -> Result<State, SearchError> {
        let incompatible = |reason: String| SearchError::CheckpointIncompatible {
            path: path.to_path_buf(),
            reason,
        };
        if self.format != CHECKPOINT_FORMAT {
            return Err(incompatible(format!(
                "checkpoint format {}, not {CHECKPOINT_FORMAT}",
                self.format
            )));
        }
        if self.n_genes != n_genes {
            return Err(incompatible(format!(
                "{} genes, not {n_genes}",
                self.n_genes
            )));
        }
        if let Some(difference) = config_difference(&self.config, config) {
            return Err(incompatible(format!(
                "another search config ({difference})"
            )));
        }
        if self.dense_accuracy != dense_accuracy {
            return Err(incompatible(format!(
                "a dense accuracy of {}, not {dense_accuracy} (another model or task)",
                self.dense_accuracy
            )));
        }
        self.check_consistency(config)
            .map_err(|reason| SearchError::CheckpointCorrupt {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(self.state)
    }

    fn check_consistency(&self, config: &SearchConfig) -> Result<(), String> {
        let state = &self.state;
        if state.next_generation == 0 || state.history.len() != state.next_generation {
            return Err(format!(
                "{} generations but {} reports",
                state.next_generation,
                state.history.len()
            ));
        }
        // Genomes left out as costlier than the answer are not kept, so a population may be
        // smaller than the configured one, never larger or empty.
        if state.population.is_empty() || state.population.len() > config.population {
            return Err(format!(
                "a population of {}, not 1 to {}",
                state.population.len(),
                config.population
            ));
        }
        let n_levels = config.levels.len();
        let genomes = state
            .population
            .iter()
            .chain(state.cache.keys())
            .chain(&state.best);
        for genome in genomes {
            genome
                .validate(self.n_genes, n_levels)
                .map_err(|e| format!("a genome does not fit: {e}"))?;
        }
        if state
            .population
            .iter()
            .any(|g| !state.cache.contains_key(g))
        {
            return Err("a genome of the population was never evaluated".into());
        }
        match state.best.as_ref().and_then(|g| state.cache.get(g)) {
            Some(cached) if cached.full.is_some() => Ok(()),
            _ => Err("the best genome has no evaluation on the full split".into()),
        }
    }
}

/// How `saved` differs from `current` apart from `max_generations` and `patience`: the first
/// differing setting as `name = saved, now current`.
fn config_difference(saved: &SearchConfig, current: &SearchConfig) -> Option<String> {
    let mut comparable = saved.clone();
    comparable.max_generations = current.max_generations;
    comparable.patience = current.patience;
    if &comparable == current {
        return None;
    }
    let named = match (serde_json::to_value(saved), serde_json::to_value(current)) {
        (Ok(serde_json::Value::Object(saved)), Ok(serde_json::Value::Object(current))) => current
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "max_generations" | "patience"))
            .find(|(name, value)| saved.get(*name) != Some(*value))
            .map(|(name, value)| {
                let old = saved.get(name).map_or("absent".into(), |v| v.to_string());
                format!("{name} = {old}, now {value}")
            }),
        _ => None,
    };
    Some(named.unwrap_or_else(|| "different settings".into()))
}
