#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(tandem_kit::service::main(&inventory::SPEC).await?)
}
