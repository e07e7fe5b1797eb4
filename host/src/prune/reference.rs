//! What the dense model contributes to a prune run with a task head, computed once per model,
//! task and number of head examples, and cached beside the calibration statistics (DESIGN
//! section 5, cost control): nothing in it depends on a candidate.
//!
//! - its task head after every block, fitted on the first head examples of the calibration
//!   split (the priors of the search's cross-fitted heads, and the dense test reading);
//! - its normed state after every block on the search split (every exit scored without a
//!   forward pass);
//! - its normed state after the last block on the test split, and its test accuracy read
//!   through the verbalizer with the bias fitted on calibration examples (as `eval` reports).
//!
//! The file is one safetensors file written atomically; a file that does not match the model
//! and task is ignored with a line saying so, and recomputed.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::Evaluator;
use crate::eval::ExitStates;
use crate::head::TaskHead;
use crate::model::BaseModel;
use crate::task::{Split, Task};

/// Format of the cached reference; bump when its content or the way it is computed changes.
const REFERENCE_FORMAT: u32 = 1;

/// The dense model's heads and states a prune run with a task head reads (module docs).
#[derive(Clone, Debug)]
pub struct DenseReference {
    /// `heads[e − 1]`: the task head after block `e`.
    heads: Vec<TaskHead>,
    /// `search_states[e − 1][i]`: search-split example `i`'s state after block `e`.
    search_states: ExitStates,
    search_gold: Vec<usize>,
    /// Test-split states after the last block.
    test_states: Vec<Vec<f32>>,
    test_gold: Vec<usize>,
    /// Test accuracy through the verbalizer with its calibration-fitted bias.
    test_accuracy_verbalizer: f64,
}

/// What the cache's key covers besides the model and task.
#[derive(Serialize)]
struct KeySettings {
    head_examples: usize,
    verbalizer_examples: usize,
}

/// The small parts of the file, in its metadata.
#[derive(Serialize, Deserialize)]
struct Metadata {
    heads: Vec<TaskHead>,
    search_gold: Vec<usize>,
    test_gold: Vec<usize>,
    test_accuracy_verbalizer: f64,
}

impl DenseReference {
    /// Reads the reference from `cache_dir` or computes it (and caches it): `search` must read
    /// through a task head fitted on the head examples, `test` is the test split's evaluator.
    pub fn load_or_compute(
        base: &BaseModel,
        task: &Task,
        search: &Evaluator,
        test: &Evaluator,
        cache_dir: &Path,
        batch_tokens: usize,
        progress: &ProgressBar,
    ) -> anyhow::Result<Self> {
        let key = crate::calibrate::derived_cache_key(
            REFERENCE_FORMAT,
            &base.digest,
            task,
            &crate::task::Split::ALL,
            &KeySettings {
                head_examples: search.fit_examples(),
                verbalizer_examples: crate::metrics::LABEL_BIAS_EXAMPLES,
            },
        )?;
        let path = cache_dir.join(format!("{key}.dense-reference.safetensors"));
        let n_layers = base.model.llama.config().n_layers;
        if path.is_file() {
            progress.set_message(format!("reading the dense reference {}", path.display()));
            match Self::load(&path, n_layers, search.len(), test.len()) {
                Ok(reference) => return Ok(reference),
                Err(error) => eprintln!(
                    "ignoring the dense reference cache {}: {error:#}; computing it again",
                    path.display()
                ),
            }
        }
        let llama = &base.model.llama;
        let heads = search.dense_exit_heads(llama, progress)?;
        let (search_states, search_gold) = search.every_exit_states(llama, progress)?;
        let (test_states, test_gold) = test.split_states(llama, progress)?;
        let test_accuracy_verbalizer = Evaluator::new(
            &base.model,
            task,
            Split::Test,
            crate::metrics::LABEL_BIAS_EXAMPLES,
            batch_tokens,
        )?
        .score(llama, progress)?
        .accuracy;
        let reference = Self {
            heads,
            search_states,
            search_gold,
            test_states,
            test_gold,
            test_accuracy_verbalizer,
        };
        if let Err(error) = reference.save(&path) {
            eprintln!(
                "warning: cannot cache the dense reference at {}: {error:#}; the next run computes it again",
                path.display()
            );
        }
        Ok(reference)
    }

    /// The dense head after block `exit`.
    pub fn head(&self, exit: usize) -> Option<&TaskHead> {
        self.heads.get(exit.wrapping_sub(1))
    }

