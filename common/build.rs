// New migration files must rebuild this crate, which embeds them (common::db::MIGRATOR).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
