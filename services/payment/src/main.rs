#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Ok(tandem_kit::service::main_with(&payment::SPEC, Some(&payment::choreo::STEP)).await?)
}
