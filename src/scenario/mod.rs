//! Chaos scenarios: files, runner, faults, reports (to be built: issue 4).

/// `expiry-stream scenario ...`
#[derive(clap::Args, Debug)]
pub struct ScenarioArgs {
    /// Scenario file.
    pub file: Option<std::path::PathBuf>,
}

/// Runs the `scenario` subcommand; returns the process exit code.
pub async fn main(args: ScenarioArgs) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("the scenario runner is not built yet")
}
