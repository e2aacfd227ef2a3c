//! The throwaway PostgreSQL of `scripts/test`, through `volley_testkit::pg`: a fresh database
//! per test, and stopping, starting and restarting the server under a test.
//!
//! Needs `POSTGRES_TEST_URL` and `POSTGRES_TEST_CTL`, which `scripts/test` sets; without them
//! these tests fail rather than skip, so a run that says "passed" did run them.

use std::time::Duration;

use tokio::sync::Mutex;
use volley_testkit::pg;

/// The restart test stops and restarts the server under every test that uses it at that
/// moment. Other tests that use the server (the controller's store) must tolerate a restart:
/// `cargo test` runs one test binary at a time, but a parallel runner (nextest) does not. The
/// tests of this file need not, so they take turns.
static SERVER: Mutex<()> = Mutex::const_new(());

#[tokio::test]
async fn a_fresh_database_holds_what_is_written_to_it() {
    let _turn = SERVER.lock().await;
    let url = pg::fresh_database("testkit_rows").await;
    let other = pg::fresh_database("testkit_rows").await;
    assert_ne!(url, other, "each call gets its own database");
    let client = pg::connect(&url).await.unwrap();
    let database: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        url.ends_with(&format!("/{database}")),
        "{url} vs {database}"
    );
    assert!(database.starts_with("testkit_rows_"), "{database}");

    client
        .batch_execute("CREATE TABLE notes (id uuid PRIMARY KEY, body text NOT NULL)")
        .await
        .unwrap();
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO notes (id, body) VALUES ($1, $2)",
            &[&id, &"hello"],
        )
        .await
        .unwrap();
    let rows = client
        .query("SELECT id, body FROM notes", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, uuid::Uuid>(0), id);
    assert_eq!(rows[0].get::<_, String>(1), "hello");

    // The other database does not see the table.
    let other = pg::connect(&other).await.unwrap();
    let error = other.query("SELECT id FROM notes", &[]).await.unwrap_err();
    assert_eq!(
        error.code(),
        Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE),
        "{error}"
    );
}

/// One sequence, not one test per action: restart, stop and start act on the whole server.
#[tokio::test]
async fn the_server_restarts_stops_and_starts_under_a_test() {
    let _turn = SERVER.lock().await;
    let url = pg::fresh_database("testkit_restart").await;
    let before = pg::connect(&url).await.unwrap();
    before
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();

    tokio::task::spawn_blocking(pg::restart_postgres)
        .await
        .unwrap();
    assert!(
        before.query_one("SELECT 1", &[]).await.is_err(),
        "a connection from before the restart is closed"
    );
    let after = pg::connect(&url).await.unwrap();
    let n: i32 = after
        .query_one("SELECT n FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7, "the data survives the restart");

    tokio::task::spawn_blocking(pg::stop_postgres)
        .await
        .unwrap();
    assert!(after.query_one("SELECT 1", &[]).await.is_err());
    assert!(
        pg::connect(&url).await.is_err(),
        "a stopped server refuses connections"
    );
    tokio::task::spawn_blocking(pg::start_postgres)
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), pg::connect(&url))
        .await
        .expect("connecting after the start")
        .unwrap();
    let n: i32 = again
        .query_one("SELECT n FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
}
