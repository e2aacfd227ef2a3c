//! Cancel against the real controller: the answer says the state reached (`Cancelling` while
//! a chunk is out with an agent, `Cancelled` once nothing is), no chunk goes out after it,
//! the counts balance, and a cancel outlives a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use volley_contracts::{ControllerClient, JobId, JobState, JobStatus};
use volley_testkit::controller::{
    job_status, register, serve_agent, start_controller_with, submit, wait_final, Running,
    TestAgent, WAIT,
};
use volley_testkit::tokens::apns_tokens;
use volley_testkit::wait::wait_until;

async fn cancel(controller: &ControllerClient, id: JobId) -> JobStatus {
    controller
        .cancel(tarpc::context::current(), id)
        .await
        .unwrap()
        .unwrap()
}

fn assert_balanced(status: &JobStatus) {
    assert_eq!(
        status.accepted,
        status.delivered + status.invalid + status.failed + status.cancelled + status.pending,
        "{status:?}"
    );
}

/// Chunks of two tokens; a short drain, since the held chunk never reports.
async fn start(dir: &std::path::Path) -> Running {
    start_controller_with(dir, |config| {
        config.controller.chunk_size = 2;
        config.controller.shutdown_grace = Duration::from_millis(200);
    })
    .await
}

/// An agent with one chunk in flight whose first call is held until the gate opens.
async fn held_agent(controller: &ControllerClient) -> (TestAgent, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let agent = TestAgent {
        gate: Some(gate.clone()),
        ..TestAgent::default()
    };
    register(controller, serve_agent(agent.clone()).await, 1).await;
    (agent, gate)
}

async fn wait_for_calls(agent: &TestAgent, calls: usize) {
    wait_until(WAIT, "the agent's first call", || async {
        agent.calls.lock().unwrap().len() >= calls
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_running_job_is_cancelling_until_its_chunk_out_reports_and_no_chunk_starts_after() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let controller = &running.client;
    let (agent, gate) = held_agent(controller).await;
    // Five chunks; the agent holds the first.
    let job = submit(controller, &apns_tokens("", 10)).await;
    wait_for_calls(&agent, 1).await;
    assert_eq!(
        job_status(controller, job.id).await.state,
        JobState::Running
    );

    let answer = cancel(controller, job.id).await;
    assert_eq!(answer.state, JobState::Cancelling, "{answer:?}");
    assert_eq!(
        (answer.delivered, answer.cancelled, answer.pending),
        (0, 8, 2),
        "the queued chunks are cancelled at once; the one out is pending"
    );
    assert_balanced(&answer);
    // A second cancel changes nothing.
    let again = cancel(controller, job.id).await;
    assert_eq!((again.state, again.cancelled), (JobState::Cancelling, 8));

    gate.add_permits(1);
    let last = wait_final(controller, job.id).await;
    assert_eq!(last.state, JobState::Cancelled);
    assert_eq!((last.delivered, last.cancelled), (2, 8));
    assert_eq!(
        *agent.calls.lock().unwrap(),
        [1],
        "no chunk went out after the cancel"
    );
    running.stop().unwrap();
}

#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_a_finished_one_stays_done() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller_with(dir.path(), |config| {
        config.controller.chunk_size = 2;
        config.controller.accept_unserved = true;
    })
    .await;
    let controller = &running.client;
    // No agent: every chunk is queued.
    let queued = submit(controller, &apns_tokens("", 5)).await;
    let answer = cancel(controller, queued.id).await;
    assert_eq!(answer.state, JobState::Cancelled, "{answer:?}");
    assert_eq!((answer.cancelled, answer.pending), (5, 0));
    assert!(answer.finished_ms.is_some());

    register(controller, serve_agent(TestAgent::default()).await, 1).await;
    let done = submit(controller, &apns_tokens("", 3)).await;
    let finished = wait_final(controller, done.id).await;
    assert_eq!(finished.state, JobState::Done);
    let answer = cancel(controller, done.id).await;
    assert_eq!(
        (answer.state, answer.delivered, answer.cancelled),
        (JobState::Done, 3, 0)
    );
    running.stop().unwrap();
}

#[tokio::test]
async fn a_cancel_outlives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    let (agent, _gate) = held_agent(&running.client).await;
    let job = submit(&running.client, &apns_tokens("", 6)).await;
    wait_for_calls(&agent, 1).await;
    let answer = cancel(&running.client, job.id).await;
    assert_eq!((answer.state, answer.pending), (JobState::Cancelling, 2));
    // The controller stops with the chunk still out (it never reports).
    running.stop().unwrap();

    let running = start(dir.path()).await;
    let last = wait_final(&running.client, job.id).await;
    assert_eq!(last.state, JobState::Cancelled);
    // The chunk that was out is not sent again: counted cancelled, not a duplicate.
    assert_eq!(
        (last.delivered, last.cancelled, last.possible_duplicates),
        (0, 6, 0)
    );
    assert_eq!(agent.calls.lock().unwrap().len(), 1);
    running.stop().unwrap();
}
