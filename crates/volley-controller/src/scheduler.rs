//! The scheduler: the one shared request channel every agent's dispatcher pulls from, fed
//! fairly.
//!
//! Chunks wait in one queue per (app, platform) and, inside it, per job. A dispatcher worker
//! that is free asks for its next batch ([`Scheduler::next`]); the scheduler walks the queues
//! in round-robin order from where the last pull stopped and serves them by **deficit
//! round-robin**: each visit adds one chunk's worth of tokens (`controller.chunk_size`) to the
//! queue's credit and takes chunks while the credit lasts, the jobs of a queue taking turns a
//! chunk at a time. Each app with work therefore gets its share of the agents whatever the
//! size of its jobs, and a large or troubled job cannot hold the head.
//!
//! A queue is skipped — not spun on — for an agent that cannot send it (it did not declare
//! the app and platform), that paused it (the app's circuit is open there, until the time the
//! agent gave), or that already runs its fair share of calls for it while another queue has
//! work (`ceil(window / queues with work)`; a second pass without the cap keeps idle slots
//! busy). A worker that finds nothing waits on a notification, not a timer loop: it wakes
//! when work arrives, a slot frees up, an agent joins, or the earliest pause ends.
//!
//! A chunk given back (its agent paused its app, was lost, refused it) goes to the front of
//! **its own** queue, never to a global hand-back queue that every worker would have to read
//! first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use volley_contracts::{AgentId, AgentInfo, ChunkId, JobId, PausedQueue, Platform, QueueStat};

use crate::job::{ChunkSpec, Job};

/// Most chunks in one `deliver` call.
pub(crate) const MAX_BATCH_CHUNKS: usize = 1024;

/// One chunk to hand out.
#[derive(Debug)]
pub(crate) struct Work {
    pub(crate) job: Arc<Job>,
    pub(crate) spec: ChunkSpec,
    /// The lease epoch this hand-out uses; every hand-back increments it.
    pub(crate) epoch: u32,
}

impl Work {
    pub(crate) fn chunk_id(&self) -> ChunkId {
        ChunkId {
            job: self.job.id,
            index: self.spec.index,
        }
    }
}

/// What one pull took: the chunks and the queues they came from (for the fair cap's count of
/// calls in flight, given back with [`Scheduler::done`]).
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) works: Vec<Work>,
    pub(crate) queues: Vec<usize>,
}

/// The chunks of one job in one queue, in the order they go out.
#[derive(Debug)]
struct JobChunks {
    job: Arc<Job>,
    chunks: VecDeque<(ChunkSpec, u32)>,
}

/// One app's chunks for one platform.
#[derive(Debug)]
struct Queue {
    app: String,
    platform: Platform,
    jobs: VecDeque<JobChunks>,
    chunks: usize,
    tokens: u64,
    /// `deliver` calls carrying this queue's chunks, over every agent.
    in_flight: u64,
    /// Deficit round-robin credit, in tokens.
    deficit: usize,
    /// Whether the queue was last seen with chunks and no agent that serves it (logged when
    /// it starts and when it ends).
    waiting: bool,
}

/// What the scheduler knows of one registered agent.
#[derive(Debug)]
struct AgentSlot {
    info: AgentInfo,
    window: u32,
    /// Per queue (by index, grown as queues appear): whether the agent declared it.
    serves: Vec<bool>,
    /// Per queue: until when the agent paused it.
    paused: Vec<Option<Instant>>,
    /// Per queue: this agent's calls in flight carrying its chunks.
    in_flight: Vec<u32>,
}

impl AgentSlot {
    fn grow(&mut self, queues: &[Queue]) {
        while self.serves.len() < queues.len() {
            let queue = &queues[self.serves.len()];
            self.serves
                .push(self.info.serves(&queue.app, queue.platform));
            self.paused.push(None);
            self.in_flight.push(0);
        }
    }

