//! What the dispatcher does with an agent's refusals, against the real controller: a paused
//! app stays off that agent for the time it gave, an agent without credentials is not asked
//! again, a chunk nobody can send fails, and none of it spins.

use std::time::Duration;

use volley_contracts::{ErrorCode, JobId, JobState, JobStatus, Platform, WireError};
use volley_testkit::controller::{
    register, register_serving, serve_agent, start_controller, submit, TestAgent, WAIT,
};
use volley_testkit::tokens::apns_token;
use volley_testkit::wait::wait_until;

async fn status(controller: &volley_contracts::ControllerClient, id: JobId) -> JobStatus {
    controller
        .status(tarpc::context::current(), id, 10)
        .await
        .unwrap()
        .unwrap()
}

async fn wait_done(controller: &volley_contracts::ControllerClient, id: JobId) -> JobStatus {
    wait_until(WAIT, "the job to finish", || async move {
        status(controller, id).await.finished_ms.is_some()
    })
    .await
    .unwrap();
    status(controller, id).await
}

#[tokio::test]
async fn a_paused_app_stays_off_the_agent_for_the_time_it_gave() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;
    let agent = TestAgent::default();
    agent.refusals.lock().unwrap().push_back(
        WireError::new(ErrorCode::ResourceExhausted, "circuit open")
            .retry_after(Duration::from_millis(400)),
    );
    register(controller, serve_agent(agent.clone()).await, 4).await;
    let job = submit(controller, &[apns_token("", 1)]).await;
    let done = wait_done(controller, job.id).await;
    assert_eq!((done.delivered, done.possible_duplicates), (1, 0));
    let times = agent.call_times.lock().unwrap().clone();
    assert_eq!(times.len(), 2, "refused once, then delivered");
    assert!(
        times[1] - times[0] >= Duration::from_millis(400),
        "offered again after {:?}, before the pause ended",
        times[1] - times[0]
    );
    running.stop().unwrap();
}

#[tokio::test]
async fn an_agent_without_the_credentials_is_not_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;
    // It declared APNs, but has no credentials after all.
    let wrong = TestAgent::default();
    for _ in 0..10 {
        wrong.refusals.lock().unwrap().push_back(WireError::new(
            ErrorCode::NoCredentials,
            "no APNs credentials",
        ));
    }
    register_serving(
        controller,
        serve_agent(wrong.clone()).await,
        4,
        &[Platform::Apns],
    )
    .await;
    let job = submit(controller, &[apns_token("", 2)]).await;
    wait_until(WAIT, "the job to wait for an agent", || async move {
        status(controller, job.id).await.waiting.is_some()
    })
    .await
    .unwrap();
    let waiting = status(controller, job.id).await;
    assert_eq!(waiting.state, JobState::Running, "{waiting:?}");
    assert_eq!(
        waiting.waiting.as_deref(),
        Some("waiting_for_agent: no agent serves app \"shop\" for apns")
    );
    // Another agent that can send it joins: the job finishes, and the first was asked once.
    let right = TestAgent::default();
    register(controller, serve_agent(right.clone()).await, 4).await;
    let done = wait_done(controller, job.id).await;
    assert_eq!(done.delivered, 1);
    assert_eq!(wrong.calls.lock().unwrap().len(), 1);
    assert_eq!(right.calls.lock().unwrap().len(), 1);
    running.stop().unwrap();
}

#[tokio::test]
async fn a_chunk_no_agent_can_send_fails_instead_of_going_round() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;
    let agent = TestAgent::default();
    agent
        .refusals
        .lock()
        .unwrap()
        .push_back(WireError::new(ErrorCode::InvalidArgument, "bad payload"));
    register(controller, serve_agent(agent.clone()).await, 4).await;
    let job = submit(controller, &[apns_token("", 3), apns_token("", 4)]).await;
    let done = wait_done(controller, job.id).await;
    assert_eq!((done.delivered, done.failed), (0, 2), "{done:?}");
    assert_eq!(done.failures[0].class, "bad_request");
    assert_eq!(agent.calls.lock().unwrap().len(), 1);
    running.stop().unwrap();
}

#[tokio::test]
async fn the_rest_of_a_chunk_an_agent_handed_back_goes_out_alone_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;
    // Its circuit opens after 3 of the chunk's 10 notifications.
    let agent = TestAgent::default();
    agent
        .hand_backs
        .lock()
        .unwrap()
        .push_back((3, Duration::from_millis(400)));
    register(controller, serve_agent(agent.clone()).await, 4).await;
    let mut tokens: Vec<String> = (0..10).map(|i| apns_token("", 100 + i)).collect();
    tokens[1] = apns_token("dead", 1);
    tokens[7] = apns_token("dead", 7);
    let job = submit(controller, &tokens).await;
    let done = wait_done(controller, job.id).await;
    assert_eq!(
        (
            done.delivered,
            done.invalid,
            done.failed,
            done.possible_duplicates
        ),
        (8, 2, 0, 0),
        "{done:?}"
    );
    // Each invalid token is reported as itself: the part's positions map back to the chunk.
    let invalid: Vec<&str> = done
        .invalid_tokens
        .iter()
        .map(|invalid| invalid.token.as_str())
        .collect();
    assert_eq!(invalid, [tokens[1].as_str(), tokens[7].as_str()]);
    // Only the seven handed back went out again, after the pause the agent asked for.
    let positions = agent.positions.lock().unwrap().clone();
    assert_eq!(positions, [vec![], (3..10).collect::<Vec<u32>>()]);
    let times = agent.call_times.lock().unwrap().clone();
    assert!(
        times[1] - times[0] >= Duration::from_millis(400),
        "offered again after {:?}, before the pause ended",
        times[1] - times[0]
    );
    let received = agent.received.lock().unwrap().clone();
    assert_eq!(received[1].epoch, received[0].epoch + 1);
    running.stop().unwrap();
}

#[tokio::test]
async fn a_chunk_is_handed_back_three_times_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;
    // Its circuit opens after one notification, every time.
    let agent = TestAgent::default();
    for _ in 0..5 {
        agent
            .hand_backs
            .lock()
            .unwrap()
            .push_back((1, Duration::from_millis(10)));
    }
    register(controller, serve_agent(agent.clone()).await, 4).await;
    let tokens: Vec<String> = (0..10).map(|i| apns_token("", 200 + i)).collect();
    let job = submit(controller, &tokens).await;
    let done = wait_done(controller, job.id).await;
    assert_eq!((done.delivered, done.failed), (10, 0), "{done:?}");
    // The whole chunk, then three parts; the last may not be handed back, and ends there.
    let sizes: Vec<usize> = agent
        .positions
        .lock()
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(sizes, [0, 9, 8, 7]);
    running.stop().unwrap();
}
