use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_kit::http::init_tracing();
    tandem_kit::crash::init().map_err(anyhow::Error::msg)?;
    let config = orchestrator::Config::parse();
    let listener = tandem_kit::http::bind(config.listen_addr).await?;
    let app = orchestrator::build(config).await?;
    app.run(listener, tandem_kit::http::shutdown_signal())
        .await?;
    tandem_kit::telemetry::shutdown();
    Ok(())
}
