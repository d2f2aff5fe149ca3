//! `logcluster send`: load generator and shipper.

/// Options of `logcluster send`.
#[derive(clap::Args)]
pub struct SendArgs {}

pub async fn run(_args: SendArgs) -> anyhow::Result<()> {
    anyhow::bail!("send is being written")
}
