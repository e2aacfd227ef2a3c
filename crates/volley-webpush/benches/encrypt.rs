//! What one Web Push message costs the sender before it reaches the network: decoding the
//! subscription token, encrypting (ephemeral ECDH, HKDF, AES-128-GCM) and taking the cached
//! VAPID header.
//!
//! `cargo bench -p volley-webpush --bench encrypt`. Measured on the 2-core development
//! machine (shared): encrypt ≈ 61 µs per message whatever the payload size (the ECDH
//! dominates), token decode adds ≈ 2 µs, the cached VAPID header ≈ 70 ns.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use volley_webpush::vapid::{VapidKey, VapidSigner};
use volley_webpush::{ece, subscription};

fn encrypt(c: &mut Criterion) {
    let (_, public) = ece::generate_keypair();
    let auth = [7u8; 16];
    let token = subscription::encode(
        "https://fcm.googleapis.com/fcm/send/cJ3k:APA91bExampleExampleExample",
        &URL_SAFE_NO_PAD.encode(public),
        &URL_SAFE_NO_PAD.encode(auth),
    )
    .unwrap();
    let mut group = c.benchmark_group("webpush");
    for size in [256usize, 1024, ece::MAX_PLAINTEXT] {
        let payload = vec![b'x'; size];
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encrypt_{size}B"), |b| {
            b.iter(|| ece::encrypt(black_box(&payload), &public, &auth).unwrap())
        });
    }
    let payload = vec![b'x'; 1024];
    group.bench_function("decode_token_and_encrypt_1024B", |b| {
        b.iter(|| {
            let decoded = subscription::decode(black_box(&token)).unwrap();
            ece::encrypt(&payload, &decoded.ua_public, &decoded.auth).unwrap()
        })
    });
    let signer = VapidSigner::new(VapidKey::generate(), "mailto:ops@example.com".into()).unwrap();
    group.bench_function("vapid_header_cached", |b| {
        b.iter(|| signer.header(black_box("https://fcm.googleapis.com")))
    });
    group.finish();
}

criterion_group!(benches, encrypt);
criterion_main!(benches);
