//! The controller's durable store: jobs, chunk states and idempotency keys in redb.
//!
//! One writer thread owns the database. Everything that must be durable goes to it as a
//! [`Write`]; it takes every write waiting in its queue, applies them in **one** transaction
//! and commits it (redb fsyncs on commit), then answers each. Many concurrent submissions
//! therefore share one fsync (group commit). The front answers 2xx only after the job's
//! commit.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use volley_contracts::{
    ChunkReport, Fingerprint, InvalidToken, JobId, Platform, SubmitJob, TokenList,
};

use crate::clock::now_ms;

/// Where a webhook outbox entry lives in the store: (job, chunk index, part within the chunk).
pub(crate) type EntryKey = (u128, u32, u32);

/// A webhook outbox entry as stored (the job comes from the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub(crate) app: String,
    pub(crate) tokens: Vec<InvalidToken>,
}

/// The store's page cache.
const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// job id → [`RecordHeader`] (bincode): the job without its token buffers; a small job's
/// token buffers follow the header in the same value (APNs, FCM, then Web Push: see
/// [`INLINE_TOKENS`]).
const JOBS: TableDefinition<'_, u128, &[u8]> = TableDefinition::new("jobs");
/// Token buffers up to this size (together) are kept in the job's `JOBS` value rather than in
/// `TOKENS`: a single-notification job is then one record, not two.
const INLINE_TOKENS: usize = 4096;
/// (job id, platform: 0 APNs, 1 FCM, 2 Web Push) → the job's token buffer, as the front sent it: stored
/// straight from the submission, so a million tokens are never copied into another format.
const TOKENS: TableDefinition<'_, (u128, u8), &[u8]> = TableDefinition::new("job_tokens");
/// (job id, chunk index) → the chunk's state ([`ChunkState`]): out with an agent (its lease
/// epoch), or done (its report and when). One record per chunk, overwritten when the chunk
/// is done, and the last chunk's time is the job's end: with its tokens inline, a one-chunk
/// job is two records written in three B-tree operations over its life (the job; the chunk,
/// twice) instead of six in the first layout ([`v1`]).
const CHUNKS: TableDefinition<'_, (u128, u32), &[u8]> = TableDefinition::new("chunks");
/// job id → when it was cancelled (ms since the epoch), for jobs cancelled before they
/// finished. The first layout's marks are in [`v1::CANCELLED`].
const CANCELS: TableDefinition<'_, u128, u64> = TableDefinition::new("jobs_cancel");
/// job id → notifications that may have been sent twice (chunks handed out again).
const DUPLICATES: TableDefinition<'_, u128, u64> = TableDefinition::new("jobs_duplicates");
/// (app, idempotency key) → (job id, accepted at ms, notifications accepted, the request's
/// fingerprint: 32 bytes, or none for keys of the first layout, [`v1::IDEMPOTENCY`]).
const KEYS: TableDefinition<'_, (&str, &str), KeyValue> = TableDefinition::new("idempotency_keys");
/// A [`KEYS`] value: (job id, accepted at ms, notifications accepted, fingerprint or empty).
type KeyValue = (u128, u64, u64, &'static [u8]);
/// (job id, chunk index, part) → invalid tokens not yet acknowledged by the app's webhook
/// ([`StoredEntry`], bincode). Kept past the job's retention until acknowledged.
const WEBHOOK: TableDefinition<'_, (u128, u32, u32), &[u8]> =
    TableDefinition::new("webhook_outbox");
/// (app, platform: 0 APNs, 1 FCM) → when an agent first declared it (ms since the epoch): the
/// pairs some agent can send, so that a restarted controller keeps accepting their jobs while
/// its agents come back.
const DECLARED: TableDefinition<'_, (&str, u8), u64> = TableDefinition::new("declared");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another controller holds the data directory.
    #[error("controller.data_dir {0} is in use by another controller")]
    Locked(String),
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// The writer thread is gone.
    #[error("store writer stopped")]
    Stopped,
    /// Another controller became the leader (PostgreSQL store): this one may write nothing
    /// more and steps down.
    #[error("store: another controller is the leader now (this one's term {0} is over)")]
    Fenced(i64),
}

pub(crate) fn db_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Db(error.to_string())
}

/// A chunk's state as [`CHUNKS`] holds it: a tag byte, then the epoch (u32, little endian),
/// or the time it was done (u64, little endian) and its [`ChunkReport`] (bincode).
#[derive(Debug)]
pub(crate) enum ChunkState {
    Leased { epoch: u32 },
    Done { at_ms: u64, report: ChunkReport },
}

const LEASED_TAG: u8 = 0;
const DONE_TAG: u8 = 1;

pub(crate) fn leased_value(epoch: u32) -> [u8; 5] {
    let mut value = [LEASED_TAG; 5];
    value[1..].copy_from_slice(&epoch.to_le_bytes());
    value
}

/// `report` is the report's bincode encoding.
pub(crate) fn done_value(at_ms: u64, report: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(9 + report.len());
    value.push(DONE_TAG);
    value.extend_from_slice(&at_ms.to_le_bytes());
    value.extend_from_slice(report);
    value
}

