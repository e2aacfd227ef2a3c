//! Batches between the nodes: a front's `submit_many` call is answered job by job, and the
//! single-notification jobs that wait in the queue while an agent is busy go to it in one
//! `deliver` call.

use std::sync::Arc;
use tokio::sync::Semaphore;
use volley_contracts::{ErrorCode, JobState};
use volley_testkit::controller::{
    job, register, serve_agent, start_controller, submit, TestAgent, WAIT,
};
use volley_testkit::tokens::apns_token;
use volley_testkit::wait::wait_until;

fn tokens(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| apns_token("", i)).collect()
}

#[tokio::test]
async fn a_batch_of_submissions_is_answered_job_by_job() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;

    let batch = vec![
        job(&tokens(0..3), Some("key-1")),
        job(&[], None),
        job(&tokens(0..3), Some("key-1")),
        job(&tokens(4..6), None),
        job(&tokens(3..4), Some("key-1")),
    ];
    let answers = controller
        .submit_many(tarpc::context::current(), batch)
        .await
        .unwrap();
    assert_eq!(answers.len(), 5);
    let first = answers[0].clone().expect("the first job is accepted");
    assert_eq!((first.accepted, first.replayed), (3, false));
    let refused = answers[1].clone().expect_err("an empty job is refused");
    assert_eq!(refused.code, ErrorCode::InvalidArgument);
    // Within the batch the first is not stored yet: a repeat is told the key is in use, as
    // it would be from another call, and another request with the key is refused.
    assert_eq!(
        answers[2].clone().unwrap_err().code,
        ErrorCode::IdempotencyKeyInUse
    );
    assert_eq!(
        answers[4].clone().unwrap_err().code,
        ErrorCode::IdempotencyKeyReused
    );
    let last = answers[3].clone().unwrap();
    assert_ne!(last.id, first.id);
    assert_eq!(last.accepted, 2);
    for (id, accepted) in [(first.id, 3), (last.id, 2)] {
        let status = controller
            .status(tarpc::context::current(), id, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (status.accepted, status.state),
            (accepted, JobState::Queued)
        );
    }
    // Ids are time-ordered (UUIDv7): the later job sorts after the earlier one.
    assert!(last.id > first.id);

    // In a later call the same request with the key is answered with the first job, and
    // another request with it is refused.
    let again = controller
        .submit_many(
            tarpc::context::current(),
            vec![
                job(&tokens(0..3), Some("key-1")),
                job(&tokens(9..10), Some("key-1")),
            ],
        )
        .await
        .unwrap();
    let replayed = again[0].clone().unwrap();
    assert_eq!((replayed.id, replayed.accepted), (first.id, first.accepted));
    assert!(replayed.replayed);
    assert_eq!(
        again[1].clone().unwrap_err().code,
        ErrorCode::IdempotencyKeyReused
    );
    running.stop().unwrap();
}

#[tokio::test]
async fn small_jobs_queued_behind_a_busy_agent_go_out_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_controller(dir.path()).await;
    let controller = &running.client;

    let gate = Arc::new(Semaphore::new(0));
    let agent = TestAgent {
        gate: Some(gate.clone()),
        ..TestAgent::default()
    };
    let agent_addr = serve_agent(agent.clone()).await;
    // One worker: while it waits on the held call, everything else queues.
    register(controller, agent_addr, 1).await;

    let held = submit(controller, &tokens(0..1)).await;
    wait_until(WAIT, "the first call", || async {
        !agent.calls.lock().unwrap().is_empty()
    })
    .await
    .unwrap();
    let mut ids = vec![held.id];
    for i in 1..=50 {
        ids.push(submit(controller, &tokens(i..i + 1)).await.id);
    }
    gate.add_permits(1);
    wait_until(WAIT, "every job to finish", || async {
        let mut done = true;
        for id in &ids {
            let status = controller
                .status(tarpc::context::current(), *id, 0)
                .await
                .unwrap()
                .unwrap();
            done &= status.state == JobState::Done && status.delivered == 1;
        }
        done
    })
    .await
    .unwrap();
    assert_eq!(
        *agent.calls.lock().unwrap(),
        [1, 50],
        "the 50 jobs queued meanwhile share the next call"
    );
    running.stop().unwrap();
}
