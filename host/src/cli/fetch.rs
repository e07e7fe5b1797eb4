use clap::Args;

use super::ModelArgs;

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let path = args.model.resolve()?;
    println!("{}", path.display());
    Ok(())
}
