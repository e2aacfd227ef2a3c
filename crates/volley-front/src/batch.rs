//! Small submissions gathered into one `submit_many` call.
//!
//! Every accepted job costs the controller a store commit and the link a round trip. Under a
//! stream of single-notification requests those would dominate, so small jobs go through one
//! task that takes whatever is waiting (up to [`MAX_JOBS`]) into one call, with at most
//! [`MAX_CALLS`] calls out at once. An idle front sends each job at once (no timer, no added
//! latency); a busy one sends larger batches, because jobs queue while the calls are out.
//! Each caller still gets its own answer, and only once the controller has its job on disk.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};
use volley_contracts::{ErrorCode, JobAccepted, SubmitJob};

use crate::error::ApiError;
use crate::link::{ControllerLink, FAILOVER_WAIT};

/// Jobs with fewer notifications than this are batched; larger ones (a broadcast's tens of
/// megabytes) go in a call of their own.
pub(crate) const BATCH_BELOW: usize = 1000;
/// Most jobs in one call.
const MAX_JOBS: usize = 512;
/// Most batch calls out at once.
const MAX_CALLS: usize = 8;
/// Submissions waiting for a call; a full queue makes callers wait (backpressure).
const QUEUE: usize = 4096;

type Answer = Result<JobAccepted, ApiError>;

struct Pending {
    job: SubmitJob,
    answer: oneshot::Sender<Answer>,
}

/// The front's batcher of small submissions; its task starts on first use.
pub(crate) struct Batcher {
    link: Arc<ControllerLink>,
    deadline: Duration,
    queue: OnceLock<mpsc::Sender<Pending>>,
}

impl Batcher {
    pub(crate) fn new(link: Arc<ControllerLink>, deadline: Duration) -> Batcher {
        Batcher {
            link,
            deadline,
            queue: OnceLock::new(),
        }
    }

    /// Submits `job` in the next batch; resolves with its own answer.
    pub(crate) async fn submit(&self, job: SubmitJob) -> Answer {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(self.link.clone(), self.deadline, rx));
            tx
        });
        let gone = || ApiError::controller_unreachable(&tarpc::client::RpcError::Shutdown);
        let (answer, wait) = oneshot::channel();
        if queue.send(Pending { job, answer }).await.is_err() {
            return Err(gone());
        }
        wait.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// Takes what waits into calls until every sender is gone.
async fn run(link: Arc<ControllerLink>, deadline: Duration, mut queue: mpsc::Receiver<Pending>) {
    let calls = Arc::new(Semaphore::new(MAX_CALLS));
    loop {
        // The permit first: while every call is out, submissions pile up for the next one.
        let Ok(permit) = calls.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, MAX_JOBS).await == 0 {
            return;
        }
        let link = link.clone();
        tokio::spawn(async move {
            call(&link, deadline, batch).await;
            drop(permit);
        });
    }
}

/// One `submit_many` call; every waiter gets its answer. With several controllers, jobs
/// are sent again to the new leader when that is safe: those a standby refused ("not leader":
/// nothing was done), and, after a lost link, those with an idempotency key (a repeat finds
/// the first if it was stored).
async fn call(link: &Arc<ControllerLink>, deadline: Duration, batch: Vec<Pending>) {
    let (mut jobs, mut answers): (Vec<SubmitJob>, Vec<oneshot::Sender<Answer>>) = batch
        .into_iter()
        .map(|pending| (pending.job, pending.answer))
        .unzip();
    let give_up = tokio::time::Instant::now() + FAILOVER_WAIT;
    loop {
        let count = jobs.len();
        // Kept only where there is another controller to send them to.
        let kept = link.follows_leader().then(|| jobs.clone());
        let client = link.client();
        let mut context = tarpc::context::current();
        context.deadline = Instant::now() + deadline;
        let mut again = Vec::new();
        match client.submit_many(context, jobs).await {
            Ok(results) if results.len() == count => {
                for ((answer, result), job) in answers.into_iter().zip(results).zip(
                    kept.into_iter()
                        .flatten()
                        .map(Some)
                        .chain(std::iter::repeat_with(|| None)),
                ) {
                    match (result, job) {
                        (Err(wire), Some(job)) if wire.code == ErrorCode::NotLeader => {
                            link.answered(&wire);
                            again.push((job, answer, ApiError::from_wire(wire)));
                        }
                        (result, _) => {
                            if let Err(wire) = &result {
                                link.answered(wire);
                            }
                            let _ = answer.send(result.map_err(ApiError::from_wire));
                        }
                    }
                }
            }
            Ok(results) => {
                tracing::error!(
                    jobs = count,
                    answers = results.len(),
                    "the controller answered a batch with the wrong number of results"
                );
                for answer in answers {
                    let _ = answer.send(Err(ApiError::new(
                        crate::error::Code::Internal,
                        "the controller's answer was malformed",
                    )));
                }
            }
            Err(error) => {
                tracing::warn!(%error, jobs = count, "controller submit failed");
                let unreachable = link.unreachable(&error);
                let kept = kept
                    .into_iter()
                    .flatten()
                    .map(Some)
                    .chain(std::iter::repeat_with(|| None));
                for (answer, job) in answers.into_iter().zip(kept) {
                    match job {
                        Some(job) if job.idempotency_key.is_some() => {
                            again.push((job, answer, unreachable.clone()));
                        }
                        _ => {
                            let _ = answer.send(Err(unreachable.clone()));
                        }
                    }
                }
            }
        }
        if again.is_empty() {
            return;
        }
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        if link.switched(&client, left).await.is_none() {
            for (_, answer, error) in again {
                let _ = answer.send(Err(error));
            }
            return;
        }
        tracing::info!(
            jobs = again.len(),
            "sending submissions again to the new leader"
        );
        (jobs, answers) = again
            .into_iter()
            .map(|(job, answer, _)| (job, answer))
            .unzip();
    }
}
