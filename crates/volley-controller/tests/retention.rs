//! Finished jobs are kept at most `controller.max_finished_jobs`: past it the oldest are
//! forgotten first, with their idempotency keys, and stay forgotten after a restart.

use volley_contracts::{ErrorCode, JobId, JobState};
use volley_testkit::controller::{
    job, register, serve_agent, start_controller_with, Running, TestAgent, WAIT,
};
use volley_testkit::tokens::apns_token;
use volley_testkit::wait::wait_until;

async fn start(dir: &std::path::Path) -> Running {
    start_controller_with(dir, |config| config.controller.max_finished_jobs = 5).await
}

/// The job's state, or `None` once the controller has forgotten it.
async fn state(running: &Running, id: JobId) -> Option<JobState> {
    match running
        .client
        .status(tarpc::context::current(), id, 0)
        .await
        .unwrap()
    {
        Ok(status) => Some(status.state),
        Err(error) if error.code == ErrorCode::NotFound => None,
        Err(error) => panic!("{error}"),
    }
}

#[tokio::test]
async fn the_oldest_finished_jobs_go_first_past_the_limit_and_stay_gone() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path()).await;
    register(&running.client, serve_agent(TestAgent::default()).await, 1).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let key = (i == 0).then_some("first-key");
        let token = apns_token("", i);
        let accepted = running
            .client
            .submit(tarpc::context::current(), job(&[token], key))
            .await
            .unwrap()
            .unwrap();
        wait_until(WAIT, "the job to finish", || async {
            state(&running, accepted.id).await == Some(JobState::Done)
        })
        .await
        .unwrap();
        ids.push(accepted.id);
    }
    for id in &ids[5..] {
        assert_eq!(state(&running, *id).await, Some(JobState::Done), "{id}");
    }
    // With a slack of one job (1% of the limit, at least one), at most six are kept.
    for id in &ids[..4] {
        assert_eq!(state(&running, *id).await, None, "{id} is forgotten");
    }
    // Its idempotency key went with the first job: the same key makes a new job now.
    let again = running
        .client
        .submit(
            tarpc::context::current(),
            job(&[apns_token("", 99)], Some("first-key")),
        )
        .await
        .unwrap()
        .unwrap();
    assert_ne!(again.id, ids[0]);
    wait_until(WAIT, "the new job to finish", || async {
        state(&running, again.id).await == Some(JobState::Done)
    })
    .await
    .unwrap();
    running.stop().unwrap();

    // After a restart the forgotten stay forgotten and the limit holds.
    let running = start(dir.path()).await;
    for id in &ids[..5] {
        assert_eq!(state(&running, *id).await, None, "{id} stays forgotten");
    }
    for id in ids[6..].iter().chain([&again.id]) {
        assert_eq!(state(&running, *id).await, Some(JobState::Done), "{id}");
    }
    running.stop().unwrap();
}
