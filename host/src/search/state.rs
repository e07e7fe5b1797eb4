//! The search's mutable state: what the engine updates every generation and what a checkpoint
//! saves and restores (flattened into [`super::Checkpoint`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Evaluation, GenerationReport, Genome};

/// What is known of one genome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    /// Its evaluation on the quarter split, if it had one.
    pub quarter: Option<Evaluation>,
    /// Its evaluation on the full split, if it had one.
    pub full: Option<Evaluation>,
}

/// Everything a checkpoint restores. No random state: each generation's random stream is
/// derived from the seed and the generation index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Generations completed, which is the index of the next one.
    #[serde(rename = "generations")]
    pub next_generation: usize,
    /// The last generation's genomes.
    pub population: Vec<Genome>,
    /// Every genome evaluated; saved as a list sorted by genome.
    #[serde(with = "cache_records")]
    pub cache: HashMap<Genome, Cached>,
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

/// The cache as a list of [`CacheRecord`] sorted by genome, so a checkpoint is deterministic;
/// a genome listed twice or with no evaluation is refused.
mod cache_records {
    use std::collections::HashMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{CacheRecord, Cached, Genome};

    pub fn serialize<S: Serializer>(
        cache: &HashMap<Genome, Cached>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut records: Vec<CacheRecord> = cache
            .iter()
            .map(|(genome, cached)| CacheRecord {
                genome: genome.clone(),
                quarter: cached.quarter,
                full: cached.full,
            })
            .collect();
        records.sort_by(|a, b| a.genome.cmp(&b.genome));
        records.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<HashMap<Genome, Cached>, D::Error> {
        let records = Vec::<CacheRecord>::deserialize(deserializer)?;
        let mut cache = HashMap::with_capacity(records.len());
        for record in records {
            if record.quarter.is_none() && record.full.is_none() {
                return Err(D::Error::custom("a cached genome has no evaluation"));
            }
            let cached = Cached {
                quarter: record.quarter,
                full: record.full,
            };
            if cache.insert(record.genome, cached).is_some() {
                return Err(D::Error::custom("a genome is cached twice"));
            }
        }
        Ok(cache)
    }
}