    fn paused_at(&self, queue: usize, now: Instant) -> Option<Instant> {
        self.paused[queue].filter(|until| *until > now)
    }
}

#[derive(Debug, Default)]
struct Inner {
    queues: Vec<Queue>,
    /// app → queue index per platform.
    index: HashMap<String, [Option<usize>; Platform::ALL.len()]>,
    agents: HashMap<AgentId, AgentSlot>,
    /// Where the next pull starts its walk.
    cursor: usize,
    chunks: usize,
    /// Whether any agent has registered since the start: until then every queue waits, and
    /// saying so per queue would only be noise while the agents come up.
    agents_seen: bool,
}

impl Inner {
    fn queue_index(&mut self, app: &str, platform: Platform) -> usize {
        if let Some(index) = self
            .index
            .get(app)
            .and_then(|slots| slots[platform.index()])
        {
            return index;
        }
        let index = self.queues.len();
        self.queues.push(Queue {
            app: app.to_owned(),
            platform,
            jobs: VecDeque::new(),
            chunks: 0,
            tokens: 0,
            in_flight: 0,
            deficit: 0,
            waiting: false,
        });
        self.index.entry(app.to_owned()).or_default()[platform.index()] = Some(index);
        for agent in self.agents.values_mut() {
            agent.grow(&self.queues);
        }
        index
    }

    fn find(&self, app: &str, platform: Platform) -> Option<usize> {
        self.index
            .get(app)
            .and_then(|slots| slots[platform.index()])
    }

    /// Why a queue's chunks are not moving, if they are not: no registered agent declared it,
    /// or every agent that did paused it.
    fn waiting_reason(&self, index: usize, now: Instant) -> Option<String> {
        let queue = &self.queues[index];
        if queue.chunks == 0 {
            return None;
        }
        let (app, platform) = (&queue.app, queue.platform);
        let mut serving = self.agents.values().filter(|agent| agent.serves[index]);
        let Some(first) = serving.next() else {
            return Some(format!(
                "waiting_for_agent: no agent serves app {app:?} for {platform}"
            ));
        };
        let paused = |agent: &AgentSlot| agent.paused_at(index, now).is_some();
        if paused(first) && serving.all(paused) {
            return Some(format!(
                "paused: every agent serving app {app:?} for {platform} paused it (its provider's circuit is open)"
            ));
        }
        None
    }

    fn served(&self, queue: usize) -> bool {
        self.agents.values().any(|agent| agent.serves[queue])
    }

    /// Logs a queue starting or ending a wait for an agent that serves it.
    fn refresh_waiting(&mut self, queue: usize) {
        if !self.agents_seen {
            return;
        }
        let waiting = self.queues[queue].chunks > 0 && !self.served(queue);
        let queue = &mut self.queues[queue];
        if waiting == queue.waiting {
            return;
        }
        queue.waiting = waiting;
        if waiting {
            tracing::warn!(app = %queue.app, platform = %queue.platform, chunks = queue.chunks, "no agent serves this app and platform; its chunks wait for one");
        } else if queue.chunks > 0 {
            tracing::warn!(app = %queue.app, platform = %queue.platform, chunks = queue.chunks, "an agent serves this app and platform again; its chunks resume");
        }
    }

    fn refresh_all(&mut self) {
        for queue in 0..self.queues.len() {
            self.refresh_waiting(queue);
        }
    }