impl ChunkState {
    pub(crate) fn decode(value: &[u8]) -> Result<ChunkState, StoreError> {
        let bad = || StoreError::Db("a chunk record is malformed".into());
        match value.split_first() {
            Some((&LEASED_TAG, rest)) => Ok(ChunkState::Leased {
                epoch: u32::from_le_bytes(rest.try_into().map_err(|_| bad())?),
            }),
            Some((&DONE_TAG, rest)) if rest.len() >= 8 => {
                let (at, report) = rest.split_at(8);
                Ok(ChunkState::Done {
                    at_ms: u64::from_le_bytes(at.try_into().map_err(|_| bad())?),
                    report: bincode::deserialize(report).map_err(db_error)?,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// The first layout kept a chunk's lease, its report and the job's end in three tables;
/// [`migrate_v1`] moves them into [`CHUNKS`] when a store of that layout is opened.
mod v1 {
    use redb::TableDefinition;

    /// (job id, chunk index) → [`ChunkReport`](volley_contracts::ChunkReport) (bincode).
    pub(super) const DONE: TableDefinition<'_, (u128, u32), &[u8]> =
        TableDefinition::new("chunks_done");
    /// (job id, chunk index) → the epoch of a chunk out with an agent.
    pub(super) const LEASED: TableDefinition<'_, (u128, u32), u32> =
        TableDefinition::new("chunks_leased");
    /// job id → when it finished (ms since the epoch).
    pub(super) const FINISHED: TableDefinition<'_, u128, u64> =
        TableDefinition::new("jobs_finished");
    /// idempotency key → (job id, accepted at ms): keys were not scoped to an app and had
    /// no fingerprint. [`super::migrate_keys_v1`] moves them to [`super::KEYS`].
    pub(super) const IDEMPOTENCY: TableDefinition<'_, &str, (u128, u64)> =
        TableDefinition::new("idempotency");
    /// job id → () for cancelled jobs, marked whether or not the cancel came before the job
    /// finished (kept and read as it is: see [`super::CancelMark::Legacy`]).
    pub(super) const CANCELLED: TableDefinition<'_, u128, ()> =
        TableDefinition::new("jobs_cancelled");
}

/// Moves the idempotency keys of the first layout (the key alone) to [`KEYS`], scoped to
/// the app of the job each names, in one transaction; returns how many it moved. A key
/// whose job is gone names nothing and is dropped. Moved keys have no fingerprint: a repeat
/// with them is answered with their job whatever its body, as before.
fn migrate_keys_v1(db: &Database) -> Result<usize, StoreError> {
    use redb::TableHandle;

    let txn = db.begin_write().map_err(db_error)?;
    let present = txn
        .list_tables()
        .map_err(db_error)?
        .any(|table| table.name() == v1::IDEMPOTENCY.name());
    if !present {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let old = txn.open_table(v1::IDEMPOTENCY).map_err(db_error)?;
        let jobs = txn.open_table(JOBS).map_err(db_error)?;
        let mut keys = txn.open_table(KEYS).map_err(db_error)?;
        for entry in old.iter().map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            let (id, at_ms) = value.value();
            let Some(record) = jobs.get(id).map_err(db_error)? else {
                continue;
            };
            let mut rest = record.value();
            let header = decode_header(&mut rest)?;
            let accepted = (header.apns_ends.len() + header.fcm_ends.len()) as u64;
            keys.insert(
                (header.app.as_str(), key.value()),
                (id, at_ms, accepted, &[][..]),
            )
            .map_err(db_error)?;
            moved += 1;
        }
    }
    txn.delete_table(v1::IDEMPOTENCY).map_err(db_error)?;
    txn.commit().map_err(db_error)?;
    Ok(moved)
}

/// Moves the chunk records of a first-layout store into [`CHUNKS`], in one transaction;
/// returns how many it moved. A done chunk takes its job's end time, or now for a job that
/// has not finished (only the last chunk's time matters, and that one comes later).
fn migrate_v1(db: &Database) -> Result<usize, StoreError> {
    use redb::TableHandle;

    let txn = db.begin_write().map_err(db_error)?;
    let names = [v1::DONE.name(), v1::LEASED.name(), v1::FINISHED.name()];
    let present = txn
        .list_tables()
        .map_err(db_error)?
        .any(|table| names.contains(&table.name()));
    if !present {
        return Ok(0);
    }
    let mut moved = 0;
    {
        let done = txn.open_table(v1::DONE).map_err(db_error)?;
        let leased = txn.open_table(v1::LEASED).map_err(db_error)?;
        let finished = txn.open_table(v1::FINISHED).map_err(db_error)?;
        let mut chunks = txn.open_table(CHUNKS).map_err(db_error)?;
        let now = now_ms();
        for entry in leased.iter().map_err(db_error)? {
            let (key, epoch) = entry.map_err(db_error)?;
            chunks
                .insert(key.value(), leased_value(epoch.value()).as_slice())
                .map_err(db_error)?;
            moved += 1;
        }
        for entry in done.iter().map_err(db_error)? {
            let (key, report) = entry.map_err(db_error)?;
            let (job, _) = key.value();
            let at_ms = finished
                .get(job)
                .map_err(db_error)?
                .map_or(now, |v| v.value());
            chunks
                .insert(key.value(), done_value(at_ms, report.value()).as_slice())
                .map_err(db_error)?;
            moved += 1;
        }
    }
    txn.delete_table(v1::DONE).map_err(db_error)?;
    txn.delete_table(v1::LEASED).map_err(db_error)?;
    txn.delete_table(v1::FINISHED).map_err(db_error)?;
    txn.commit().map_err(db_error)?;
    Ok(moved)
}

/// A job read back from the store: the submission as accepted and how it was split.
#[derive(Debug)]
pub(crate) struct JobRecord {
    pub(crate) submit: SubmitJob,
    pub(crate) chunk_size: u32,
    pub(crate) created_ms: u64,
}

/// What the `JOBS` table holds of a job: everything but the token buffers. Written after
/// [`HEADER_MAGIC`] and [`HEADER_VERSION`]; a value without them is [`legacy::RecordHeader`],
/// one of version 2 is [`v2::RecordHeader`] (no Web Push).
#[derive(Debug, Serialize, Deserialize)]
struct RecordHeader {
    app: String,
    apns: Option<volley_contracts::ApnsRender>,
    fcm: Option<volley_contracts::FcmRender>,
    idempotency_key: Option<String>,
    apns_ends: Vec<u32>,
    fcm_ends: Vec<u32>,
    chunk_size: u32,
    created_ms: u64,
    rejected: volley_contracts::Rejected,
    webpush: Option<volley_contracts::WebPushRender>,
    webpush_ends: Vec<u32>,
}

/// Starts a job record of the second layout on: the first layout starts with the app name's
/// length as a u64, which is never `u64::MAX`.
const HEADER_MAGIC: [u8; 8] = [0xFF; 8];
/// The layout of [`RecordHeader`] after the magic.
const HEADER_VERSION: u8 = 3;

/// Reads a job record's header, of either layout, leaving `rest` at the inline tokens.
fn decode_header(rest: &mut &[u8]) -> Result<RecordHeader, StoreError> {
    let bytes: &[u8] = rest;
    match bytes.strip_prefix(&HEADER_MAGIC[..]) {
        Some([HEADER_VERSION, tail @ ..]) => {
            *rest = tail;
            bincode::deserialize_from(rest).map_err(db_error)
        }
        Some([2, tail @ ..]) => {
            *rest = tail;
            let old: v2::RecordHeader = bincode::deserialize_from(rest).map_err(db_error)?;
            Ok(old.into())
        }
        Some(_) => Err(StoreError::Db(
            "a job record of a newer layout than this controller knows".into(),
        )),
        None => {
            let old: legacy::RecordHeader = bincode::deserialize_from(rest).map_err(db_error)?;
            Ok(old.into())
        }
    }
}

/// The second job-record layout: no Web Push.
mod v2 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct RecordHeader {
        app: String,
        apns: Option<volley_contracts::ApnsRender>,
        fcm: Option<volley_contracts::FcmRender>,
        idempotency_key: Option<String>,
        apns_ends: Vec<u32>,
        fcm_ends: Vec<u32>,
        chunk_size: u32,
        created_ms: u64,
        rejected: volley_contracts::Rejected,
    }

    impl From<RecordHeader> for super::RecordHeader {
        fn from(old: RecordHeader) -> Self {
            super::RecordHeader {
                app: old.app,
                apns: old.apns,
                fcm: old.fcm,
                idempotency_key: old.idempotency_key,
                apns_ends: old.apns_ends,
                fcm_ends: old.fcm_ends,
                chunk_size: old.chunk_size,
                created_ms: old.created_ms,
                rejected: old.rejected,
                webpush: None,
                webpush_ends: Vec::new(),
            }
        }
    }
}

/// The first job-record layout: no caller topic or apns-id, no rejected tokens.
mod legacy {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct ApnsRender {
        payload: bytes::Bytes,
        push_type: String,
        priority: u8,
        expiration: Option<u64>,
        collapse_id: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct RecordHeader {
        app: String,
        apns: Option<ApnsRender>,
        fcm: Option<volley_contracts::FcmRender>,
        idempotency_key: Option<String>,
        apns_ends: Vec<u32>,
        fcm_ends: Vec<u32>,
        chunk_size: u32,
        created_ms: u64,
    }

    impl From<RecordHeader> for super::RecordHeader {
        fn from(old: RecordHeader) -> Self {
            super::RecordHeader {
                app: old.app,
                apns: old.apns.map(|apns| volley_contracts::ApnsRender {
                    payload: apns.payload,
                    push_type: apns.push_type,
                    priority: apns.priority,
                    expiration: apns.expiration,
                    collapse_id: apns.collapse_id,
                    topic: None,
                    apns_id: None,
                }),
                fcm: old.fcm,
                idempotency_key: old.idempotency_key,
                apns_ends: old.apns_ends,
                fcm_ends: old.fcm_ends,
                chunk_size: old.chunk_size,
                created_ms: old.created_ms,
                rejected: Default::default(),
                webpush: None,
                webpush_ends: Vec::new(),
            }
        }
    }
}

/// A job ready for the store: its header serialised, its token buffers shared, not copied.
#[derive(Debug)]
pub(crate) struct NewJob {
    pub(crate) header: Vec<u8>,
    /// APNs, FCM, then Web Push; empty when inline in `header`.
    pub(crate) tokens: [bytes::Bytes; 3],
}

impl NewJob {
    /// Prepares `submit` for the store.
    pub(crate) fn new(
        submit: &SubmitJob,
        chunk_size: u32,
        created_ms: u64,
    ) -> Result<NewJob, String> {
        // Borrows everything: the same bincode layout as `RecordHeader`, which reads it back.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            app: &'a str,
            apns: &'a Option<volley_contracts::ApnsRender>,
            fcm: &'a Option<volley_contracts::FcmRender>,
            idempotency_key: Option<&'a str>,
            apns_ends: &'a [u32],
            fcm_ends: &'a [u32],
            chunk_size: u32,
            created_ms: u64,
            rejected: &'a volley_contracts::Rejected,
            webpush: &'a Option<volley_contracts::WebPushRender>,
            webpush_ends: &'a [u32],
        }
        let (apns_data, apns_ends) = submit.apns_tokens.raw_parts();
        let (fcm_data, fcm_ends) = submit.fcm_tokens.raw_parts();
        let (webpush_data, webpush_ends) = submit.webpush_tokens.raw_parts();
        let mut header = HEADER_MAGIC.to_vec();
        header.push(HEADER_VERSION);
        bincode::serialize_into(
            &mut header,
            &Borrowed {
                app: &submit.app,
                apns: &submit.apns,
                fcm: &submit.fcm,
                idempotency_key: submit.idempotency_key.as_ref().map(|key| key.key.as_str()),
                apns_ends,
                fcm_ends,
                chunk_size,
                created_ms,
                rejected: &submit.rejected,
                webpush: &submit.webpush,
                webpush_ends,
            },
        )
        .map_err(|error| error.to_string())?;
        if apns_data.len() + fcm_data.len() + webpush_data.len() <= INLINE_TOKENS {
            let mut header = header;
            header.extend_from_slice(apns_data);
            header.extend_from_slice(fcm_data);
            header.extend_from_slice(webpush_data);
            return Ok(NewJob {
                header,
                tokens: Default::default(),
            });
        }
        Ok(NewJob {
            header,
            tokens: [apns_data.clone(), fcm_data.clone(), webpush_data.clone()],
        })
    }
}

/// A job as found in the store at start-up.
#[derive(Debug)]
pub(crate) struct StoredJob {
    pub(crate) id: JobId,
    pub(crate) record: JobRecord,
    pub(crate) done: Vec<(u32, ChunkReport)>,
    pub(crate) leased: HashMap<u32, u32>,
    /// When its last chunk was done: the job's end, if every chunk is.
    pub(crate) last_done_ms: Option<u64>,
    pub(crate) cancelled: CancelMark,
    pub(crate) possible_duplicates: u64,
}

/// Whether a job read back was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelMark {
    /// It was not.
    None,
    /// It was, before it finished.
    Cancelled,
    /// The first layout marked it cancelled, also when the cancel came after the job had
    /// finished (it then changed nothing): a finished job with nothing counted cancelled is
    /// read as done, as it was shown then.
    Legacy,
}

/// An idempotency key as the store keeps it: which job it named, for which request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub(crate) job: JobId,
    /// When the key was first used (the job accepted), ms since the epoch.
    pub(crate) at_ms: u64,
    /// Notifications the job accepted: a repeat is answered without the job at hand.
    pub(crate) accepted: u64,
    /// The first request's fingerprint; `None` for keys of the first layout.
    pub(crate) fingerprint: Option<Fingerprint>,
}

/// An app's idempotency key and its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredKey {
    pub(crate) app: String,
    pub(crate) key: String,
    pub(crate) record: KeyRecord,
}

/// One durable change.
#[derive(Debug)]
pub(crate) enum Write {
    /// A new job, and its app's idempotency key.
    Job {
        id: JobId,
        job: NewJob,
        key: Option<StoredKey>,
    },
    /// A chunk went out to an agent with this epoch.
    Leased { id: JobId, index: u32, epoch: u32 },
    /// A chunk is done (at `at_ms`), with its report (bincode) and the webhook entries of its
    /// invalid tokens (in the same transaction, so that no invalid token is reported without
    /// its entry). The job's last chunk's time is the job's end.
    Done {
        id: JobId,
        index: u32,
        at_ms: u64,
        report: Vec<u8>,
        webhook: Vec<(EntryKey, Vec<u8>)>,
    },
    /// The webhook receiver acknowledged these entries.
    WebhookAcked { keys: Vec<EntryKey> },
    /// The job was cancelled (at `at_ms`) before it finished.
    Cancelled { id: JobId, at_ms: u64 },
    /// Some of the job's notifications may have been sent twice.
    Duplicates { id: JobId, count: u64 },
    /// Commits every write queued before it, then closes the database: resolves once the
    /// file is closed (and its lock released). Later writes fail with `Stopped`.
    Close,
    /// Several writes in one transaction: a batch of submissions, or the leases of the
    /// chunks of one `deliver` call.
    Many(Vec<Write>),
    /// Jobs past their retention: forget them, and the (app, key) pairs that named them.
    Forget {
        ids: Vec<JobId>,
        keys: Vec<(String, String)>,
    },
    /// An agent declared it can send this app's notifications on this platform.
    Declared { app: String, platform: Platform },
}

impl Write {
    /// `writes` as one write: itself when there is one, else [`Write::Many`].
    pub(crate) fn all(mut writes: Vec<Write>) -> Write {
        match writes.len() {
            1 => writes.remove(0),
            _ => Write::Many(writes),
        }
    }
}

pub(crate) struct Request {
    pub(crate) write: Write,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// A handle on the writer thread.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    tx: mpsc::Sender<RequestBox>,
}

/// `mpsc::Sender` needs `Debug` on its item for the derive above.
pub(crate) struct RequestBox(Request);

impl std::fmt::Debug for RequestBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl Store {
    /// Starts the writer thread over `backend`.
    pub(crate) fn spawn(
        backend: impl Backend + Send + 'static,
        metrics: StoreMetrics,
    ) -> Result<Store, StoreError> {
        let (tx, rx) = mpsc::channel::<RequestBox>();
        std::thread::Builder::new()
            .name("volley-store".into())
            .spawn(move || run_writer(rx, backend, metrics))
            .map_err(db_error)?;
        Ok(Store { tx })
    }

