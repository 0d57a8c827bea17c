#[tokio::main]
async fn main() -> Result<(), orders::Error> {
    orders::main().await
}
