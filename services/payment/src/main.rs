use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_kit::http::init_tracing();
    tandem_kit::crash::init().map_err(anyhow::Error::msg)?;
    let config = payment::Config::parse();
    let listener = tokio::net::TcpListener::bind(config.listen_addr).await?;
    payment::build(config)
        .await?
        .run(listener, tandem_kit::http::shutdown_signal())
        .await
}
