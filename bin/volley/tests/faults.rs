//! Fault tests: real `volley` processes against the fakes, a broadcast of 100,000 tokens, and
//! one process killed, paused or stopped in mid-broadcast. Each checks, from the fakes'
//! counters and the job status, that every accepted token was delivered at least once, that
//! the counts balance, and that the fakes saw no more duplicates than the job counted.
//!
//! Each runs twice: with the controller's embedded store, and with its state in PostgreSQL
//! (the throwaway server `scripts/test` starts; `tests/failover.rs` has the faults only a
//! leader and standby meet).

use serde_json::Value;
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{
    broadcast, check_no_loss, finish_broadcast, finished, start_broadcast, wait_job,
};
use volley_testkit::pg::fresh_database;
use volley_testkit::procs::{ProcCluster, API_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_volley");

/// Tokens per platform: 100,000 in all per test.
const N: u64 = 50_000;

/// One fault test at a time: each runs a whole cluster, and on two cores several at once would
/// starve heartbeats and turn every test into a test of lease expiry.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fakes answer in 20 ms so that a 100,000-token broadcast lasts long enough to interrupt.
const SLOW_FAKES: &[&str] = &["--latency", "20ms"];

/// Where the controller keeps its state in a test.
#[derive(Clone, Copy, Debug)]
enum Store {
    Redb,
    Postgres,
}

/// Starts a cluster on `store`, with `agents` agents, RUST_LOG `filter`.
async fn cluster(store: Store, agents: usize, filter: &str) -> ProcCluster {
    let url = match store {
        Store::Redb => None,
        Store::Postgres => Some(fresh_database("faults").await),
    };
    ProcCluster::start_on(BIN, url.as_deref(), agents, SLOW_FAKES, filter)
}

/// Each fault test, on either store.
macro_rules! on_both_stores {
    ($body:ident: $redb:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redb() {
            $body(Store::Redb).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $body(Store::Postgres).await;
        }
    };
}

/// Starts a cluster on `store` with `agents` agents, submits the broadcast tagged `tag` and
/// returns once `delivered` notifications are delivered and the job is still running.
async fn mid_broadcast(
    store: Store,
    agents: usize,
    tag: &str,
    delivered: u64,
) -> (ProcCluster, String) {
    let cluster = cluster(store, agents, "info").await;
    let id = start_broadcast(&cluster, tag, N, delivered).await;
    (cluster, id)
}

/// Waits for the job to finish, checks that nothing was lost, reports the duplicates.
async fn finish(cluster: ProcCluster, id: &str, fault: &str) -> u64 {
    finish_broadcast(cluster, id, N, fault).await
}

on_both_stores!(kill_9_one_of_three_agents_mid_broadcast_with: kill_9_one_of_three_agents_mid_broadcast, kill_9_one_of_three_agents_mid_broadcast_on_postgres);

async fn kill_9_one_of_three_agents_mid_broadcast_with(store: Store) {
    let _serial = SERIAL.lock().await;
    let tag = "0a0a0a0a";
    let (mut cluster, id) = mid_broadcast(store, 3, tag, 2 * N / 5).await;
    cluster.kill9("agent-1");
    finish(cluster, &id, "kill -9 agent").await;
}

on_both_stores!(sigstop_an_agent_past_its_lease_then_sigcont_with: sigstop_an_agent_past_its_lease_then_sigcont, sigstop_an_agent_past_its_lease_then_sigcont_on_postgres);

async fn sigstop_an_agent_past_its_lease_then_sigcont_with(store: Store) {
    let _serial = SERIAL.lock().await;
    let tag = "0b0b0b0b";
    let (cluster, id) = mid_broadcast(store, 3, tag, N / 5).await;
    let lines_before = cluster.proc("controller").line_count();
    cluster.sigstop("agent-0");
    // The controller notices and drops the paused agent, handing its chunks to the others:
    // its leases expire first, or its heartbeats' timeout does (the kit sets both to 2 s; a
    // user's defaults drop the agent first, 10 s before its 15 s leases would expire).
    cluster
        .proc("controller")
        .line_with("agent dropped", lines_before);
    let agent_lines = cluster.proc("agent-0").line_count();
    cluster.sigcont("agent-0");
    // Woken up, the agent learns its chunks are gone and stops sending them: the controller
    // says it forgot the agent, or a heartbeat sent just before the pause timed out during it
    // and the agent sees for itself that a lease time passed without a renewal.
    let line = cluster
        .proc("agent-0")
        .line_with("registering again", agent_lines);
    assert!(
        line.contains("forgot") || line.contains("no renewal for a lease time"),
        "{line}"
    );
    finish(cluster, &id, "SIGSTOP agent").await;
}

on_both_stores!(kill_9_the_controller_mid_broadcast_and_restart_it_with: kill_9_the_controller_mid_broadcast_and_restart_it, kill_9_the_controller_mid_broadcast_and_restart_it_on_postgres);

async fn kill_9_the_controller_mid_broadcast_and_restart_it_with(store: Store) {
    let _serial = SERIAL.lock().await;
    let tag = "0c0c0c0c";
    let (mut cluster, id) = mid_broadcast(store, 2, tag, 2 * N / 5).await;
    cluster.kill9("controller");
    cluster.start_controller();
    let line = cluster.proc("controller").line_with("resuming job", 0);
    assert!(line.contains(&id), "{line}");
    finish(cluster, &id, "kill -9 controller").await;
}

/// Tokens per platform of the controller-change test: 200,000 in all.
const CHANGE_N: u64 = 100_000;

/// The value of the numeric field `field` in a JSON log line.
fn logged_number(line: &str, field: &str) -> u64 {
    let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("a json line: {line}"));
    value["fields"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {line}"))
}

on_both_stores!(kill_9_the_controller_while_agents_live_sends_nothing_twice_with: kill_9_the_controller_while_agents_live_sends_nothing_twice, kill_9_the_controller_while_agents_live_sends_nothing_twice_on_postgres);

async fn kill_9_the_controller_while_agents_live_sends_nothing_twice_with(store: Store) {
    let _serial = SERIAL.lock().await;
    let mut cluster = cluster(store, 2, "info").await;
    let id = start_broadcast(&cluster, "0f0f0f0f", CHANGE_N, 2 * CHANGE_N / 5).await;
    let agent_lines: Vec<usize> = ["agent-0", "agent-1"]
        .iter()
        .map(|agent| cluster.proc(agent).line_count())
        .collect();
    cluster.kill9("controller");
    cluster.start_controller();
    let controller = cluster.proc("controller");
    let line = controller.line_with("resuming job", 0);
    assert!(line.contains(&id), "{line}");
    // The chunks that were out wait a lease time for the agents still sending them; the grace
    // ends with every one claimed, or with those no agent held going out again.
    let leased = logged_number(&line, "leased");
    assert!(leased > 0, "chunks were out with the agents: {line}");
    let grace = controller.line_with("grace over", 0);
    let unclaimed = if grace.contains("unclaimed") {
        logged_number(&grace, "chunks")
    } else {
        assert!(
            grace.contains("every chunk out at the restart was claimed"),
            "{grace}"
        );
        0
    };
    let claimed: Vec<String> = ["agent-0", "agent-1"]
        .iter()
        .zip(&agent_lines)
        .filter_map(|(agent, from)| {
            let lines = cluster.proc(agent).lines.lock().unwrap();
            lines
                .iter()
                .skip(*from)
                .find(|line| line.contains("the controller claimed chunks"))
                .cloned()
        })
        .collect();
    assert!(
        !claimed.is_empty(),
        "no agent had a chunk claimed: {leased} chunks were leased"
    );
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, CHANGE_N).await;
    let counted = status["possible_duplicates"].as_u64().unwrap();
    eprintln!(
        "kill -9 controller, agents live: {duplicates} duplicates at the fakes, {counted} counted \
         possible; {leased} chunks out at the restart, {unclaimed} unclaimed after the grace"
    );
    // Nothing reached a device twice. The only possible duplicates counted are the chunks no
    // agent claimed: leased on disk, and never received by an agent (the call was in flight,
    // or not made yet, at the kill), so sent once in the end.
    assert_eq!(duplicates, 0, "{status}");
    assert_eq!(counted, unclaimed * 1000, "{status}");
    cluster.stop();
}

