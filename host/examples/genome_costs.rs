//! Diagnostic: what the genomes of several prune runs cost on several boards, by the cost
//! model (`cargo run --release -p whittle-host --example genome_costs -- DIR,DIR BOARD,BOARD`,
//! each DIR a `whittle prune --out` folder with its `genome.json`; SmolLM2-135M, q8, the
//! task head of a two-label task).

use whittle_boards::{BoardProfile, Dtype, objective_cost, predict};
use whittle_runtime::ModelConfig;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dirs = args.first().map_or("", String::as_str).split(',');
    let boards: Vec<BoardProfile> = args
        .get(1)
        .map_or("jetson-orin", String::as_str)
        .split(',')
        .map(BoardProfile::resolve)
        .collect::<Result<_, _>>()?;
    let config = ModelConfig::SMOLLM2_135M;
    let dense = vec![None; config.n_prunable_matrices()];
    for dir in dirs {
        let text = std::fs::read_to_string(format!("{dir}/genome.json"))?;
        let genome: serde_json::Value = serde_json::from_str(&text)?;
        let ranks: Vec<Option<usize>> = serde_json::from_value(genome["ranks"].clone())?;
        let levels: Vec<u8> = serde_json::from_value(genome["genome"].clone())?;
        let mut histogram = [0usize; 12];
        for &level in &levels {
            if let Some(slot) = histogram.get_mut(usize::from(level)) {
                *slot += 1;
            }
        }
        println!("{dir}: genes per level (keep 1.0, 0.95, 0.9, 0.8, …) {histogram:?}");
        for board in &boards {
            let p = predict(board, &config, &ranks, &[], Dtype::Q8, &[], Some(2))?;
            let d = predict(board, &config, &dense, &[], Dtype::Q8, &[], Some(2))?;
            println!(
                "  on {:<24} w {:.1}: bundle {:.1} MB ({:+.1}% vs dense), decode {:.3} ms ({:+.1}%), cost {:.4}",
                board.name,
                board.objective_weight,
                p.bundle_bytes as f64 / 1e6,
                100.0 * (p.bundle_bytes as f64 / d.bundle_bytes as f64 - 1.0),
                p.decode_ms_per_token(),
                100.0 * (p.decode_ms_per_token() / d.decode_ms_per_token() - 1.0),
                objective_cost(board, &p, &d)
            );
        }
    }
    Ok(())
}
