#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(tandem_kit::service::main(&shipping::SPEC).await?)
}