    /// Applies `write` durably; resolves after its commit.
    pub(crate) async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(RequestBox(Request {
                write,
                done: Some(done),
            }))
            .map_err(|_| StoreError::Stopped)?;
        wait.await
            .map_err(|_| StoreError::Stopped)?
            .map_err(StoreError::Db)
    }

    /// Queues `write` without waiting for its commit (chunk progress: losing it in a crash
    /// only means resending the chunk, which is counted as a possible duplicate). It is
    /// committed with the next write someone waits for, or within [`LATER_WITHIN`].
    pub(crate) fn write_later(&self, write: Write) {
        let _ = self.tx.send(RequestBox(Request { write, done: None }));
    }
}

fn init_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_error)?;
    txn.open_table(JOBS).map_err(db_error)?;
    txn.open_table(TOKENS).map_err(db_error)?;
    txn.open_table(CHUNKS).map_err(db_error)?;
    txn.open_table(CANCELS).map_err(db_error)?;
    txn.open_table(v1::CANCELLED).map_err(db_error)?;
    txn.open_table(DUPLICATES).map_err(db_error)?;
    txn.open_table(KEYS).map_err(db_error)?;
    txn.open_table(WEBHOOK).map_err(db_error)?;
    txn.open_table(DECLARED).map_err(db_error)?;
    txn.commit().map_err(db_error)
}

