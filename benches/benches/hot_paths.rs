//! Criterion micro-benchmarks of the per-request and per-chunk work outside the HTTP/2 pipeline.
//!
//! `cargo bench -p volley-benches` (about two minutes); `docs/performance.md` quotes the figures.

// criterion_group! generates undocumented public items.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bincode::Options as _;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderValue, StatusCode};
use volley_apns::jwt::{Es256Signer, Mint as _, TokenCache};
use volley_apns::{Alert, Notification, SystemClock};
use volley_contracts::{ApnsRender, Chunk, ChunkId, JobId, Render, TokenList};

fn apns_tokens(n: usize) -> Vec<String> {
    volley_testkit::tokens::apns_tokens("a1b2c3d4", n)
}

fn config(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("hot");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

/// The front's own parser (`volley-front`'s `tokens` module) is private; this measures the same
/// shape of work through public pieces: borrow each token from the body, validate it, append it
/// to one `TokenList` buffer.
fn parse_request(c: &mut Criterion) {
    let tokens = apns_tokens(10_000);
    let body = serde_json::json!({
        "title": "Volley bench",
        "body": "Hello from Volley",
        "targets": {"apns": tokens},
    })
    .to_string();
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        targets: Targets<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Targets<'a> {
        #[serde(borrow)]
        apns: Vec<&'a str>,
    }
    let mut group = config(c);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("parse 10k-token request into TokenList", |b| {
        b.iter(|| {
            let request: Request<'_> = serde_json::from_str(black_box(&body)).unwrap();
            let list: TokenList = request
                .targets
                .apns
                .iter()
                .inspect(|t| volley_apns::validate_token(t).unwrap())
                .collect();
            black_box(list)
        })
    });
    group.finish();
}