    /// Takes the next batch for `agent`, or says when to look again (the earliest end of a
    /// pause that keeps work from it; `None`: only new work or a freed slot can help).
    fn pull(
        &mut self,
        agent: AgentId,
        quantum: usize,
        now: Instant,
    ) -> Result<Batch, Option<Instant>> {
        let Inner {
            queues,
            agents,
            cursor,
            chunks,
            ..
        } = self;
        let Some(slot) = agents.get_mut(&agent) else {
            return Err(None);
        };
        let count = queues.len();
        let mut wake: Option<Instant> = None;
        // The queues this agent may take from now, and how many of them have work or calls
        // out with it: the fair cap shares its window among those.
        let mut eligible = vec![false; count];
        let mut active = 0u32;
        for (index, queue) in queues.iter().enumerate() {
            if !slot.serves[index] {
                continue;
            }
            if let Some(until) = slot.paused_at(index, now) {
                if queue.chunks > 0 {
                    wake = Some(wake.map_or(until, |wake| wake.min(until)));
                }
                continue;
            }
            // A pause that ended and no call has ended since: one call probes whether the
            // app's circuit closed on this agent, the others wait for its answer.
            let probing = slot.paused[index].is_some() && slot.in_flight[index] > 0;
            if queue.chunks > 0 && !probing {
                eligible[index] = true;
            }
            if queue.chunks > 0 || slot.in_flight[index] > 0 {
                active += 1;
            }
        }
        let share = slot.window.div_ceil(active.max(1)).max(1);
        let mut batch = Batch::default();
        let mut tokens = 0;
        for capped in [true, false] {
            for step in 0..count {
                let index = (*cursor + step) % count;
                if !eligible[index] || (capped && slot.in_flight[index] >= share) {
                    continue;
                }
                let queue = &mut queues[index];
                queue.deficit += quantum;
                let before = batch.works.len();
                while let Some(front) = queue.jobs.front_mut() {
                    let Some((spec, _)) = front.chunks.front() else {
                        queue.jobs.pop_front();
                        continue;
                    };
                    let len = spec.outgoing();
                    let fits = batch.works.is_empty() || tokens + len <= quantum;
                    if len > queue.deficit || !fits || batch.works.len() >= MAX_BATCH_CHUNKS {
                        break;
                    }
                    let (spec, epoch) = front.chunks.pop_front().expect("a front chunk");
                    let job = front.job.clone();
                    // The jobs of a queue take turns, a chunk at a time.
                    if front.chunks.is_empty() {
                        queue.jobs.pop_front();
                    } else if queue.jobs.len() > 1 {
                        let turned = queue.jobs.pop_front().expect("a front job");
                        queue.jobs.push_back(turned);
                    }
                    queue.deficit -= len;
                    queue.chunks -= 1;
                    queue.tokens -= len as u64;
                    *chunks -= 1;
                    tokens += len;
                    batch.works.push(Work { job, spec, epoch });
                }
                if queue.chunks == 0 {
                    queue.deficit = 0;
                    eligible[index] = false;
                } else {
                    queue.deficit = queue.deficit.min(quantum);
                }
                if batch.works.len() > before {
                    batch.queues.push(index);
                    queue.in_flight += 1;
                    slot.in_flight[index] += 1;
                    *cursor = index + 1;
                }
                if tokens >= quantum || batch.works.len() >= MAX_BATCH_CHUNKS {
                    break;
                }
            }
            if !batch.works.is_empty() {
                return Ok(batch);
            }
        }
        Err(wake)
    }

    /// Puts a chunk at the front of its own queue.
    fn push_front(&mut self, work: Work) -> usize {
        let index = self.queue_index(&work.job.app, work.spec.platform);
        let queue = &mut self.queues[index];
        queue.chunks += 1;
        queue.tokens += work.spec.outgoing() as u64;
        queue.jobs.push_front(JobChunks {
            job: work.job,
            chunks: VecDeque::from([(work.spec, work.epoch)]),
        });
        self.chunks += 1;
        index
    }
}

/// The scheduler shared by every dispatcher.
#[derive(Debug)]
pub(crate) struct Scheduler {
    inner: Mutex<Inner>,
    wake: Notify,
    /// `controller.chunk_size`: the deficit round-robin quantum and a call's token budget.
    quantum: usize,
}

impl Scheduler {
    pub(crate) fn new(chunk_size: usize) -> Scheduler {
        Scheduler {
            inner: Mutex::default(),
            wake: Notify::new(),
            quantum: chunk_size.max(1),
        }
    }