fn load(db: &Database) -> Result<Vec<StoredJob>, StoreError> {
    let txn = db.begin_read().map_err(db_error)?;
    let jobs = txn.open_table(JOBS).map_err(db_error)?;
    let tokens = txn.open_table(TOKENS).map_err(db_error)?;
    let chunks = txn.open_table(CHUNKS).map_err(db_error)?;
    let cancels = txn.open_table(CANCELS).map_err(db_error)?;
    let legacy_cancels = txn.open_table(v1::CANCELLED).map_err(db_error)?;
    let duplicates = txn.open_table(DUPLICATES).map_err(db_error)?;
    let mut out = Vec::new();
    for entry in jobs.iter().map_err(db_error)? {
        let (key, value) = entry.map_err(db_error)?;
        let id = key.value();
        let cancelled = if cancels.get(id).map_err(db_error)?.is_some() {
            CancelMark::Cancelled
        } else if legacy_cancels.get(id).map_err(db_error)?.is_some() {
            CancelMark::Legacy
        } else {
            CancelMark::None
        };
        let possible_duplicates = duplicates
            .get(id)
            .map_err(db_error)?
            .map_or(0, |v| v.value());
        let mut states = Vec::new();
        for entry in chunks.range((id, 0)..=(id, u32::MAX)).map_err(db_error)? {
            let (key, value) = entry.map_err(db_error)?;
            states.push((key.value().1, ChunkState::decode(value.value())?));
        }
        out.push(stored_job(
            id,
            value.value(),
            |platform| {
                Ok(tokens
                    .get((id, platform))
                    .map_err(db_error)?
                    .map(|data| bytes::Bytes::copy_from_slice(data.value())))
            },
            states,
            cancelled,
            possible_duplicates,
        )?);
    }
    Ok(out)
}

/// A job as read back from either store: its `JOBS` value (the header, and a small job's
/// token buffers after it), its token buffers kept apart (`tokens(platform)`: 0 APNs, 1 FCM,
/// 2 Web Push),
/// and its chunks' states.
pub(crate) fn stored_job(
    id: u128,
    value: &[u8],
    mut tokens: impl FnMut(u8) -> Result<Option<bytes::Bytes>, StoreError>,
    chunks: Vec<(u32, ChunkState)>,
    cancelled: CancelMark,
    possible_duplicates: u64,
) -> Result<StoredJob, StoreError> {
    let mut rest = value;
    let header = decode_header(&mut rest)?;
    // Whatever follows the header is a small job's token buffers, APNs, FCM, then Web Push.
    let length = |ends: &[u32]| ends.last().copied().unwrap_or(0) as usize;
    let (apns_inline, after) = rest.split_at(length(&header.apns_ends).min(rest.len()));
    let (fcm_inline, webpush_inline) = after.split_at(length(&header.fcm_ends).min(after.len()));
    let mut token_list = |platform: u8, ends: Vec<u32>| -> Result<TokenList, StoreError> {
        let inline = match platform {
            0 => apns_inline,
            1 => fcm_inline,
            _ => webpush_inline,
        };
        let data = if !rest.is_empty() {
            bytes::Bytes::copy_from_slice(inline)
        } else {
            tokens(platform)?.unwrap_or_default()
        };
        TokenList::from_raw_parts(data, ends).ok_or_else(|| {
            StoreError::Db(format!(
                "job {id:x}: token buffer does not match its offsets"
            ))
        })
    };
    let record = JobRecord {
        submit: SubmitJob {
            apns_tokens: token_list(0, header.apns_ends)?,
            fcm_tokens: token_list(1, header.fcm_ends)?,
            webpush_tokens: token_list(2, header.webpush_ends)?,
            webpush: header.webpush,
            app: header.app,
            apns: header.apns,
            fcm: header.fcm,
            // The fingerprint lives with the key (`KEYS`); the job needs the key alone.
            idempotency_key: header
                .idempotency_key
                .map(|key| volley_contracts::IdempotencyKey {
                    key,
                    fingerprint: None,
                }),
            rejected: header.rejected,
        },
        chunk_size: header.chunk_size,
        created_ms: header.created_ms,
    };
    let mut job = StoredJob {
        id: JobId(uuid::Uuid::from_u128(id)),
        record,
        done: Vec::new(),
        leased: HashMap::new(),
        last_done_ms: None,
        cancelled,
        possible_duplicates,
    };
    for (index, state) in chunks {
        match state {
            ChunkState::Leased { epoch } => {
                job.leased.insert(index, epoch);
            }
            ChunkState::Done { at_ms, report } => {
                job.done.push((index, report));
                job.last_done_ms = job.last_done_ms.max(Some(at_ms));
            }
        }
    }
    Ok(job)
}

/// Least time between two compactions of the store.
const COMPACT_EVERY: Duration = Duration::from_secs(600);

/// Longest a write nobody waits for (chunk progress) stays uncommitted. Such writes ride on
/// the next commit that someone waits for (a submission, a lease); only when none comes
/// within this time do they get a commit, and an fsync, of their own.
const LATER_WITHIN: Duration = Duration::from_millis(100);

/// How long a writer waits before trying again writes whose commit failed (nobody waits for
/// them: chunk progress; the database is back soon, or the controller steps down).
const RETRY_FAILED: Duration = Duration::from_millis(200);

/// How the writer's commits go, whichever the store: observed on the writer thread with
/// atomics only, exposed on the controller's ops port.
#[derive(Debug, Clone)]
pub(crate) struct StoreMetrics {
    /// How long each commit took (its transaction and, with `fsync`, its sync).
    pub(crate) commit: volley_ops::AtomicHistogram,
    /// Writes per commit (group commit: everything queued meanwhile shares one).
    pub(crate) writes: volley_ops::AtomicHistogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commit: volley_ops::AtomicHistogram::latency(),
            writes: volley_ops::AtomicHistogram::sizes(),
        }
    }
}

