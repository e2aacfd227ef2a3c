//! Prints an APNs provider token for load-testing the fake with h2load, and writes the matching
//! public key for `fake_apns --jwt-public-key`:
//!
//! `cargo run --release -p volley-fake --example bench_credentials -- /tmp/apns-public.pem`

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "apns-public.pem".into());
    let key = volley_fake::keys::generate_apns_key();
    std::fs::write(&path, &key.public_pem).expect("public key written");
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    println!(
        "{}",
        volley_fake::keys::apns_provider_token(&key, "ABC123DEFG", "DEF123GHIJ", iat)
    );
}
