#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tandem_kit::service::main(&inventory::SPEC).await
}