    /// Queues a job's chunks behind those of its app's other jobs.
    pub(crate) fn push_job(&self, job: &Arc<Job>, chunks: Vec<(ChunkSpec, u32)>) {
        if chunks.is_empty() {
            return;
        }
        {
            let mut inner = self.inner.lock();
            let mut by_platform: [VecDeque<(ChunkSpec, u32)>; Platform::ALL.len()] =
                Default::default();
            let all = chunks.len();
            for (spec, epoch) in chunks {
                by_platform[spec.platform.index()].push_back((spec, epoch));
            }
            for (platform, chunks) in Platform::ALL.into_iter().zip(by_platform) {
                if chunks.is_empty() {
                    continue;
                }
                let index = inner.queue_index(&job.app, platform);
                let queue = &mut inner.queues[index];
                queue.chunks += chunks.len();
                queue.tokens += chunks
                    .iter()
                    .map(|(spec, _)| spec.outgoing() as u64)
                    .sum::<u64>();
                queue.jobs.push_back(JobChunks {
                    job: job.clone(),
                    chunks,
                });
                inner.refresh_waiting(index);
            }
            inner.chunks += all;
        }
        self.wake.notify_waiters();
    }

    /// Gives a chunk back to the front of its queue; with `pause`, its agent will not be
    /// offered that queue again before the time given.
    pub(crate) fn hand_back(&self, work: Work, pause: Option<(AgentId, Instant)>) {
        {
            let mut inner = self.inner.lock();
            let index = inner.push_front(work);
            if let Some((agent, until)) = pause {
                if let Some(slot) = inner.agents.get_mut(&agent) {
                    slot.paused[index] = Some(until);
                }
            }
            inner.refresh_waiting(index);
        }
        self.wake.notify_waiters();
    }

    /// The agent cannot send this app's notifications on this platform after all (it
    /// answered `NoCredentials`): it is no longer offered that queue.
    pub(crate) fn withdraw(&self, agent: AgentId, app: &str, platform: Platform) {
        let mut inner = self.inner.lock();
        let Some(index) = inner.find(app, platform) else {
            return;
        };
        if let Some(slot) = inner.agents.get_mut(&agent) {
            if std::mem::replace(&mut slot.serves[index], false) {
                tracing::warn!(agent = %agent, name = %slot.info.name, %app, %platform, "agent has no credentials for this app and platform after all; not offered its chunks again");
            }
        }
        inner.refresh_waiting(index);
    }

    /// A batch's call is over and its chunks are settled: its slots are free again. A pause
    /// that had ended is over for good unless the call's answers set a new one.
    pub(crate) fn done(&self, agent: AgentId, batch_queues: &[usize]) {
        {
            let mut inner = self.inner.lock();
            let now = Instant::now();
            for &index in batch_queues {
                let queue = &mut inner.queues[index];
                queue.in_flight = queue.in_flight.saturating_sub(1);
                if let Some(slot) = inner.agents.get_mut(&agent) {
                    slot.in_flight[index] = slot.in_flight[index].saturating_sub(1);
                    if slot.paused[index].is_some_and(|until| until <= now) {
                        slot.paused[index] = None;
                    }
                }
            }
        }
        self.wake.notify_waiters();
    }

