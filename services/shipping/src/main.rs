#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_kit::service::main(&shipping::SPEC).await
}
