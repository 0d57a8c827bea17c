//! The `kv` binary: a shard or the coordinator, configured from env / flags (see `kv --help`).

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_kit::http::init_tracing();
    tandem_kit::crash::init().map_err(anyhow::Error::msg)?;
    let config = kv::Config::parse();
    let addr = config.listen_addr();
    let listener = tandem_kit::http::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let app = kv::build(config).await?;
    app.run(listener, tandem_kit::http::shutdown_signal())
        .await?;
    tandem_kit::telemetry::shutdown();
    Ok(())
}
