use clap::Args;

use super::ModelArgs;

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let path = whittle_host::fetch::ensure_default_model(&args.model.model_dir())?;
    println!("{}", path.display());
    Ok(())
}