/// What a store's writer thread commits to: redb here, PostgreSQL in `postgres.rs`.
pub(crate) trait Backend {
    /// Applies `batch` in one transaction and commits it; returns how many jobs it forgot.
    fn commit(&mut self, batch: &[Request]) -> Result<usize, StoreError>;

    /// Between commits, with how many jobs the last one forgot: housekeeping.
    fn tidy(&mut self, _forgot: usize) {}
}

/// The writer thread: takes every write waiting in `rx` and commits them together (group
/// commit), until the handles are gone, a [`Write::Close`] comes, or the backend is fenced.
pub(crate) fn run_writer(
    rx: mpsc::Receiver<RequestBox>,
    mut backend: impl Backend,
    metrics: StoreMetrics,
) {
    // Writes queued since the last commit, when the first came, and whether someone waits
    // for one of them (then they are committed at once).
    let mut later: Vec<Request> = Vec::new();
    let mut later_since = Instant::now();
    let mut waited_for = false;
    loop {
        let first = if later.is_empty() {
            rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(LATER_WITHIN.saturating_sub(later_since.elapsed()))
        };
        let closed = match first {
            Ok(first) => {
                if later.is_empty() {
                    later_since = Instant::now();
                }
                waited_for |= first.0.done.is_some();
                later.push(first.0);
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        // Group commit: everything queued meanwhile shares this transaction and its fsync.
        while let Ok(next) = rx.try_recv() {
            waited_for |= next.0.done.is_some();
            later.push(next.0);
            if later.len() >= 4096 {
                break;
            }
        }
        if !waited_for && !closed && later.len() < 4096 && later_since.elapsed() < LATER_WITHIN {
            continue;
        }
        waited_for = false;
        let mut batch = std::mem::take(&mut later);
        let close = batch
            .iter()
            .position(|request| matches!(request.write, Write::Close));
        // Whatever was queued after a close is refused, as if it came after it; the close
        // itself is answered once the database is closed.
        let (refused, closing) = match close {
            Some(at) => {
                let refused = batch.split_off(at + 1);
                (refused, batch.pop().and_then(|request| request.done))
            }
            None => (Vec::new(), None),
        };
        let mut result = Ok(());
        let mut fenced = false;
        if !batch.is_empty() {
            let started = Instant::now();
            let outcome = backend.commit(&batch);
            metrics.commit.observe(started.elapsed());
            metrics.writes.observe_units(batch.len() as u64);
            let forgot = *outcome.as_ref().unwrap_or(&0);
            fenced = matches!(outcome, Err(StoreError::Fenced(_)));
            result = outcome.map(|_| ()).map_err(|error| error.to_string());
            if let Err(error) = &result {
                tracing::error!(%error, writes = batch.len(), "store commit failed");
            }
            let mut kept = Vec::new();
            for request in batch {
                match request.done {
                    Some(done) => {
                        let _ = done.send(result.clone());
                    }
                    // Nobody waits for it: tried again with the next commit, unless this
                    // controller may write no more.
                    None if result.is_err() && !fenced && close.is_none() => kept.push(request),
                    None => {}
                }
            }
            if !kept.is_empty() {
                later = kept;
                later_since = Instant::now();
                std::thread::sleep(RETRY_FAILED);
            }
            backend.tidy(forgot);
        }
        if close.is_some() || fenced {
            drop(backend);
            if let Some(done) = closing {
                let _ = done.send(result);
            }
            let refused = refused.into_iter().chain(later);
            for done in refused.filter_map(|request| request.done) {
                let _ = done.send(Err(StoreError::Stopped.to_string()));
            }
            if fenced {
                // Whatever comes from now on is refused: the handles see a closed channel.
                drop(rx);
            }
            return;
        }
        if closed {
            return;
        }
    }
}

/// The embedded store: redb in `controller.data_dir`.
struct Redb {
    db: Database,
    durability: Durability,
    forgotten_since_compaction: usize,
    last_compaction: Instant,
}

impl Backend for Redb {
    fn commit(&mut self, batch: &[Request]) -> Result<usize, StoreError> {
        let mut forgot = 0;
        apply(&self.db, batch, &mut forgot, self.durability)?;
        Ok(forgot)
    }

    fn tidy(&mut self, forgot: usize) {
        self.forgotten_since_compaction += forgot;
        // Deleting frees pages for reuse; compacting now and then gives space back to the
        // disk. Not more often than every COMPACT_EVERY: it holds up every commit while it
        // runs, and jobs forgotten at the rate single-notification jobs finish would compact
        // non-stop.
        if self.forgotten_since_compaction >= 64 && self.last_compaction.elapsed() >= COMPACT_EVERY
        {
            self.forgotten_since_compaction = 0;
            self.last_compaction = Instant::now();
            if let Err(error) = self.db.compact() {
                tracing::warn!(%error, "store compaction failed");
            }
        }
    }
}

fn apply(
    db: &Database,
    batch: &[Request],
    forgot: &mut usize,
    durability: Durability,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(durability);
    {
        let mut tables = Tables {
            jobs: txn.open_table(JOBS).map_err(db_error)?,
            tokens: txn.open_table(TOKENS).map_err(db_error)?,
            chunks: txn.open_table(CHUNKS).map_err(db_error)?,
            cancels: txn.open_table(CANCELS).map_err(db_error)?,
            legacy_cancels: txn.open_table(v1::CANCELLED).map_err(db_error)?,
            duplicates: txn.open_table(DUPLICATES).map_err(db_error)?,
            keys: txn.open_table(KEYS).map_err(db_error)?,
            webhook: txn.open_table(WEBHOOK).map_err(db_error)?,
            declared: txn.open_table(DECLARED).map_err(db_error)?,
        };
        for request in batch {
            tables.apply(&request.write, forgot)?;
        }
    }
    txn.commit().map_err(db_error)
}

/// Every table, open in one write transaction.
struct Tables<'txn> {
    jobs: redb::Table<'txn, u128, &'static [u8]>,
    tokens: redb::Table<'txn, (u128, u8), &'static [u8]>,
    chunks: redb::Table<'txn, (u128, u32), &'static [u8]>,
    cancels: redb::Table<'txn, u128, u64>,
    legacy_cancels: redb::Table<'txn, u128, ()>,
    duplicates: redb::Table<'txn, u128, u64>,
    keys: redb::Table<'txn, (&'static str, &'static str), KeyValue>,
    webhook: redb::Table<'txn, (u128, u32, u32), &'static [u8]>,
    declared: redb::Table<'txn, (&'static str, u8), u64>,
}

