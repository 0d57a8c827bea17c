#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(tandem_kit::service::main_with(&inventory::SPEC, Some(&inventory::choreo::STEP)).await?)
}