fn chunking(c: &mut Criterion) {
    let list: TokenList = apns_tokens(1_000_000).into_iter().collect();
    let mut group = config(c);
    group.throughput(Throughput::Elements(1_000_000));
    group.bench_function("split 1M tokens into chunks of 1000", |b| {
        b.iter(|| {
            black_box(&list)
                .chunks(1000)
                .map(|c| c.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

fn chunk() -> Chunk {
    let payload = ceiling_notification().prepare().unwrap().body().clone();
    Chunk {
        id: ChunkId {
            job: JobId(uuid::Uuid::new_v4()),
            index: 7,
        },
        epoch: 1,
        positions: Vec::new(),
        hand_back: true,
        app: "demo".into(),
        render: Render::Apns(ApnsRender {
            payload,
            push_type: "alert".into(),
            priority: 10,
            expiration: None,
            collapse_id: None,
            topic: None,
            apns_id: None,
        }),
        tokens: apns_tokens(1000).into_iter().collect(),
        collapse_id: None,
    }
}

/// tarpc's bincode transport uses `bincode::DefaultOptions` (varint integers), as here.
fn chunk_codec(c: &mut Criterion) {
    let chunk = chunk();
    let options = bincode::DefaultOptions::new();
    let encoded = options.serialize(&chunk).unwrap();
    let mut group = config(c);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("encode a 1000-token chunk (bincode)", |b| {
        b.iter(|| options.serialize(black_box(&chunk)).unwrap())
    });
    group.bench_function("decode a 1000-token chunk (bincode)", |b| {
        b.iter(|| options.deserialize::<Chunk>(black_box(&encoded)).unwrap())
    });
    group.finish();
}

fn ceiling_notification() -> Notification {
    let mut custom = serde_json::Map::new();
    custom.insert("campaign".into(), "bench".into());
    Notification {
        topic: "com.example.volley.demo".into(),
        alert: Some(Alert {
            title: Some("Volley bench".into()),
            body: Some("Hello from Volley".into()),
            ..Alert::default()
        }),
        badge: Some(1),
        sound: Some("default".into()),
        custom,
        ..Notification::default()
    }
}

/// A `deliver` call of `n` single-notification chunks, as a dispatcher gathers them from the
/// queue during an ingest of one-token jobs.
fn small_chunks(n: usize) -> Vec<Chunk> {
    let one = chunk();
    (0..n)
        .map(|i| Chunk {
            id: ChunkId {
                job: JobId::new(),
                index: 0,
            },
            tokens: apns_tokens(1).into_iter().collect(),
            epoch: i as u32 % 2,
            ..one.clone()
        })
        .collect()
}

fn batch_codec(c: &mut Criterion) {
    let batch = small_chunks(500);
    let options = bincode::DefaultOptions::new();
    let encoded = options.serialize(&batch).unwrap();
    let mut group = config(c);
    group.throughput(Throughput::Elements(500));
    group.bench_function(
        "encode a deliver call of 500 one-token chunks (bincode)",
        |b| b.iter(|| options.serialize(black_box(&batch)).unwrap()),
    );
    group.bench_function(
        "decode a deliver call of 500 one-token chunks (bincode)",
        |b| {
            b.iter(|| {
                options
                    .deserialize::<Vec<Chunk>>(black_box(&encoded))
                    .unwrap()
            })
        },
    );
    group.finish();
}

fn prepare(c: &mut Criterion) {
    let notification = ceiling_notification();
    let rendered = notification.prepare().unwrap().body().clone();
    let mut group = config(c);
    group.bench_function("prepare APNs headers and payload", |b| {
        b.iter(|| black_box(&notification).prepare().unwrap())
    });
    // What an agent does once per chunk with the front's rendering (checks the aps object).
    group.bench_function("prepare headers around a rendered payload", |b| {
        b.iter(|| {
            black_box(&notification)
                .prepare_with_payload(black_box(rendered.clone()))
                .unwrap()
        })
    });
    group.finish();
}

fn jwt(c: &mut Criterion) {
    let key = volley_fake::keys::generate_apns_key();
    let signer = Es256Signer::new(&key.private_pem, "BENCHKEY12", "BENCHTEAM1").unwrap();
    let mut group = config(c);
    group.bench_function("sign an APNs provider token (ES256)", |b| {
        b.iter(|| signer.mint(black_box(1_700_000_000)).unwrap())
    });
    let cache = TokenCache::new(
        Es256Signer::new(&key.private_pem, "BENCHKEY12", "BENCHTEAM1").unwrap(),
        Arc::new(SystemClock),
    )
    .unwrap();
    group.bench_function("reuse the cached provider token", |b| {
        b.iter(|| black_box(&cache).for_request().unwrap())
    });
    group.finish();
}

fn classify(c: &mut Criterion) {
    let mut group = config(c);
    group.bench_function("classify APNs 200", |b| {
        b.iter(|| volley_apns::classify(black_box(StatusCode::OK), None, black_box(b"")))
    });
    let unregistered = br#"{"reason":"Unregistered","timestamp":1700000000000}"#;
    group.bench_function("classify APNs 410 Unregistered", |b| {
        b.iter(|| volley_apns::classify(black_box(StatusCode::GONE), None, black_box(unregistered)))
    });
    let retry = HeaderValue::from_static("1");
    let unavailable =
        br#"{"error":{"code":503,"message":"unavailable","status":"UNAVAILABLE","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNAVAILABLE"}]}}"#;
    group.bench_function("classify FCM 503 UNAVAILABLE", |b| {
        b.iter(|| {
            volley_fcm::classify(
                black_box(StatusCode::SERVICE_UNAVAILABLE),
                Some(&retry),
                black_box(unavailable),
            )
        })
    });
    group.bench_function("classify FCM 200", |b| {
        b.iter(|| volley_fcm::classify(black_box(StatusCode::OK), None, black_box(b"{}")))
    });
    group.finish();
}

/// A fresh list per iteration, to measure building a job's token buffer from scratch.
fn build_list(c: &mut Criterion) {
    let tokens = apns_tokens(10_000);
    let mut group = config(c);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("build a 10k TokenList", |b| {
        b.iter_batched(
            || (),
            |()| tokens.iter().collect::<TokenList>(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(
    benches,
    parse_request,
    build_list,
    chunking,
    chunk_codec,
    batch_codec,
    prepare,
    jwt,
    classify
);
criterion_main!(benches);
