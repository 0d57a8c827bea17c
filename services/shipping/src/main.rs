#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(tandem_kit::service::main_with(&shipping::SPEC, Some(&shipping::choreo::STEP)).await?)
}
