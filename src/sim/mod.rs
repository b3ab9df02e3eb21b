//! Deterministic simulation (to be built: issue 3).

/// `expiry-stream sim ...`
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Seed to run.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs the `sim` subcommand; returns the process exit code.
pub async fn main(args: SimArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("the simulator is not built yet")
}
