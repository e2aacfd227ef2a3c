//! Chunks out with agents when the controller stops, against the real controller: the next
//! controller waits a lease time for the agents still sending them to claim them (a heartbeat
//! naming the chunk with the epoch of its lease on disk), takes their reports with `report`,
//! and sends again, counted as possible duplicates, only what nobody claimed. The test plays
//! the agent that held the chunks through the controller's client.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use volley_contracts::{
    AgentId, AgentInfo, ChunkAnswer, ChunkOutcome, ChunkReport, ControllerClient, Held, JobId,
    JobState, Platform, Renewal, ServedApp,
};
use volley_testkit::controller::{
    job_status, register, serve_agent, start_controller_with, submit, wait_final, Running,
    TestAgent, WAIT,
};
use volley_testkit::tokens::apns_tokens;
use volley_testkit::wait::wait_until;

/// Chunks of two tokens, a short drain (the held chunks never report) and `lease_time`, which
/// is also how long a restarted controller waits for claims.
async fn start(dir: &std::path::Path, lease_time: Duration) -> Running {
    start_controller_with(dir, |config| {
        config.controller.chunk_size = 2;
        config.controller.shutdown_grace = Duration::from_millis(200);
        config.controller.lease_time = lease_time;
    })
    .await
}

/// A controller whose agents hold one chunk each, `agents` of them, when it stops: returns
/// the job and the chunks held, with their epochs.
async fn stopped_with_chunks_out(dir: &std::path::Path, agents: usize) -> (JobId, Vec<Held>) {
    let running = start(dir, Duration::from_secs(5)).await;
    let mut held = Vec::new();
    for _ in 0..agents {
        let agent = TestAgent {
            gate: Some(Arc::new(Semaphore::new(0))),
            ..TestAgent::default()
        };
        register(&running.client, serve_agent(agent.clone()).await, 1).await;
        held.push(agent);
    }
    let job = submit(&running.client, &apns_tokens("", 2 * agents)).await;
    wait_until(WAIT, "every agent's chunk", || async {
        held.iter()
            .all(|agent| !agent.received.lock().unwrap().is_empty())
    })
    .await
    .unwrap();
    let held: Vec<Held> = held
        .iter()
        .map(|agent| agent.received.lock().unwrap()[0])
        .collect();
    // The controller stops with the chunks still out (their calls never answer).
    running.stop().unwrap();
    (job.id, held)
}

/// Registers the test as an agent serving `shop` through `addr`; returns its id.
async fn register_as_agent(controller: &ControllerClient, addr: String) -> AgentId {
    controller
        .register(
            tarpc::context::current(),
            AgentInfo {
                name: "holder".into(),
                addr,
                apps: vec![ServedApp {
                    app: "shop".into(),
                    platforms: Platform::ALL.to_vec(),
                }],
                window: 1,
                ops_addr: String::new(),
            },
        )
        .await
        .unwrap()
        .unwrap()
        .id
}

async fn heartbeat(controller: &ControllerClient, agent: AgentId, held: &[Held]) -> Renewal {
    controller
        .heartbeat(tarpc::context::current(), agent, held.to_vec(), None)
        .await
        .unwrap()
        .unwrap()
}