on_both_stores!(kill_9_a_front_between_accepting_and_answering_with: kill_9_a_front_between_accepting_and_answering, kill_9_a_front_between_accepting_and_answering_on_postgres);

async fn kill_9_a_front_between_accepting_and_answering_with(store: Store) {
    let _serial = SERIAL.lock().await;
    let tag = "0d0d0d0d";
    // The controller logs each accepted job at debug: the moment to kill the front.
    let mut cluster = cluster(store, 2, "info,volley_controller=debug").await;
    let body = broadcast(tag, N as usize);
    // Leaked: the request's task needs it for good ('static).
    let key_value: &'static str = format!("order-{tag}").leak();
    let key = [("idempotency-key", key_value)];
    let first_front = cluster.client();
    let lines_before = cluster.proc("controller").line_count();
    let request = {
        let body = body.clone();
        tokio::spawn(async move {
            first_front
                .request_with(
                    http::Method::POST,
                    "/v1/apps/shop/notifications",
                    Some(body.into()),
                    &key,
                )
                .await
        })
    };
    // The controller has the job on disk; kill the front before (or while) it answers.
    let accepted = cluster
        .proc("controller")
        .line_with("job accepted", lines_before);
    cluster.kill9("front-0");
    let job = accepted
        .split("\"job\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the job id is logged")
        .to_owned();
    // The caller may or may not have seen the 202; either way it retries with the same key.
    let _ = request.await.unwrap();
    cluster.start_front();
    let retry = FrontClient::new(cluster.front_url.clone(), Some(API_KEY.to_owned()))
        .request_with(
            http::Method::POST,
            "/v1/apps/shop/notifications",
            Some(body.into()),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(retry.status.as_u16(), 202, "{}", retry.body);
    assert_eq!(
        retry.body["id"].as_str(),
        Some(job.as_str()),
        "the retry made a second job"
    );
    // One job: nothing was sent twice.
    assert_eq!(finish(cluster, &job, "kill -9 front").await, 0);
}

on_both_stores!(sigterm_every_node_in_turn_under_load_with: sigterm_every_node_in_turn_under_load, sigterm_every_node_in_turn_under_load_on_postgres);

async fn sigterm_every_node_in_turn_under_load_with(store: Store) {
    let _serial = SERIAL.lock().await;
    let tag = "0e0e0e0e";
    let (mut cluster, id) = mid_broadcast(store, 2, tag, N / 5).await;
    cluster.sigterm("front-0");
    cluster.start_front();
    cluster.sigterm("agent-0");
    cluster.start_agent("agent-2");
    cluster.sigterm("controller");
    cluster.start_controller();
    finish(cluster, &id, "SIGTERM each node").await;
}
