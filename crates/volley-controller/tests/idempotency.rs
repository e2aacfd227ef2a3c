//! Idempotency keys against the real controller and its store: a key belongs to an app, a
//! repeat of the same request is answered with the first job (also after a restart), another
//! request with the key is refused, concurrent repeats make one job, and keys stored by the
//! first layout (not scoped to an app) still answer after the upgrade.

use volley_contracts::{ControllerClient, ErrorCode, JobAccepted, SubmitJob, WireError};
use volley_testkit::controller::{job, start_controller_with, Running};
use volley_testkit::tokens::apns_token;

fn tokens(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| apns_token("", i)).collect()
}

/// A controller that queues jobs of any app without an agent: what is checked here happens
/// before any chunk goes out.
async fn start(dir: &std::path::Path) -> Running {
    start_controller_with(dir, |config| {
        config.controller.accept_unserved = true;
        let mut news = config.apps[0].clone();
        news.name = "news".into();
        config.apps.push(news);
    })
    .await
}

/// `job(...)` for app `app`.
fn job_of(app: &str, tokens: &[String], key: &str) -> SubmitJob {
    SubmitJob {
        app: app.into(),
        ..job(tokens, Some(key))
    }
}

async fn submit(controller: &ControllerClient, job: SubmitJob) -> Result<JobAccepted, WireError> {
    controller
        .submit(tarpc::context::current(), job)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_replays_its_apps_job_for_the_same_request_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let request = || job_of("shop", &tokens(0..3), "order-42");
    let first = submit(&running.client, request()).await.unwrap();
    assert_eq!((first.accepted, first.replayed), (3, false));

    let again = submit(&running.client, request()).await.unwrap();
    assert_eq!((again.id, again.accepted), (first.id, 3));
    assert!(again.replayed, "a repeat is marked replayed");

    // The same key with another body: refused, and nothing queued.
    let other_body = job_of("shop", &tokens(3..4), "order-42");
    let refused = submit(&running.client, other_body.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::IdempotencyKeyReused);

    // Another app's key of the same name is its own.
    let news = submit(&running.client, job_of("news", &tokens(0..3), "order-42"))
        .await
        .unwrap();
    assert_ne!(news.id, first.id);
    assert!(!news.replayed);
    let stats = running
        .client
        .stats(tarpc::context::current())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.active_jobs, 2, "one job per app, no more");
    running.stop().unwrap();

    // After a restart on the same data directory the keys answer as before.
    let running = start(dir.path()).await;
    let replayed = submit(&running.client, request()).await.unwrap();
    assert_eq!((replayed.id, replayed.accepted), (first.id, 3));
    assert!(replayed.replayed);
    let refused = submit(&running.client, other_body).await.unwrap_err();
    assert_eq!(refused.code, ErrorCode::IdempotencyKeyReused);
    let news_again = submit(&running.client, job_of("news", &tokens(0..3), "order-42"))
        .await
        .unwrap();
    assert_eq!((news_again.id, news_again.replayed), (news.id, true));
    running.stop().unwrap();
}

#[tokio::test]
async fn concurrent_submissions_with_one_key_make_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let request = || job_of("shop", &tokens(0..2), "order-7");
    // Separate calls, in flight together: each is handled on its own task.
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let controller = running.client.clone();
            let job = request();
            tokio::spawn(async move { submit(&controller, job).await })
        })
        .collect();
    let mut fresh = Vec::new();
    let mut replayed = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(accepted) if accepted.replayed => replayed.push(accepted.id),
            Ok(accepted) => fresh.push(accepted.id),
            // Still being accepted when this one came: told to retry.
            Err(error) => assert_eq!(error.code, ErrorCode::IdempotencyKeyInUse, "{error}"),
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one submission makes the job");
    assert!(replayed.iter().all(|id| *id == fresh[0]));
    // A retry once it is stored gets the job.
    let retry = submit(&running.client, request()).await.unwrap();
    assert_eq!((retry.id, retry.replayed), (fresh[0], true));
    let stats = running
        .client
        .stats(tarpc::context::current())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.active_jobs, 1);
    running.stop().unwrap();
}

/// The store's key tables, as the test rewrites them into the first layout: (app, key) →
/// (job id, accepted at ms, notifications, fingerprint), and key → (job id, accepted at ms).
type KeyValue = (u128, u64, u64, &'static [u8]);
const KEYS: redb::TableDefinition<'_, (&str, &str), KeyValue> =
    redb::TableDefinition::new("idempotency_keys");
const FIRST_LAYOUT_KEYS: redb::TableDefinition<'_, &str, (u128, u64)> =
    redb::TableDefinition::new("idempotency");

#[tokio::test]
async fn a_key_stored_by_the_first_layout_still_replays_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let first = submit(&running.client, job_of("shop", &tokens(0..3), "order-9"))
        .await
        .unwrap();
    running.stop().unwrap();
    // Move the key back to the first layout: the key alone, no app, no fingerprint.
    {
        let db = redb::Database::open(dir.path().join("volley.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut keys = txn.open_table(KEYS).unwrap();
            let (id, at_ms, _, _) = keys.remove(("shop", "order-9")).unwrap().unwrap().value();
            let mut old = txn.open_table(FIRST_LAYOUT_KEYS).unwrap();
            old.insert("order-9", (id, at_ms)).unwrap();
        }
        txn.commit().unwrap();
    }
    let running = start(dir.path()).await;
    // The key now belongs to the app of its job. Without a fingerprint it answers any body
    // with its job, as it did before.
    let replayed = submit(&running.client, job_of("shop", &tokens(5..6), "order-9"))
        .await
        .unwrap();
    assert_eq!(
        (replayed.id, replayed.accepted, replayed.replayed),
        (first.id, 3, true)
    );
    let news = submit(&running.client, job_of("news", &tokens(0..3), "order-9"))
        .await
        .unwrap();
    assert_ne!(news.id, first.id);
    running.stop().unwrap();
}
