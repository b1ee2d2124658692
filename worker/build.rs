// New migration files must rebuild the worker, which embeds them.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
