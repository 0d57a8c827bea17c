// `sqlx::migrate!` embeds the migrations when this crate compiles; without this line a new or
// changed migration file would not rebuild it, and the binary would silently lack it.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations/orders");
}