    /// `(exit, head)` for every exit.
    pub fn heads(&self) -> impl Iterator<Item = (usize, TaskHead)> + '_ {
        self.heads
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, h)| (i + 1, h))
    }

    /// The search-split states after every block and the gold labels.
    pub fn search_states(&self) -> (&ExitStates, &[usize]) {
        (&self.search_states, &self.search_gold)
    }

    /// The test-split states after the last block and the gold labels.
    pub fn test_states(&self) -> (&[Vec<f32>], &[usize]) {
        (&self.test_states, &self.test_gold)
    }

    /// The dense test accuracy read through the verbalizer with its calibration-fitted bias.
    pub fn test_accuracy_verbalizer(&self) -> f64 {
        self.test_accuracy_verbalizer
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let metadata = Metadata {
            heads: self.heads.clone(),
            search_gold: self.search_gold.clone(),
            test_gold: self.test_gold.clone(),
            test_accuracy_verbalizer: self.test_accuracy_verbalizer,
        };
        let mut tensors = HashMap::new();
        let mut search = Vec::new();
        for states in &self.search_states {
            search.push(rows_tensor(states)?);
        }
        tensors.insert("search.states".to_owned(), Tensor::stack(&search, 0)?);
        tensors.insert("test.states".to_owned(), rows_tensor(&self.test_states)?);
        let info = HashMap::from([("reference".to_owned(), serde_json::to_string(&metadata)?)]);
        let bytes = safetensors::serialize(&tensors, Some(info))?;
        whittle_boards::files::write_atomically_with(path, |file| {
            std::io::Write::write_all(file, &bytes)
        })?;
        Ok(())
    }

    fn load(path: &Path, n_layers: usize, n_search: usize, n_test: usize) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let Some(json) = header.metadata().as_ref().and_then(|m| m.get("reference")) else {
            anyhow::bail!("the file has no reference metadata");
        };
        let metadata: Metadata = serde_json::from_str(json)?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let (Some(search), Some(test)) = (
            tensors.remove("search.states"),
            tensors.remove("test.states"),
        ) else {
            anyhow::bail!("the file lacks the search or test states");
        };
        let search_states: ExitStates = search.to_vec3::<f32>()?.into_iter().collect();
        let test_states: Vec<Vec<f32>> = test.to_vec2()?;
        if metadata.heads.len() != n_layers
            || search_states.len() != n_layers
            || search_states.iter().any(|s| s.len() != n_search)
            || metadata.search_gold.len() != n_search
            || test_states.len() != n_test
            || metadata.test_gold.len() != n_test
        {
            anyhow::bail!(
                "it holds {} heads, {} search and {} test examples; the run needs {n_layers}, {n_search} and {n_test}",
                metadata.heads.len(),
                metadata.search_gold.len(),
                metadata.test_gold.len()
            );
        }
        Ok(Self {
            heads: metadata.heads,
            search_states,
            search_gold: metadata.search_gold,
            test_states,
            test_gold: metadata.test_gold,
            test_accuracy_verbalizer: metadata.test_accuracy_verbalizer,
        })
    }
}

/// `rows` as one `(n, width)` tensor.
fn rows_tensor(rows: &[Vec<f32>]) -> anyhow::Result<Tensor> {
    let width = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != width) {
        anyhow::bail!("states of different widths");
    }
    Ok(Tensor::from_vec(
        rows.concat(),
        (rows.len(), width),
        &Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(n_layers: usize, n_search: usize, n_test: usize) -> DenseReference {
        let state = |i: usize, j: usize| vec![i as f32, j as f32, 0.5];
        let head = |e: usize| TaskHead {
            weight: vec![vec![e as f32; 3], vec![-(e as f32); 3]],
            bias: vec![0.1, -0.1],
            ridge: 0.01 * e as f64,
        };
        DenseReference {
            heads: (1..=n_layers).map(head).collect(),
            search_states: (0..n_layers)
                .map(|e| (0..n_search).map(|i| state(e, i)).collect())
                .collect(),
            search_gold: (0..n_search).map(|i| i % 2).collect(),
            test_states: (0..n_test).map(|i| state(99, i)).collect(),
            test_gold: (0..n_test).map(|i| (i + 1) % 2).collect(),
            test_accuracy_verbalizer: 0.75,
        }
    }

    #[test]
    fn the_reference_round_trips_and_a_file_for_another_split_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("r.safetensors");
        let written = reference(3, 5, 4);
        written.save(&path)?;
        let read = DenseReference::load(&path, 3, 5, 4)?;
        assert_eq!(read.heads, written.heads);
        assert_eq!(read.search_states, written.search_states);
        assert_eq!(read.search_gold, written.search_gold);
        assert_eq!(read.test_states(), written.test_states());
        assert_eq!(read.test_accuracy_verbalizer(), 0.75);
        assert_eq!(read.head(2), written.head(2));
        assert!(read.head(0).is_none() && read.head(4).is_none());
        for (layers, search, test) in [(4, 5, 4), (3, 6, 4), (3, 5, 3)] {
            let error = DenseReference::load(&path, layers, search, test)
                .expect_err("a reference for another model or split");
            assert!(format!("{error:#}").contains("the run needs"), "{error:#}");
        }
        std::fs::write(&path, b"not a safetensors file")?;
        assert!(DenseReference::load(&path, 3, 5, 4).is_err());
        Ok(())
    }
}
