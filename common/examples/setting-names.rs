//! Prints every setting's environment variable, one a line, from the settings themselves:
//! what `scripts/check-compose.sh` checks docker-compose.yml against.
//!
//!     cargo run -q -p vmpipe-common --example setting-names

fn main() {
    for name in vmpipe_common::Settings::variable_names() {
        println!("{name}");
    }
}