    /// The next batch for one of `agent`'s workers: waits until there is one, or returns
    /// `None` once `stop` is cancelled.
    pub(crate) async fn next(&self, agent: AgentId, stop: &CancellationToken) -> Option<Batch> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before looking, so that work arriving in between still wakes us.
            notified.as_mut().enable();
            let pulled = self.inner.lock().pull(agent, self.quantum, Instant::now());
            let wake = match pulled {
                Ok(batch) => return Some(batch),
                Err(wake) => wake,
            };
            let pause_ends = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = &mut notified => {}
                () = pause_ends => {}
            }
        }
    }

    /// Makes an agent's declared apps and platforms known; queues waiting for it resume.
    pub(crate) fn add_agent(&self, id: AgentId, info: AgentInfo, window: u32) {
        {
            let mut inner = self.inner.lock();
            let mut slot = AgentSlot {
                info,
                window: window.max(1),
                serves: Vec::new(),
                paused: Vec::new(),
                in_flight: Vec::new(),
            };
            slot.grow(&inner.queues);
            inner.agents.insert(id, slot);
            inner.agents_seen = true;
            inner.refresh_all();
        }
        self.wake.notify_waiters();
    }

    /// Forgets an agent (dropped or gone); queues only it served start waiting.
    pub(crate) fn remove_agent(&self, id: AgentId) {
        let mut inner = self.inner.lock();
        if inner.agents.remove(&id).is_some() {
            inner.refresh_all();
        }
    }

    /// Takes a job's queued chunks out (the job was cancelled); in-flight ones are not here.
    pub(crate) fn remove_job(&self, id: JobId) -> Vec<Work> {
        let mut inner = self.inner.lock();
        let mut removed = Vec::new();
        for index in 0..inner.queues.len() {
            let queue = &mut inner.queues[index];
            let before = removed.len();
            queue.jobs.retain_mut(|entry| {
                if entry.job.id != id {
                    return true;
                }
                for (spec, epoch) in entry.chunks.drain(..) {
                    queue.tokens -= spec.outgoing() as u64;
                    removed.push(Work {
                        job: entry.job.clone(),
                        spec,
                        epoch,
                    });
                }
                false
            });
            queue.chunks -= removed.len() - before;
            if removed.len() > before {
                inner.refresh_waiting(index);
            }
        }
        inner.chunks -= removed.len();
        removed
    }

    /// Why `app`'s chunks for `platform` are not moving, if they are not.
    pub(crate) fn waiting_reason(&self, app: &str, platform: Platform) -> Option<String> {
        let inner = self.inner.lock();
        let index = inner.find(app, platform)?;
        inner.waiting_reason(index, Instant::now())
    }

    /// Chunks queued, over every queue.
    pub(crate) fn queued(&self) -> usize {
        self.inner.lock().chunks
    }

    /// The app and platform queues each agent has paused now, with the time left.
    pub(crate) fn pauses(&self) -> HashMap<AgentId, Vec<PausedQueue>> {
        let inner = self.inner.lock();
        let now = Instant::now();
        inner
            .agents
            .iter()
            .filter_map(|(id, slot)| {
                let paused: Vec<PausedQueue> = (0..slot.paused.len())
                    .filter_map(|index| {
                        let until = slot.paused_at(index, now)?;
                        let queue = &inner.queues[index];
                        Some(PausedQueue {
                            app: queue.app.clone(),
                            platform: queue.platform,
                            for_ms: until.duration_since(now).as_millis() as u64,
                        })
                    })
                    .collect();
                (!paused.is_empty()).then_some((*id, paused))
            })
            .collect()
    }

    /// The queues with work, calls out or a wait.
    pub(crate) fn stats(&self) -> Vec<QueueStat> {
        let inner = self.inner.lock();
        let now = Instant::now();
        let mut stats: Vec<QueueStat> = inner
            .queues
            .iter()
            .enumerate()
            .filter(|(_, queue)| queue.chunks > 0 || queue.in_flight > 0)
            .map(|(index, queue)| QueueStat {
                app: queue.app.clone(),
                platform: queue.platform,
                chunks: queue.chunks as u64,
                notifications: queue.tokens,
                in_flight: queue.in_flight,
                waiting_for_agent: queue.chunks > 0 && !inner.served(index),
                waiting: inner.waiting_reason(index, now),
                paused_agents: inner
                    .agents
                    .values()
                    .filter(|agent| agent.serves[index] && agent.paused_at(index, now).is_some())
                    .count() as u32,
            })
            .collect();
        stats.sort_by(|a, b| (&a.app, a.platform).cmp(&(&b.app, b.platform)));
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use volley_contracts::{ServedApp, SubmitJob};

    fn info(apps: &[(&str, &[Platform])]) -> AgentInfo {
        AgentInfo {
            name: "a".into(),
            addr: "127.0.0.1:1".into(),
            apps: apps
                .iter()
                .map(|(app, platforms)| ServedApp {
                    app: (*app).into(),
                    platforms: platforms.to_vec(),
                })
                .collect(),
            window: 4,
            ops_addr: String::new(),
        }
    }

    fn job(
        app: &str,
        apns: usize,
        fcm: usize,
        chunk_size: usize,
    ) -> (Arc<Job>, Vec<(ChunkSpec, u32)>) {
        let submit = SubmitJob {
            app: app.into(),
            apns: None,
            fcm: None,
            apns_tokens: (0..apns).map(|i| format!("{i:064x}")).collect(),
            fcm_tokens: (0..fcm).map(|i| format!("f{i}")).collect(),
            webpush: None,
            webpush_tokens: Default::default(),
            idempotency_key: None,
            rejected: Default::default(),
        };
        let (job, specs) = Job::new(JobId::new(), submit, chunk_size, 0);
        (Arc::new(job), specs.into_iter().map(|s| (s, 0)).collect())
    }

    fn apps_of(batch: &Batch) -> Vec<String> {
        batch.works.iter().map(|w| w.job.app.clone()).collect()
    }

    #[test]
    fn apps_take_turns_whatever_was_queued_first() {
        let agent = AgentId(1);
        let (a, a_chunks) = job("a", 10_000, 0, 1000);
        let (b, b_chunks) = job("b", 3_000, 0, 1000);
        let scheduler = Scheduler::new(1000);
        scheduler.add_agent(
            agent,
            info(&[("a", &[Platform::Apns]), ("b", &[Platform::Apns])]),
            100,
        );
        scheduler.push_job(&a, a_chunks);
        scheduler.push_job(&b, b_chunks);
        let now = Instant::now();
        let mut inner = scheduler.inner.lock();
        let order: Vec<String> = (0..8)
            .map(|_| apps_of(&inner.pull(agent, 1000, now).unwrap()).concat())
            .collect();
        assert_eq!(order, ["a", "b", "a", "b", "a", "b", "a", "a"]);
    }

    #[test]
    fn jobs_of_one_app_take_turns_and_small_jobs_share_a_call() {
        let scheduler = Scheduler::new(1000);
        let agent = AgentId(1);
        scheduler.add_agent(agent, info(&[("a", &[Platform::Apns])]), 4);
        let (big, big_chunks) = job("a", 5_000, 0, 1000);
        scheduler.push_job(&big, big_chunks);
        let mut small = Vec::new();
        for _ in 0..3 {
            let (one, chunks) = job("a", 1, 0, 1000);
            scheduler.push_job(&one, chunks);
            small.push(one.id);
        }
        let mut inner = scheduler.inner.lock();
        let now = Instant::now();
        let first = inner.pull(agent, 1000, now).unwrap();
        assert_eq!(first.works.len(), 1);
        assert_eq!(first.works[0].job.id, big.id);
        // The big job went to the back: the three one-token jobs share the next call.
        let second = inner.pull(agent, 1000, now).unwrap();
        let ids: Vec<JobId> = second.works.iter().map(|w| w.job.id).collect();
        assert_eq!(ids, small);
    }

    #[test]
    fn an_agent_is_offered_only_what_it_declared_and_not_while_paused() {
        let scheduler = Scheduler::new(1000);
        let agent = AgentId(1);
        scheduler.add_agent(agent, info(&[("a", &[Platform::Apns])]), 4);
        let (fcm, fcm_chunks) = job("a", 0, 10, 1000);
        let (other, other_chunks) = job("b", 10, 0, 1000);
        let (apns, apns_chunks) = job("a", 10, 0, 1000);
        scheduler.push_job(&fcm, fcm_chunks);
        scheduler.push_job(&other, other_chunks);
        assert!(scheduler
            .waiting_reason("a", Platform::Fcm)
            .unwrap()
            .contains("no agent serves app \"a\" for fcm"));
        scheduler.push_job(&apns, apns_chunks);
        let now = Instant::now();
        let batch = scheduler.inner.lock().pull(agent, 1000, now).unwrap();
        assert_eq!(batch.works[0].job.id, apns.id);
        // Nothing else is for this agent.
        assert!(matches!(
            scheduler.inner.lock().pull(agent, 1000, now),
            Err(None)
        ));
        // Handed back with a pause: not offered again before it ends.
        let until = now + Duration::from_secs(2);
        let Batch { works, queues } = batch;
        scheduler.hand_back(works.into_iter().next().unwrap(), Some((agent, until)));
        scheduler.done(agent, &queues);
        assert!(
            matches!(scheduler.inner.lock().pull(agent, 1000, now), Err(Some(at)) if at == until)
        );
        // The agent's stats show the pause, with the time left.
        let pauses = scheduler.pauses();
        let paused = &pauses[&agent];
        assert_eq!(paused.len(), 1);
        assert_eq!(
            (paused[0].app.as_str(), paused[0].platform),
            ("a", Platform::Apns)
        );
        assert!(
            paused[0].for_ms > 0 && paused[0].for_ms <= 2_000,
            "{paused:?}"
        );
        assert!(scheduler.inner.lock().pull(agent, 1000, until).is_ok());
        let stats = scheduler.stats();
        assert!(stats.iter().any(|q| q.app == "b" && q.waiting_for_agent));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_pause_one_call_probes_before_the_others_follow() {
        let scheduler = Scheduler::new(1000);
        let agent = AgentId(1);
        scheduler.add_agent(agent, info(&[("a", &[Platform::Apns])]), 4);
        let (a, a_chunks) = job("a", 10_000, 0, 1000);
        scheduler.push_job(&a, a_chunks);
        let first = scheduler
            .inner
            .lock()
            .pull(agent, 1000, Instant::now())
            .unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        let chunk = first.works.into_iter().next().unwrap();
        scheduler.hand_back(chunk, Some((agent, until)));
        scheduler.done(agent, &first.queues);
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        let probe = scheduler.inner.lock().pull(agent, 1000, now).unwrap();
        assert!(
            matches!(scheduler.inner.lock().pull(agent, 1000, now), Err(None)),
            "a second call while the first probes"
        );
        // The probe's call ends without a new pause: the window is the app's again.
        scheduler.done(agent, &probe.queues);
        for _ in 0..4 {
            assert!(scheduler.inner.lock().pull(agent, 1000, now).is_ok());
        }
    }

    #[test]
    fn the_fair_cap_leaves_room_for_another_app() {
        let scheduler = Scheduler::new(1000);
        let agent = AgentId(1);
        scheduler.add_agent(
            agent,
            info(&[("a", &[Platform::Apns]), ("b", &[Platform::Apns])]),
            4,
        );
        let (a, a_chunks) = job("a", 20_000, 0, 1000);
        scheduler.push_job(&a, a_chunks);
        let now = Instant::now();
        let mut inner = scheduler.inner.lock();
        // Alone, app a may use the whole window.
        for _ in 0..4 {
            assert_eq!(apps_of(&inner.pull(agent, 1000, now).unwrap()), ["a"]);
        }
        drop(inner);
        let (b, b_chunks) = job("b", 20_000, 0, 1000);
        scheduler.push_job(&b, b_chunks);
        let mut inner = scheduler.inner.lock();
        // With b waiting, a is over its share (2 of 4): b is served first.
        assert_eq!(apps_of(&inner.pull(agent, 1000, now).unwrap()), ["b"]);
        assert_eq!(apps_of(&inner.pull(agent, 1000, now).unwrap()), ["b"]);
    }
}
