//! Diagnostic: redraws a prune folder's `ranks.svg` from its `genome.json` (`cargo run -p
//! whittle-host --example rank_map -- DIR [TASK] [BOARD]`; SmolLM2-135M, the default task and
//! board), e.g. after the map's legend changed.

use whittle_boards::BoardProfile;
use whittle_host::prune::folder::GenomeFile;
use whittle_host::prune::pipeline::write_rank_map;
use whittle_host::search::{Genome, Levels};
use whittle_host::task::Task;
use whittle_runtime::ModelConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(std::path::PathBuf::from) else {
        anyhow::bail!("give a prune folder: --example rank_map -- DIR [TASK] [BOARD]");
    };
    let task = Task::builtin(args.get(1).map_or("sst2", String::as_str))?;
    let board = BoardProfile::resolve(args.get(2).map_or("jetson-orin", String::as_str))?;
    let file: GenomeFile =
        serde_json::from_str(&std::fs::read_to_string(dir.join("genome.json"))?)?;
    let config = ModelConfig::SMOLLM2_135M;
    let plan = Genome(file.genome).to_plan(&config, &Levels::new(file.levels)?)?;
    write_rank_map(&dir, &config, &plan, &task, &board)?;
    println!("wrote {}", dir.join("ranks.svg").display());
    Ok(())
}
