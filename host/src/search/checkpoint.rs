//! The search state saved after every generation (JSON, written atomically) and its checks on
//! resume.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::engine::State;
use super::{Evaluation, GenerationReport, Genome, SearchConfig, SearchError};

/// Version of the checkpoint layout; a checkpoint of another version is refused.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// What is known of one genome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Cached {
    pub quarter: Option<Evaluation>,
    pub full: Option<Evaluation>,
}

/// One genome's evaluations in a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheRecord {
    /// The genome.
    pub genome: Genome,
    /// Its evaluation on the quarter split, if it had one.
    pub quarter: Option<Evaluation>,
    /// Its evaluation on the full split, if it had one.
    pub full: Option<Evaluation>,
}

/// Everything needed to continue a search after a generation. No random state is saved: each
/// generation's random stream is derived from the seed and the generation index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`] of the writer.
    pub format: u32,
    /// Genes of the problem.
    pub n_genes: usize,
    /// The problem's dense accuracy (identifies the model and task).
    pub dense_accuracy: f64,
    /// The settings, seed included.
    pub config: SearchConfig,
    /// Generations completed.
    pub generations: usize,
    /// The last generation's genomes.
    pub population: Vec<Genome>,
    /// Every genome evaluated, sorted by genome.
    pub cache: Vec<CacheRecord>,
    /// The best genome so far.
    pub best: Option<Genome>,
    /// Generations in a row without a better best genome.
    pub stale_generations: usize,
    /// One report per generation.
    pub history: Vec<GenerationReport>,
    /// Genomes evaluated on the quarter split so far.
    pub quarter_evaluations: usize,
    /// Genomes evaluated on the full split so far.
    pub full_evaluations: usize,
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
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let bytes = serde_json::to_vec(self).map_err(|e| fail(e.into()))?;
        let mut file = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
        file.write_all(&bytes).map_err(fail)?;
        file.persist(path).map_err(|e| fail(e.error))?;
        Ok(())
    }

    pub(super) fn from_state(
        state: &State,
        n_genes: usize,
        dense_accuracy: f64,
        config: &SearchConfig,
    ) -> Self {
        let mut cache: Vec<CacheRecord> = state
            .cache
            .iter()
            .map(|(genome, cached)| CacheRecord {
                genome: genome.clone(),
                quarter: cached.quarter,
                full: cached.full,
            })
            .collect();
        cache.sort_by(|a, b| a.genome.cmp(&b.genome));
        Self {
            format: CHECKPOINT_FORMAT,
            n_genes,
            dense_accuracy,
            config: config.clone(),
            generations: state.next_generation,
            population: state.population.clone(),
            cache,
            best: state.best.clone(),
            stale_generations: state.stale_generations,
            history: state.history.clone(),
            quarter_evaluations: state.quarter_evaluations,
            full_evaluations: state.full_evaluations,
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
        let cache: HashMap<Genome, Cached> = self
            .cache
            .into_iter()
            .map(|r| {
                let cached = Cached {
                    quarter: r.quarter,
                    full: r.full,
                };
                (r.genome, cached)
            })
            .collect();
        Ok(State {
            next_generation: self.generations,
            population: self.population,
            cache,
            best: self.best,
            stale_generations: self.stale_generations,
            history: self.history,
            quarter_evaluations: self.quarter_evaluations,
            full_evaluations: self.full_evaluations,
        })
    }

    fn check_consistency(&self, config: &SearchConfig) -> Result<(), String> {
        if self.generations == 0 || self.history.len() != self.generations {
            return Err(format!(
                "{} generations but {} reports",
                self.generations,
                self.history.len()
            ));
        }
        if self.population.len() != config.population {
            return Err(format!(
                "a population of {}, not {}",
                self.population.len(),
                config.population
            ));
        }
        let n_levels = config.levels.len();
        let genomes = self
            .population
            .iter()
            .chain(self.cache.iter().map(|r| &r.genome))
            .chain(&self.best);
        for genome in genomes {
            genome
                .validate(self.n_genes, n_levels)
                .map_err(|e| format!("a genome does not fit: {e}"))?;
        }
        let mut cache = HashMap::with_capacity(self.cache.len());
        for record in &self.cache {
            if record.quarter.is_none() && record.full.is_none() {
                return Err("a cached genome has no evaluation".into());
            }
            if cache.insert(&record.genome, record).is_some() {
                return Err("a genome is cached twice".into());
            }
        }
        if self.population.iter().any(|g| !cache.contains_key(g)) {
            return Err("a genome of the population was never evaluated".into());
        }
        match self.best.as_ref().and_then(|g| cache.get(g)) {
            Some(record) if record.full.is_some() => Ok(()),
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