impl Tables<'_> {
    fn apply(&mut self, write: &Write, forgot: &mut usize) -> Result<(), StoreError> {
        match write {
            Write::Job { id, job, key } => {
                let id128 = id.0.as_u128();
                self.jobs
                    .insert(id128, job.header.as_slice())
                    .map_err(db_error)?;
                for (platform, data) in (0u8..).zip(&job.tokens) {
                    if !data.is_empty() {
                        self.tokens
                            .insert((id128, platform), data.as_ref())
                            .map_err(db_error)?;
                    }
                }
                if let Some(StoredKey { app, key, record }) = key {
                    let fingerprint = record.fingerprint.as_ref().map_or(&[][..], |f| &f.0[..]);
                    self.keys
                        .insert(
                            (app.as_str(), key.as_str()),
                            (id128, record.at_ms, record.accepted, fingerprint),
                        )
                        .map_err(db_error)?;
                }
            }
            Write::Leased { id, index, epoch } => {
                self.chunks
                    .insert((id.0.as_u128(), *index), leased_value(*epoch).as_slice())
                    .map_err(db_error)?;
            }
            Write::Done {
                id,
                index,
                at_ms,
                report,
                webhook,
            } => {
                let key = (id.0.as_u128(), *index);
                self.chunks
                    .insert(key, done_value(*at_ms, report).as_slice())
                    .map_err(db_error)?;
                for (key, entry) in webhook {
                    self.webhook
                        .insert(*key, entry.as_slice())
                        .map_err(db_error)?;
                }
            }
            Write::WebhookAcked { keys } => {
                for key in keys {
                    self.webhook.remove(*key).map_err(db_error)?;
                }
            }
            Write::Cancelled { id, at_ms } => {
                self.cancels
                    .insert(id.0.as_u128(), *at_ms)
                    .map_err(db_error)?;
            }
            Write::Duplicates { id, count } => {
                let id = id.0.as_u128();
                let before = self
                    .duplicates
                    .get(id)
                    .map_err(db_error)?
                    .map_or(0, |v| v.value());
                self.duplicates
                    .insert(id, before + count)
                    .map_err(db_error)?;
            }
            Write::Close => {}
            Write::Many(writes) => {
                for write in writes {
                    self.apply(write, forgot)?;
                }
            }
            Write::Forget { ids, keys } => {
                for id in ids {
                    let id = id.0.as_u128();
                    self.jobs.remove(id).map_err(db_error)?;
                    for platform in 0..Platform::ALL.len() as u8 {
                        self.tokens.remove((id, platform)).map_err(db_error)?;
                    }
                    self.cancels.remove(id).map_err(db_error)?;
                    self.legacy_cancels.remove(id).map_err(db_error)?;
                    self.duplicates.remove(id).map_err(db_error)?;
                    self.chunks
                        .retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                        .map_err(db_error)?;
                    *forgot += 1;
                }
                for (app, key) in keys {
                    self.keys
                        .remove((app.as_str(), key.as_str()))
                        .map_err(db_error)?;
                }
            }
            Write::Declared { app, platform } => {
                let key = (app.as_str(), platform.index() as u8);
                if self.declared.get(key).map_err(db_error)?.is_none() {
                    self.declared.insert(key, now_ms()).map_err(db_error)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads the idempotency keys of an open database (used once at start-up, before the
/// writer thread takes the database).
fn read_keys(db: &Database) -> Result<Vec<StoredKey>, StoreError> {
    let txn = db.begin_read().map_err(db_error)?;
    let table = txn.open_table(KEYS).map_err(db_error)?;
    let mut keys = Vec::new();
    for entry in table.iter().map_err(db_error)? {
        let (key, value) = entry.map_err(db_error)?;
        let (app, key) = key.value();
        let (id, at_ms, accepted, fingerprint) = value.value();
        keys.push(StoredKey {
            app: app.to_owned(),
            key: key.to_owned(),
            record: KeyRecord {
                job: JobId(uuid::Uuid::from_u128(id)),
                at_ms,
                accepted,
                fingerprint: <[u8; 32]>::try_from(fingerprint).ok().map(Fingerprint),
            },
        });
    }
    Ok(keys)
}

/// Reads the webhook outbox (start-up only).
fn read_webhook(db: &Database) -> Result<Vec<(EntryKey, StoredEntry)>, StoreError> {
    let txn = db.begin_read().map_err(db_error)?;
    let table = txn.open_table(WEBHOOK).map_err(db_error)?;
    let mut entries = Vec::new();
    for entry in table.iter().map_err(db_error)? {
        let (key, value) = entry.map_err(db_error)?;
        let stored: StoredEntry = bincode::deserialize(value.value()).map_err(db_error)?;
        entries.push((key.value(), stored));
    }
    Ok(entries)
}

/// Reads the (app, platform) pairs agents have declared (start-up only).
fn read_declared(db: &Database) -> Result<Vec<(String, Platform)>, StoreError> {
    let txn = db.begin_read().map_err(db_error)?;
    let table = txn.open_table(DECLARED).map_err(db_error)?;
    let mut declared = Vec::new();
    for entry in table.iter().map_err(db_error)? {
        let (key, _) = entry.map_err(db_error)?;
        let (app, platform) = key.value();
        if let Some(platform) = Platform::ALL.get(platform as usize) {
            declared.push((app.to_owned(), *platform));
        }
    }
    Ok(declared)
}

/// Everything read back at start-up.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// The (app, platform) pairs some agent has declared.
    pub(crate) declared: Vec<(String, Platform)>,
    pub(crate) jobs: Vec<StoredJob>,
    /// Idempotency keys, by app.
    pub(crate) keys: Vec<StoredKey>,
    /// Webhook entries not acknowledged yet, in key order.
    pub(crate) webhook: Vec<(EntryKey, StoredEntry)>,
}

impl Store {
    /// Opens the store and reads back jobs and idempotency keys. Without `fsync`, commits are
    /// not flushed to disk (a crash of the machine, not only of the process, may lose the
    /// latest jobs): only for measuring what durability costs.
    pub(crate) fn open(
        dir: &Path,
        fsync: bool,
        metrics: StoreMetrics,
    ) -> Result<(Store, Recovered), StoreError> {
        let durability = if fsync {
            Durability::Immediate
        } else {
            Durability::None
        };
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Db(format!(
                "cannot create controller.data_dir {}: {error}",
                dir.display()
            ))
        })?;
        let path = dir.join("volley.redb");
        // redb caches up to 1 GiB of pages by default; the controller reads the store only at
        // start-up, so a small cache keeps a large job's pages from staying in memory.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|error| match error {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    StoreError::Locked(dir.display().to_string())
                }
                other => StoreError::Db(format!("cannot open {}: {other}", path.display())),
            })?;
        init_tables(&db)?;
        let migrated = migrate_v1(&db)?;
        if migrated > 0 {
            tracing::info!(
                chunks = migrated,
                "store: chunk records moved to the current layout"
            );
        }
        let migrated = migrate_keys_v1(&db)?;
        if migrated > 0 {
            tracing::info!(
                keys = migrated,
                "store: idempotency keys scoped to their jobs' apps"
            );
        }
        let recovered = Recovered {
            jobs: load(&db)?,
            keys: read_keys(&db)?,
            webhook: read_webhook(&db)?,
            declared: read_declared(&db)?,
        };
        let backend = Redb {
            db,
            durability,
            forgotten_since_compaction: 0,
            // The first compaction waits as long as the others: none during a start-up burst.
            last_compaction: Instant::now(),
        };
        Ok((Store::spawn(backend, metrics)?, recovered))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use volley_contracts::{ApnsRender, TokenList};

    /// A record written by the previous layout (before caller topics and rejected tokens)
    /// still reads back, with its inline tokens after it.
    #[test]
    fn first_layout_job_records_still_read() {
        #[derive(Serialize)]
        struct OldApns<'a> {
            payload: &'a [u8],
            push_type: &'a str,
            priority: u8,
            expiration: Option<u64>,
            collapse_id: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Old<'a> {
            app: &'a str,
            apns: Option<OldApns<'a>>,
            fcm: Option<volley_contracts::FcmRender>,
            idempotency_key: Option<&'a str>,
            apns_ends: Vec<u32>,
            fcm_ends: Vec<u32>,
            chunk_size: u32,
            created_ms: u64,
        }
        let mut value = bincode::serialize(&Old {
            app: "shop",
            apns: Some(OldApns {
                payload: b"{\"aps\":{}}",
                push_type: "alert",
                priority: 10,
                expiration: Some(5),
                collapse_id: None,
            }),
            fcm: None,
            idempotency_key: Some("k"),
            apns_ends: vec![2],
            fcm_ends: Vec::new(),
            chunk_size: 500,
            created_ms: 9,
        })
        .unwrap();
        value.extend_from_slice(b"aa");
        let mut rest = &value[..];
        let header = decode_header(&mut rest).unwrap();
        assert_eq!(rest, b"aa");
        assert_eq!(header.app, "shop");
        let apns = header.apns.unwrap();
        assert_eq!(
            (apns.priority, apns.expiration, apns.topic),
            (10, Some(5), None)
        );
        assert_eq!(header.rejected, Default::default());

        let new = NewJob::new(&record_submit(), 2, 7).unwrap();
        let mut rest = &new.header[..];
        let header = decode_header(&mut rest).unwrap();
        assert_eq!(header.rejected, record_submit().rejected);
        assert_eq!(
            header.apns.unwrap().topic.as_deref(),
            Some("com.example.shop.voip")
        );
    }

    #[test]
    fn second_layout_job_records_read_back_without_web_push() {
        // Layout 2 is layout 3 without its last two fields.
        let submit = record_submit();
        let (_, apns_ends) = submit.apns_tokens.raw_parts();
        let mut value = HEADER_MAGIC.to_vec();
        value.push(2);
        bincode::serialize_into(
            &mut value,
            &(
                &submit.app,
                &submit.apns,
                &submit.fcm,
                Some("k"),
                apns_ends,
                Vec::<u32>::new(),
                500u32,
                9u64,
                &submit.rejected,
            ),
        )
        .unwrap();
        let mut rest = &value[..];
        let header = decode_header(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(header.apns, submit.apns);
        assert_eq!(header.rejected, submit.rejected);
        assert_eq!((header.chunk_size, header.created_ms), (500, 9));
        assert_eq!(header.webpush, None);
        assert!(header.webpush_ends.is_empty());
    }

    fn record() -> NewJob {
        NewJob::new(&record_submit(), 2, 7).unwrap()
    }

    fn stored_key(id: JobId) -> StoredKey {
        StoredKey {
            app: "shop".into(),
            key: "key-1".into(),
            record: KeyRecord {
                job: id,
                at_ms: 7,
                accepted: 3,
                fingerprint: Some(Fingerprint([7; 32])),
            },
        }
    }

    /// A store of the first layout (keys not scoped to an app, without fingerprints; cancel
    /// marks also on jobs cancelled after they finished) opens: its keys name the same jobs,
    /// now under their apps, and its marks read as they were shown.
    #[tokio::test]
    async fn first_layout_keys_and_cancel_marks_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (keyed, gone, late_cancel) = (JobId::new(), JobId::new(), JobId::new());
        {
            let (store, _) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
            for id in [keyed, late_cancel] {
                store
                    .write(Write::Job {
                        id,
                        job: record(),
                        key: None,
                    })
                    .await
                    .unwrap();
            }
            store.write(Write::Close).await.unwrap();
        }
        {
            let db = Database::open(dir.path().join("volley.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut keys = txn.open_table(v1::IDEMPOTENCY).unwrap();
                keys.insert("order-42", (keyed.0.as_u128(), 11)).unwrap();
                // A key whose job is gone names nothing.
                keys.insert("order-0", (gone.0.as_u128(), 12)).unwrap();
                let mut cancelled = txn.open_table(v1::CANCELLED).unwrap();
                cancelled.insert(keyed.0.as_u128(), ()).unwrap();
                cancelled.insert(late_cancel.0.as_u128(), ()).unwrap();
            }
            txn.commit().unwrap();
        }
        let (store, recovered) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
        assert_eq!(
            recovered.keys,
            [StoredKey {
                app: "shop".into(),
                key: "order-42".into(),
                record: KeyRecord {
                    job: keyed,
                    at_ms: 11,
                    accepted: 3,
                    fingerprint: None,
                },
            }]
        );
        for job in &recovered.jobs {
            assert_eq!(job.cancelled, CancelMark::Legacy, "{}", job.id);
        }
        // Forgetting a job takes its mark of either layout and its key.
        store
            .write(Write::Forget {
                ids: vec![keyed],
                keys: vec![("shop".into(), "order-42".into())],
            })
            .await
            .unwrap();
        store.write(Write::Close).await.unwrap();
        let (store, recovered) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
        assert!(recovered.keys.is_empty());
        assert_eq!(recovered.jobs.len(), 1);
        store.write(Write::Close).await.unwrap();
        // The first layout's key table is gone; a second open has nothing to move.
        let db = Database::open(dir.path().join("volley.redb")).unwrap();
        assert_eq!(migrate_keys_v1(&db).unwrap(), 0);
    }

    pub(crate) fn record_submit() -> SubmitJob {
        SubmitJob {
            app: "shop".into(),
            apns: Some(ApnsRender {
                payload: bytes::Bytes::from_static(b"{\"aps\":{}}"),
                push_type: "alert".into(),
                priority: 10,
                expiration: None,
                collapse_id: None,
                topic: Some("com.example.shop.voip".into()),
                apns_id: None,
            }),
            fcm: None,
            apns_tokens: ["aa", "bb", "cc"].into_iter().collect::<TokenList>(),
            fcm_tokens: TokenList::default(),
            webpush: None,
            webpush_tokens: Default::default(),
            idempotency_key: Some(volley_contracts::IdempotencyKey::new(
                "key-1",
                Fingerprint([7; 32]),
            )),
            rejected: volley_contracts::Rejected {
                count: 1,
                tokens: vec![volley_contracts::RejectedToken {
                    platform: volley_contracts::Platform::Apns,
                    field: "targets.apns[3]".into(),
                    reason: "too short".into(),
                }],
            },
        }
    }

    #[tokio::test]
    async fn jobs_chunks_and_keys_survive_a_reopen_and_the_directory_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let id = JobId::new();
        {
            let (store, recovered) =
                Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
            assert!(recovered.jobs.is_empty());
            store
                .write(Write::Job {
                    id,
                    job: record(),
                    key: Some(stored_key(id)),
                })
                .await
                .unwrap();
            store.write_later(Write::Leased {
                id,
                index: 0,
                epoch: 0,
            });
            store.write_later(Write::Leased {
                id,
                index: 1,
                epoch: 3,
            });
            let report = ChunkReport {
                delivered: 2,
                ..ChunkReport::default()
            };
            let entry = StoredEntry {
                app: "shop".into(),
                tokens: Vec::new(),
            };
            store.write_later(Write::Done {
                id,
                index: 0,
                at_ms: 42,
                report: bincode::serialize(&report).unwrap(),
                webhook: vec![
                    ((id.0.as_u128(), 0, 0), bincode::serialize(&entry).unwrap()),
                    ((id.0.as_u128(), 0, 1), bincode::serialize(&entry).unwrap()),
                ],
            });
            store.write_later(Write::WebhookAcked {
                keys: vec![(id.0.as_u128(), 0, 0)],
            });
            store
                .write(Write::Cancelled { id, at_ms: 8 })
                .await
                .unwrap();
            // While it is open, nobody else may open it.
            assert!(matches!(
                Store::open(dir.path(), true, StoreMetrics::default()),
                Err(StoreError::Locked(_))
            ));
            // Closing commits what is queued and frees the directory before it resolves.
            store.write_later(Write::Duplicates { id, count: 2 });
            store.write(Write::Close).await.unwrap();
            assert!(matches!(
                store.write(Write::Cancelled { id, at_ms: 9 }).await,
                Err(StoreError::Stopped)
            ));
        }
        let reopened = Store::open(dir.path(), true, StoreMetrics::default()).ok();
        let (_, recovered) = reopened.expect("the store reopens");
        assert_eq!(recovered.jobs.len(), 1);
        let job = &recovered.jobs[0];
        assert_eq!(job.id, id);
        assert_eq!(job.record.chunk_size, 2);
        assert_eq!(job.record.submit.apns_tokens.len(), 3);
        assert_eq!(job.done.len(), 1);
        assert_eq!(job.done[0].1.delivered, 2);
        assert_eq!(job.last_done_ms, Some(42));
        // Chunk 0 is done (its lease is cleared); chunk 1 was out with epoch 3.
        assert_eq!(job.leased.get(&1), Some(&3));
        assert!(!job.leased.contains_key(&0));
        assert_eq!(job.cancelled, CancelMark::Cancelled);
        assert_eq!(job.possible_duplicates, 2);
        assert_eq!(recovered.keys, [stored_key(id)]);
        assert_eq!(
            job.record
                .submit
                .idempotency_key
                .as_ref()
                .map(|key| key.key.as_str()),
            Some("key-1")
        );
        // Only the unacknowledged webhook entry is left.
        let keys: Vec<EntryKey> = recovered.webhook.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys, [(id.0.as_u128(), 0, 1)]);
    }

    #[tokio::test]
    async fn a_first_layout_store_is_moved_to_one_chunk_table() {
        let dir = tempfile::tempdir().unwrap();
        let (finished_job, running_job) = (JobId::new(), JobId::new());
        {
            let (store, _) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
            for id in [finished_job, running_job] {
                store
                    .write(Write::Job {
                        id,
                        job: record(),
                        key: None,
                    })
                    .await
                    .unwrap();
            }
            store.write(Write::Close).await.unwrap();
        }
        // Write the chunk records as the first layout kept them.
        let report = |delivered| {
            bincode::serialize(&ChunkReport {
                delivered,
                ..ChunkReport::default()
            })
            .unwrap()
        };
        {
            let db = Database::open(dir.path().join("volley.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut done = txn.open_table(v1::DONE).unwrap();
                let mut leased = txn.open_table(v1::LEASED).unwrap();
                let mut finished = txn.open_table(v1::FINISHED).unwrap();
                let (f, r) = (finished_job.0.as_u128(), running_job.0.as_u128());
                done.insert((f, 0), report(2).as_slice()).unwrap();
                done.insert((f, 1), report(1).as_slice()).unwrap();
                finished.insert(f, 1_700_000_000_000).unwrap();
                done.insert((r, 0), report(2).as_slice()).unwrap();
                leased.insert((r, 1), 4).unwrap();
            }
            txn.commit().unwrap();
        }
        let (store, recovered) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
        let job = |id| recovered.jobs.iter().find(|job| job.id == id).unwrap();
        let finished = job(finished_job);
        assert_eq!(finished.done.len(), 2);
        assert!(finished.leased.is_empty());
        assert_eq!(finished.last_done_ms, Some(1_700_000_000_000));
        let running = job(running_job);
        assert_eq!(running.done.len(), 1);
        assert_eq!(running.done[0].1.delivered, 2);
        assert_eq!(running.leased.get(&1), Some(&4));
        store.write(Write::Close).await.unwrap();
        // The first layout's tables are gone; a second open has nothing to move.
        let db = Database::open(dir.path().join("volley.redb")).unwrap();
        assert_eq!(migrate_v1(&db).unwrap(), 0);
    }

    #[tokio::test]
    async fn small_jobs_keep_their_tokens_in_the_job_record_and_large_ones_apart() {
        let dir = tempfile::tempdir().unwrap();
        let job = |apns: Vec<String>, fcm: Vec<String>, webpush: Vec<String>| SubmitJob {
            apns_tokens: apns.into_iter().collect(),
            fcm_tokens: fcm.into_iter().collect(),
            webpush: Some(volley_contracts::WebPushRender {
                payload: bytes::Bytes::from_static(b"{\"title\":\"hi\"}"),
                ttl: 60,
                urgency: Some("high".into()),
                topic: None,
            }),
            webpush_tokens: webpush.into_iter().collect(),
            ..record_submit()
        };
        let subscription = |i: usize| format!("https://push.example/{i} BKey{i} auth{i}");
        let small = job(
            vec!["ab".repeat(32)],
            vec!["fcm-token".into()],
            vec![subscription(0)],
        );
        let large = job(
            (0..100).map(|i| format!("{i:064x}")).collect(),
            Vec::new(),
            (0..100).map(subscription).collect(),
        );
        let (small_id, large_id) = (JobId::new(), JobId::new());
        {
            let (store, _) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
            for (id, submit) in [(small_id, &small), (large_id, &large)] {
                store
                    .write(Write::Job {
                        id,
                        job: NewJob::new(submit, 10, 1).unwrap(),
                        key: None,
                    })
                    .await
                    .unwrap();
            }
            store.write(Write::Close).await.unwrap();
        }
        {
            let db = Database::open(dir.path().join("volley.redb")).unwrap();
            let txn = db.begin_read().unwrap();
            let tokens = txn.open_table(TOKENS).unwrap();
            let keys: Vec<(u128, u8)> = tokens
                .iter()
                .unwrap()
                .map(|entry| entry.unwrap().0.value())
                .collect();
            assert_eq!(
                keys,
                [(large_id.0.as_u128(), 0), (large_id.0.as_u128(), 2)],
                "only the large job is apart"
            );
        }
        let (_, recovered) = Store::open(dir.path(), true, StoreMetrics::default()).unwrap();
        for (id, submit) in [(small_id, &small), (large_id, &large)] {
            let job = recovered.jobs.iter().find(|job| job.id == id).unwrap();
            let got = &job.record.submit;
            assert!(got.apns_tokens.iter().eq(submit.apns_tokens.iter()), "{id}");
            assert!(got.fcm_tokens.iter().eq(submit.fcm_tokens.iter()), "{id}");
            assert!(
                got.webpush_tokens.iter().eq(submit.webpush_tokens.iter()),
                "{id}"
            );
            assert_eq!(got.webpush, submit.webpush);
            assert_eq!(got.app, submit.app);
        }
    }
}
