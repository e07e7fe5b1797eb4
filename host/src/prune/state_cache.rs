//! The search-split states of the uniform factor-pair plans (the accuracy model's probes and
//! the uniform baseline's trials), cached beside the factor bank. They depend on the model, the
//! calibration (through the bank) and the search split, not on the board, ε or the search, so
//! a run for another board or tolerance reads them instead of running the model four times.
//! One safetensors file per keep fraction, written atomically; a file that does not match the
//! split is ignored with a line saying so.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::{Device, Tensor};

/// States of a split's examples in split order, and their gold labels.
pub type SplitStates = (Vec<Vec<f32>>, Vec<usize>);

/// Format of the cached states; bump when what they hold or how they are computed changes.
const FORMAT: u32 = 1;

/// Where the uniform plans' states of one model, calibration and search split live.
#[derive(Clone, Debug)]
pub struct UniformStateCache {
    dir: PathBuf,
    key: String,
}

impl UniformStateCache {
    /// The cache in `dir` under `key`, a key covering the model, the factor bank and the
    /// search split.
    pub fn new(dir: PathBuf, key: String) -> Self {
        Self { dir, key }
    }

    fn path(&self, keep: f64) -> PathBuf {
        let percent = (keep * 100.0).round() as u32;
        self.dir.join(format!(
            "{}.keep{percent:03}.uniform-states.v{FORMAT}.safetensors",
            self.key
        ))
    }

    /// The states of the uniform plan keeping `keep` on a split of `n` examples, if cached.
    pub fn load(&self, keep: f64, n: usize) -> Option<SplitStates> {
        let path = self.path(keep);
        if !path.is_file() {
            return None;
        }
        match read(&path, n) {
            Ok(states) => Some(states),
            Err(error) => {
                eprintln!(
                    "ignoring the uniform-plan cache {}: {error:#}; scoring the plan again",
                    path.display()
                );
                None
            }
        }
    }

    /// Caches the states of the uniform plan keeping `keep`; a failure is a warning (the next
    /// run scores the plan again).
    pub fn save(&self, keep: f64, states: &[Vec<f32>], gold: &[usize]) {
        let path = self.path(keep);
        if let Err(error) = write(&path, states, gold) {
            eprintln!(
                "warning: cannot cache the uniform plan's states at {}: {error:#}; the next run scores it again",
                path.display()
            );
        }
    }
}

fn write(path: &std::path::Path, states: &[Vec<f32>], gold: &[usize]) -> anyhow::Result<()> {
    let width = states.first().map_or(0, Vec::len);
    if states.iter().any(|s| s.len() != width) || states.len() != gold.len() {
        anyhow::bail!("states of different widths, or not one per gold label");
    }
    let gold: Vec<u32> = gold
        .iter()
        .map(|&g| u32::try_from(g))
        .collect::<Result<_, _>>()?;
    let n = gold.len();
    let tensors = HashMap::from([
        (
            "states".to_owned(),
            Tensor::from_vec(states.concat(), (n, width), &Device::Cpu)?,
        ),
        ("gold".to_owned(), Tensor::from_vec(gold, n, &Device::Cpu)?),
    ]);
    let bytes = safetensors::serialize(&tensors, None)?;
    whittle_boards::files::write_atomically_with(path, |file| {
        std::io::Write::write_all(file, &bytes)
    })?;
    Ok(())
}

fn read(path: &std::path::Path, n: usize) -> anyhow::Result<SplitStates> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let (Some(states), Some(gold)) = (tensors.remove("states"), tensors.remove("gold")) else {
        anyhow::bail!("the file lacks the states or the gold labels");
    };
    let states: Vec<Vec<f32>> = states.to_vec2()?;
    let gold: Vec<usize> = gold
        .to_vec1::<u32>()?
        .into_iter()
        .map(|g| g as usize)
        .collect();
    if states.len() != n || gold.len() != n {
        anyhow::bail!(
            "it holds {} states and {} labels; the search split has {n} examples",
            states.len(),
            gold.len()
        );
    }
    Ok((states, gold))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_a_file_for_another_split_is_ignored() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = UniformStateCache::new(dir.path().to_owned(), "k".to_owned());
        assert!(cache.load(0.8, 3).is_none(), "nothing cached yet");
        let states = vec![vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.5]];
        let gold = vec![1, 0, 1];
        cache.save(0.8, &states, &gold);
        assert_eq!(cache.load(0.8, 3), Some((states.clone(), gold.clone())));
        assert!(cache.load(0.9, 3).is_none(), "another keep fraction");
        assert!(cache.load(0.8, 4).is_none(), "another split size");
        std::fs::write(cache.path(0.8), b"not a safetensors file")?;
        assert!(cache.load(0.8, 3).is_none(), "a corrupt file is ignored");
        Ok(())
    }
}
