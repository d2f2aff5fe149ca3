//! `logcluster query`: search logs from the terminal.

/// Options of `logcluster query`.
#[derive(clap::Args)]
pub struct QueryArgs {}

pub async fn run(_args: QueryArgs) -> anyhow::Result<()> {
    anyhow::bail!("query is being written")
}
