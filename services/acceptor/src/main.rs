#[tokio::main]
async fn main() -> anyhow::Result<()> {
    acceptor::main().await
}