async fn report(controller: &ControllerClient, agent: AgentId, held: Held, delivered: u32) {
    let outcome = ChunkOutcome {
        chunk: held.chunk,
        epoch: held.epoch,
        outcome: Ok(ChunkAnswer::whole(ChunkReport {
            delivered,
            ..ChunkReport::default()
        })),
        positions: Vec::new(),
    };
    controller
        .report(tarpc::context::current(), agent, vec![outcome])
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_chunk_out_at_a_restart_is_claimed_by_its_agent_and_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (job, held) = stopped_with_chunks_out(dir.path(), 1).await;
    let held = held[0];

    let running = start(dir.path(), Duration::from_secs(30)).await;
    let client = &running.client;
    // Waiting for its claim: pending, and not a possible duplicate.
    let waiting = job_status(client, job).await;
    assert_eq!(
        (waiting.state, waiting.pending, waiting.possible_duplicates),
        (JobState::Running, 2, 0)
    );
    let other = TestAgent::default();
    let agent = register_as_agent(client, serve_agent(other.clone()).await).await;
    // Another epoch is another hand-out: not this agent's.
    let stale = Held {
        epoch: held.epoch + 1,
        ..held
    };
    let renewal = heartbeat(client, agent, &[stale]).await;
    assert_eq!(
        (renewal.released, renewal.claimed),
        (vec![held.chunk], vec![])
    );
    let renewal = heartbeat(client, agent, &[held]).await;
    assert_eq!(
        (renewal.released, renewal.claimed),
        (vec![], vec![held.chunk])
    );
    // Said again until the report comes: an answer can be lost.
    assert_eq!(
        heartbeat(client, agent, &[held]).await.claimed,
        [held.chunk]
    );
    // A report for another epoch, or from another agent, is not taken.
    report(client, agent, stale, 2).await;
    let stranger = register_as_agent(client, serve_agent(TestAgent::default()).await).await;
    report(client, stranger, held, 2).await;
    assert_eq!(job_status(client, job).await.pending, 2);

    report(client, agent, held, 2).await;
    let last = wait_final(client, job).await;
    assert_eq!(
        (last.state, last.delivered, last.possible_duplicates),
        (JobState::Done, 2, 0)
    );
    // Its report is on disk: the agent may drop its copy.
    assert_eq!(
        heartbeat(client, agent, &[held]).await.released,
        [held.chunk]
    );
    assert!(
        other.received.lock().unwrap().is_empty(),
        "the chunk was not sent again"
    );
    running.stop().unwrap();
}

#[tokio::test]
async fn a_chunk_nobody_claims_goes_out_again_after_the_grace_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (job, held) = stopped_with_chunks_out(dir.path(), 1).await;
    let held = held[0];

    let running = start(dir.path(), Duration::from_millis(500)).await;
    let other = TestAgent::default();
    register(&running.client, serve_agent(other.clone()).await, 1).await;
    let last = wait_final(&running.client, job).await;
    assert_eq!(
        (last.state, last.delivered, last.possible_duplicates),
        (JobState::Done, 2, 2)
    );
    let sent = other.received.lock().unwrap().clone();
    assert_eq!(
        sent,
        [Held {
            epoch: held.epoch + 1,
            ..held
        }]
    );
    running.stop().unwrap();
}

#[tokio::test]
async fn an_adopted_chunk_whose_lease_expires_goes_out_again_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (job, held) = stopped_with_chunks_out(dir.path(), 1).await;
    let held = held[0];

    let running = start(dir.path(), Duration::from_secs(1)).await;
    let other = TestAgent::default();
    let agent = register_as_agent(&running.client, serve_agent(other.clone()).await).await;
    assert_eq!(
        heartbeat(&running.client, agent, &[held]).await.claimed,
        [held.chunk]
    );
    // No more heartbeats: the lease expires, and the chunk goes out again with the next epoch.
    let last = wait_final(&running.client, job).await;
    assert_eq!((last.delivered, last.possible_duplicates), (2, 2));
    assert_eq!(other.received.lock().unwrap()[0].epoch, held.epoch + 1);
    running.stop().unwrap();
}

#[tokio::test]
async fn a_cancel_takes_unclaimed_chunks_and_adopted_ones_finish_as_they_report() {
    let dir = tempfile::tempdir().unwrap();
    let (job, held) = stopped_with_chunks_out(dir.path(), 2).await;

    let running = start(dir.path(), Duration::from_secs(30)).await;
    let client = &running.client;
    let agent = register_as_agent(client, serve_agent(TestAgent::default()).await).await;
    assert_eq!(
        heartbeat(client, agent, &held[..1]).await.claimed,
        [held[0].chunk]
    );
    let answer = client
        .cancel(tarpc::context::current(), job)
        .await
        .unwrap()
        .unwrap();
    // The unclaimed chunk is cancelled at once; the adopted one is out.
    assert_eq!(
        (answer.state, answer.cancelled, answer.pending),
        (JobState::Cancelling, 2, 2)
    );
    // An agent still holding the cancelled chunk is told to drop it.
    assert_eq!(
        heartbeat(client, agent, &held[1..]).await.released,
        [held[1].chunk]
    );
    report(client, agent, held[0], 2).await;
    let last = wait_final(client, job).await;
    assert_eq!(
        (
            last.state,
            last.delivered,
            last.cancelled,
            last.possible_duplicates
        ),
        (JobState::Cancelled, 2, 2, 0)
    );
    running.stop().unwrap();
}

/// Restarts the controller of a stopped one whose chunk `held` was out, adopts it as an agent
/// served by `other`, and reports `outcome` for it as a part of position 1 alone (the
/// previous controller kept the report of position 0 in memory, and lost it).
async fn adopt_a_part_and_report(
    dir: &std::path::Path,
    held: Held,
    other: &TestAgent,
    outcome: Result<ChunkAnswer, volley_contracts::WireError>,
) -> (Running, volley_contracts::JobStatus) {
    let running = start(dir, Duration::from_secs(30)).await;
    let client = &running.client;
    let agent = register_as_agent(client, serve_agent(other.clone()).await).await;
    assert_eq!(
        heartbeat(client, agent, &[held]).await.claimed,
        [held.chunk]
    );
    let outcome = ChunkOutcome {
        chunk: held.chunk,
        epoch: held.epoch,
        outcome,
        positions: vec![1],
    };
    client
        .report(tarpc::context::current(), agent, vec![outcome])
        .await
        .unwrap()
        .unwrap();
    let last = wait_final(client, held.chunk.job).await;
    (running, last)
}

#[tokio::test]
async fn an_adopted_part_of_a_chunk_settles_it_and_the_rest_goes_out_again_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (job, held) = stopped_with_chunks_out(dir.path(), 1).await;
    let other = TestAgent::default();
    let answer = ChunkAnswer {
        report: ChunkReport {
            delivered: 1,
            ..ChunkReport::default()
        },
        positions: vec![1],
        ..ChunkAnswer::default()
    };
    let (running, last) = adopt_a_part_and_report(dir.path(), held[0], &other, Ok(answer)).await;
    assert_eq!(last.id, job);
    // Position 0 goes out again, to the only agent; the whole chunk counts as possible
    // duplicates (what the lost report counted is lost too).
    assert_eq!(
        (last.state, last.delivered, last.possible_duplicates),
        (JobState::Done, 2, 2),
        "{last:?}"
    );
    assert_eq!(other.positions.lock().unwrap().clone(), [vec![0]]);
    running.stop().unwrap();
}

#[tokio::test]
async fn an_adopted_part_handed_back_whole_sends_the_whole_chunk_again_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (_, held) = stopped_with_chunks_out(dir.path(), 1).await;
    let other = TestAgent::default();
    let paused = volley_contracts::WireError::new(
        volley_contracts::ErrorCode::ResourceExhausted,
        "circuit open",
    )
    .retry_after(Duration::from_millis(50));
    let (running, last) = adopt_a_part_and_report(dir.path(), held[0], &other, Err(paused)).await;
    assert_eq!(
        (last.state, last.delivered, last.possible_duplicates),
        (JobState::Done, 2, 2),
        "{last:?}"
    );
    // The whole chunk, since the controller does not know what became of position 0.
    assert_eq!(other.positions.lock().unwrap().clone(), [Vec::<u32>::new()]);
    running.stop().unwrap();
}
