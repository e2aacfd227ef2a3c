//! The controller's PostgreSQL store (`controller.store = "postgres"`), and the leadership of
//! several controllers on one database (docs/adr/007).
//!
//! The store is the same boundary as the embedded one: [`Write`]s queued to one writer thread
//! ([`store::run_writer`]), applied in one transaction per batch (group commit), and
//! everything read back once, when a controller becomes the leader ([`Recovered`]). Values
//! keep the embedded store's encodings (a job's header, a chunk's state, a webhook entry), so
//! both stores read back through [`store::stored_job`].
//!
//! **Leadership** is a row, `volley_leader`: a term, the holder, its address and when its
//! lease ends (the database's clock). A standby takes the row once the lease has ended,
//! incrementing the term; the leader renews it. **Fencing**: every write transaction first
//! reads the term (`FOR SHARE`, so a takeover waits for transactions under way) and aborts if
//! it is not the writer's own. A leader that was paused or cut off and wakes after a standby
//! took over can therefore change nothing: its next commit fails, and it steps down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use volley_config::ControllerConfig;
use volley_contracts::{Fingerprint, JobId, Platform};

use crate::store::{
    self, db_error, done_value, leased_value, Backend, CancelMark, ChunkState, KeyRecord,
    Recovered, Request, Store, StoreError, StoreMetrics, StoredEntry, StoredKey, Write,
};

/// The schema, one migration per version, applied in order at start under an advisory lock.
/// A database of a newer version than this list is refused.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
    CREATE TABLE volley_leader (
        id integer PRIMARY KEY CHECK (id = 1),
        term bigint NOT NULL,
        holder text NOT NULL,
        address text NOT NULL,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO volley_leader VALUES (1, 0, '', '', '-infinity');
    -- The fence every write transaction starts with: it fails the transaction (and so turns
    -- its COMMIT into a rollback) unless the writer's term is the leader row's. FOR SHARE: a
    -- takeover, which updates the row, waits for the transactions under way.
    CREATE FUNCTION volley_fence(writer_term bigint) RETURNS void LANGUAGE plpgsql AS $fence$
    BEGIN
        IF (SELECT term FROM volley_leader WHERE id = 1 FOR SHARE) <> writer_term THEN
            RAISE EXCEPTION 'another controller leads: term % is over', writer_term
                USING ERRCODE = 'VL001';
        END IF;
    END
    $fence$;
    -- A job without its token buffers (a small job's tokens follow the header).
    CREATE TABLE volley_jobs (
        id uuid PRIMARY KEY,
        header bytea NOT NULL,
        cancelled_ms bigint,
        duplicates bigint NOT NULL DEFAULT 0
    );
    -- A large job's token buffers (platform 0 APNs, 1 FCM), written with binary COPY; stored
    -- uncompressed: device tokens barely compress and pglz would cost the commit.
    CREATE TABLE volley_tokens (
        job uuid NOT NULL,
        platform smallint NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (job, platform)
    );
    ALTER TABLE volley_tokens ALTER COLUMN data SET STORAGE EXTERNAL;
    -- A chunk's state: leased with an epoch, then done with its report. Updated in place,
    -- twice: room left in each page for HOT updates.
    CREATE TABLE volley_chunks (
        job uuid NOT NULL,
        index integer NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (job, index)
    ) WITH (fillfactor = 70);
    CREATE TABLE volley_keys (
        app text NOT NULL,
        key text NOT NULL,
        job uuid NOT NULL,
        at_ms bigint NOT NULL,
        accepted bigint NOT NULL,
        fingerprint bytea,
        PRIMARY KEY (app, key)
    );
    CREATE TABLE volley_webhook (
        job uuid NOT NULL,
        chunk integer NOT NULL,
        part integer NOT NULL,
        entry bytea NOT NULL,
        PRIMARY KEY (job, chunk, part)
    );
    CREATE TABLE volley_declared (
        app text NOT NULL,
        platform smallint NOT NULL,
        at_ms bigint NOT NULL,
        PRIMARY KEY (app, platform)
    );
    "#,
)];

/// The advisory lock that serialises migrations of controllers starting together.
const MIGRATION_LOCK: i64 = 0x766f_6c6c_6579; // "volley"

/// How to reach the database: the URL's settings with the password and TLS added.
#[derive(Clone)]
pub(crate) struct Database {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// `user@host:port/dbname`, for logs and errors: never the password.
    shown: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Database {
    /// The database of `controller.postgres_url`, its password from
    /// `controller.postgres_password_file` or `PGPASSWORD` when the URL has none.
    pub(crate) fn from_config(config: &ControllerConfig) -> Result<Database, StoreError> {
        let url = config
            .postgres_url
            .as_ref()
            .map(|url| url.expose())
            .ok_or_else(|| {
                StoreError::Db(
                    "controller.postgres_url is required with store = \"postgres\"".into(),
                )
            })?;
        // The parser's errors name an option, never the URL's text (its password).
        let mut settings: tokio_postgres::Config = url.parse().map_err(|error| {
            StoreError::Db(format!(
                "controller.postgres_url is not a PostgreSQL URL: {error}"
            ))
        })?;
        if let Some(file) = &config.postgres_password_file {
            let text = std::fs::read_to_string(file).map_err(|error| {
                StoreError::Db(format!(
                    "cannot read controller.postgres_password_file {}: {error}",
                    file.display()
                ))
            })?;
            settings.password(text.lines().next().unwrap_or_default());
        } else if settings.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                settings.password(password);
            }
        }
        settings
            .application_name("volley-controller")
            .connect_timeout(Duration::from_secs(5))
            // A database host that vanished is noticed within the failover time, not the
            // kernel's two hours.
            .keepalives_idle(Duration::from_secs(5))
            .tcp_user_timeout(config.failover_timeout);
        let roots = match &config.postgres_ca_file {
            Some(file) => {
                let pem = std::fs::read(file).map_err(|error| {
                    StoreError::Db(format!(
                        "cannot read controller.postgres_ca_file {}: {error}",
                        file.display()
                    ))
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|error| {
                        StoreError::Db(format!("controller.postgres_ca_file: {error}"))
                    })?;
                    roots.add(cert).map_err(|error| {
                        StoreError::Db(format!("controller.postgres_ca_file: {error}"))
                    })?;
                }
                roots
            }
            None => rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(db_error)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let host = match settings.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let shown = format!(
            "{}@{host}:{}/{}",
            settings.get_user().unwrap_or("?"),
            settings.get_ports().first().copied().unwrap_or(5432),
            settings.get_dbname().unwrap_or("?"),
        );
        Ok(Database {
            config: settings,
            tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            shown,
        })
    }

    /// A new session; its connection runs on the current runtime.
    pub(crate) async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) =
            self.config
                .connect(self.tls.clone())
                .await
                .map_err(|error| {
                    // The cause (refused, timed out, authentication) is the error's source.
                    let cause = std::error::Error::source(&error)
                        .map(|source| format!(": {source}"))
                        .unwrap_or_default();
                    StoreError::Db(format!(
                        "cannot connect to PostgreSQL at {} (controller.postgres_url): \
                         {error}{cause}",
                        self.shown
                    ))
                })?;
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(database = %shown, %error, "PostgreSQL session ended");
            }
        });
        Ok(client)
    }
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Applies the migrations this database lacks, in one transaction under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let txn = client.transaction().await.map_err(db_error)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_error)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS volley_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db_error)?;
    let applied: i32 = txn
        .query_one("SELECT coalesce(max(version), 0) FROM volley_schema", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let latest = MIGRATIONS.last().map_or(0, |(version, _)| *version);
    if applied > latest {
        return Err(StoreError::Db(format!(
            "the database's schema is version {applied}, newer than this controller knows \
             ({latest}): upgrade the controller"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > applied) {
        txn.batch_execute(sql).await.map_err(db_error)?;
        txn.execute(
            "INSERT INTO volley_schema (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(db_error)?;
        tracing::info!(version, "store: schema migrated");
    }
    txn.commit().await.map_err(db_error)
}

/// This controller's claim on the leadership.
pub(crate) struct Leadership {
    db: Database,
    client: Option<Client>,
    /// Who this controller is, in the leader row: unique per process.
    holder: String,
    /// Where fronts and agents reach this controller.
    address: String,
    /// How long a lease lasts without renewal: a standby takes over once it has ended.
    lease: Duration,
}

impl Leadership {
    /// Connects to the database and brings its schema up to date; fails when the database
    /// cannot be reached (a start-up error that names it).
    pub(crate) async fn open(
        db: Database,
        address: String,
        failover_timeout: Duration,
    ) -> Result<Leadership, StoreError> {
        let mut client = db.connect().await?;
        migrate(&mut client).await?;
        Ok(Leadership {
            db,
            client: Some(client),
            holder: Uuid::new_v4().to_string(),
            address,
            // Three quarters of the failover timeout, so that a standby polling every eighth
            // of it takes over within the timeout.
            lease: failover_timeout * 3 / 4,
        })
    }

    /// Where fronts and agents reach this controller.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// How long a leadership lasts from a renewal.
    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// How often the leader renews, and a standby looks.
    pub(crate) fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// How often a standby tries to take over.
    pub(crate) fn poll_every(&self) -> Duration {
        self.lease / 6
    }

    async fn client(&mut self) -> Result<&Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            self.client = Some(self.db.connect().await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Takes the leadership if its lease has ended; returns the new term.
    pub(crate) async fn try_lead(&mut self) -> Result<Option<i64>, StoreError> {
        let lease = self.lease.as_secs_f64();
        let (holder, address) = (self.holder.clone(), self.address.clone());
        let row = self
            .client()
            .await?
            .query_opt(
                "UPDATE volley_leader
                 SET term = term + 1, holder = $1, address = $2,
                     expires_at = now() + make_interval(secs => $3)
                 WHERE id = 1 AND expires_at < now()
                 RETURNING term",
                &[&holder, &address, &lease],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Renews the leadership of `term`; false when another controller holds it now.
    pub(crate) async fn renew(&mut self, term: i64) -> Result<bool, StoreError> {
        let lease = self.lease.as_secs_f64();
        let renewed = self
            .client()
            .await?
            .execute(
                "UPDATE volley_leader SET expires_at = now() + make_interval(secs => $2)
                 WHERE id = 1 AND term = $1",
                &[&term, &lease],
            )
            .await
            .map_err(db_error)?;
        Ok(renewed == 1)
    }

    /// The address of the controller that leads now, if one does.
    pub(crate) async fn leader(&mut self) -> Result<Option<String>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT address FROM volley_leader WHERE id = 1 AND expires_at >= now()",
                &[],
            )
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Gives up the leadership of `term` at once (a clean stop): a standby takes over at its
    /// next look rather than after the lease.
    pub(crate) async fn resign(&mut self, term: i64) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE volley_leader SET expires_at = '-infinity' WHERE id = 1 AND term = $1",
                &[&term],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Opens the store for the leader of `term`: reads back what it holds and starts the writer.
/// `fenced` is cancelled when a commit finds another term: this controller leads no more.
pub(crate) fn open(
    db: Database,
    term: i64,
    fsync: bool,
    fenced: CancellationToken,
    metrics: StoreMetrics,
) -> Result<(Store, Recovered), StoreError> {
    // The writer's own runtime: its session lives on the writer thread.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(db_error)?;
    let (session, recovered) = runtime.block_on(async {
        let session = connect_writer(&db, fsync).await?;
        let recovered = load(&session.client).await?;
        Ok::<_, StoreError>((session, recovered))
    })?;
    let backend = Postgres {
        runtime,
        db,
        session: Some(session),
        term,
        fsync,
        fenced,
    };
    Ok((Store::spawn(backend, metrics)?, recovered))
}

/// The statements of a commit, prepared once per session.
struct Statements {
    fence: Statement,
    jobs: Statement,
    keys: Statement,
    chunks: Statement,
    webhook_added: Statement,
    webhook_acked: Statement,
    cancels: Statement,
    duplicates: Statement,
    declared: Statement,
    forget_chunks: Statement,
    forget_tokens: Statement,
    forget_jobs: Statement,
    forget_keys: Statement,
}

/// The writer's session and its statements.
struct Session {
    client: Client,
    statements: Statements,
}

/// The SQLSTATE `volley_fence` raises.
const FENCED: &str = "VL001";

/// The writer's session: each commit waits for the WAL flush (and the synchronous standbys
/// the server is configured with) unless `fsync` is off, which only measures what that costs.
async fn connect_writer(db: &Database, fsync: bool) -> Result<Session, StoreError> {
    let client = db.connect().await?;
    let commit = if fsync { "on" } else { "off" };
    client
        .batch_execute(&format!("SET synchronous_commit = {commit}"))
        .await
        .map_err(db_error)?;
    let prepare = |sql: &'static str| {
        let client = &client;
        async move { client.prepare(sql).await.map_err(db_error) }
    };
    let statements = Statements {
        fence: prepare("SELECT volley_fence($1)").await?,
        jobs: prepare(
            "INSERT INTO volley_jobs (id, header) SELECT * FROM unnest($1::uuid[], $2::bytea[])",
        )
        .await?,
        keys: prepare(
            "INSERT INTO volley_keys (app, key, job, at_ms, accepted, fingerprint)
             SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int8[], $5::int8[],
                                  $6::bytea[])
             ON CONFLICT (app, key) DO UPDATE SET job = excluded.job, at_ms = excluded.at_ms,
                 accepted = excluded.accepted, fingerprint = excluded.fingerprint",
        )
        .await?,
        chunks: prepare(
            "INSERT INTO volley_chunks (job, index, state)
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::bytea[])
             ON CONFLICT (job, index) DO UPDATE SET state = excluded.state",
        )
        .await?,
        webhook_added: prepare(
            "INSERT INTO volley_webhook (job, chunk, part, entry)
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::int4[], $4::bytea[])
             ON CONFLICT DO NOTHING",
        )
        .await?,
        webhook_acked: prepare(
            "DELETE FROM volley_webhook w
             USING unnest($1::uuid[], $2::int4[], $3::int4[]) AS a(job, chunk, part)
             WHERE w.job = a.job AND w.chunk = a.chunk AND w.part = a.part",
        )
        .await?,
        cancels: prepare(
            "UPDATE volley_jobs j SET cancelled_ms = c.at
             FROM unnest($1::uuid[], $2::int8[]) AS c(id, at) WHERE j.id = c.id",
        )
        .await?,
        duplicates: prepare(
            "UPDATE volley_jobs j SET duplicates = j.duplicates + d.n
             FROM unnest($1::uuid[], $2::int8[]) AS d(id, n) WHERE j.id = d.id",
        )
        .await?,
        declared: prepare(
            "INSERT INTO volley_declared (app, platform, at_ms)
             SELECT a, p, (extract(epoch FROM now()) * 1000)::int8
             FROM unnest($1::text[], $2::int2[]) AS d(a, p)
             ON CONFLICT DO NOTHING",
        )
        .await?,
        forget_chunks: prepare("DELETE FROM volley_chunks WHERE job = ANY($1)").await?,
        forget_tokens: prepare("DELETE FROM volley_tokens WHERE job = ANY($1)").await?,
        forget_jobs: prepare("DELETE FROM volley_jobs WHERE id = ANY($1)").await?,
        // Only while the key still names a forgotten job: a key claimed again since, in the
        // same batch, stays.
        forget_keys: prepare(
            "DELETE FROM volley_keys k USING unnest($1::text[], $2::text[]) AS f(app, key)
             WHERE k.app = f.app AND k.key = f.key AND k.job = ANY($3)",
        )
        .await?,
    };
    Ok(Session { client, statements })
}

/// The PostgreSQL backend of the writer thread.
struct Postgres {
    runtime: tokio::runtime::Runtime,
    db: Database,
    /// `None` after the session was lost: connected again at the next commit.
    session: Option<Session>,
    term: i64,
    fsync: bool,
    fenced: CancellationToken,
}

impl Backend for Postgres {
    fn commit(&mut self, batch: &[Request]) -> Result<usize, StoreError> {
        let Postgres {
            runtime,
            db,
            session,
            term,
            fsync,
            fenced,
        } = self;
        runtime.block_on(async {
            if session.as_ref().is_none_or(|s| s.client.is_closed()) {
                *session = None;
                *session = Some(connect_writer(db, *fsync).await?);
            }
            let live = session.as_mut().expect("connected above");
            let result = commit(live, *term, batch).await;
            match &result {
                Err(StoreError::Fenced(_)) => fenced.cancel(),
                Err(_) if live.client.is_closed() => *session = None,
                _ => {}
            }
            result
        })
    }
}

/// Uuid of a job id.
fn uuid(id: JobId) -> Uuid {
    id.0
}

/// One batch of writes, gathered by kind so that each kind is one statement.
#[derive(Default)]
struct Plan<'a> {
    job_ids: Vec<Uuid>,
    job_headers: Vec<&'a [u8]>,
    /// (job, platform, buffer): large jobs' tokens, for COPY.
    tokens: Vec<(Uuid, i16, &'a Bytes)>,
    keys: Vec<&'a StoredKey>,
    /// The last state of each chunk the batch touches.
    chunks: HashMap<(Uuid, i32), Vec<u8>>,
    webhook_added: Vec<(Uuid, i32, i32, &'a [u8])>,
    webhook_acked: Vec<(Uuid, i32, i32)>,
    cancels: Vec<(Uuid, i64)>,
    duplicates: HashMap<Uuid, i64>,
    declared: Vec<(&'a str, i16)>,
    forget_ids: Vec<Uuid>,
    forget_keys: Vec<(&'a str, &'a str)>,
}

impl<'a> Plan<'a> {
    fn add(&mut self, write: &'a Write) {
        match write {
            Write::Job { id, job, key } => {
                self.job_ids.push(uuid(*id));
                self.job_headers.push(&job.header);
                for (platform, data) in (0i16..).zip(&job.tokens) {
                    if !data.is_empty() {
                        self.tokens.push((uuid(*id), platform, data));
                    }
                }
                if let Some(key) = key {
                    self.keys.push(key);
                }
            }
            Write::Leased { id, index, epoch } => {
                self.chunks
                    .insert((uuid(*id), *index as i32), leased_value(*epoch).to_vec());
            }
            Write::Done {
                id,
                index,
                at_ms,
                report,
                webhook,
            } => {
                self.chunks
                    .insert((uuid(*id), *index as i32), done_value(*at_ms, report));
                for ((job, chunk, part), entry) in webhook {
                    self.webhook_added.push((
                        Uuid::from_u128(*job),
                        *chunk as i32,
                        *part as i32,
                        entry,
                    ));
                }
            }
            Write::WebhookAcked { keys } => {
                self.webhook_acked
                    .extend(keys.iter().map(|(job, chunk, part)| {
                        (Uuid::from_u128(*job), *chunk as i32, *part as i32)
                    }));
            }
            Write::Cancelled { id, at_ms } => self.cancels.push((uuid(*id), *at_ms as i64)),
            Write::Duplicates { id, count } => {
                *self.duplicates.entry(uuid(*id)).or_default() += *count as i64;
            }
            Write::Close => {}
            Write::Many(writes) => {
                for write in writes {
                    self.add(write);
                }
            }
            Write::Forget { ids, keys } => {
                self.forget_ids.extend(ids.iter().map(|id| uuid(*id)));
                self.forget_keys
                    .extend(keys.iter().map(|(app, key)| (app.as_str(), key.as_str())));
            }
            Write::Declared { app, platform } => {
                self.declared.push((app, platform.index() as i16));
            }
        }
    }
}

/// One statement of a pipelined commit.
type Step<'a> = futures::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>>;

/// Applies a batch in one transaction, fenced by `term`; returns how many jobs it forgot.
///
/// The statements are pipelined: `BEGIN`, the fence, one statement per kind of write and
/// `COMMIT` go out together and cost one round trip. If the fence fails (another controller
/// leads) the transaction is aborted and its `COMMIT` rolls it back. A batch with large token
/// buffers first streams them with binary `COPY` inside the transaction.
async fn commit(session: &mut Session, term: i64, batch: &[Request]) -> Result<usize, StoreError> {
    let mut plan = Plan::default();
    for request in batch {
        plan.add(&request.write);
    }
    let Session { client, statements } = session;
    let client = &*client;
    let st = &*statements;
    let fenced = |error: tokio_postgres::Error| match error.code() {
        Some(code) if code.code() == FENCED => StoreError::Fenced(term),
        _ => db_error(error),
    };
    // The arrays each statement takes, built before the futures that borrow them.
    let keys = KeyColumns::of(&plan.keys);
    let mut chunk_jobs = Vec::with_capacity(plan.chunks.len());
    let mut chunk_indexes = Vec::with_capacity(plan.chunks.len());
    let mut chunk_states = Vec::with_capacity(plan.chunks.len());
    for ((job, index), state) in &plan.chunks {
        chunk_jobs.push(*job);
        chunk_indexes.push(*index);
        chunk_states.push(state.as_slice());
    }
    let (added_jobs, added_chunks, added_parts, added_entries) = unzip4(&plan.webhook_added);
    let acked_jobs: Vec<Uuid> = plan.webhook_acked.iter().map(|k| k.0).collect();
    let acked_chunks: Vec<i32> = plan.webhook_acked.iter().map(|k| k.1).collect();
    let acked_parts: Vec<i32> = plan.webhook_acked.iter().map(|k| k.2).collect();
    let cancel_ids: Vec<Uuid> = plan.cancels.iter().map(|c| c.0).collect();
    let cancel_at: Vec<i64> = plan.cancels.iter().map(|c| c.1).collect();
    let (duplicate_ids, duplicate_counts): (Vec<Uuid>, Vec<i64>) =
        plan.duplicates.iter().map(|(id, n)| (*id, *n)).unzip();
    let declared_apps: Vec<&str> = plan.declared.iter().map(|d| d.0).collect();
    let declared_platforms: Vec<i16> = plan.declared.iter().map(|d| d.1).collect();
    let forget_apps: Vec<&str> = plan.forget_keys.iter().map(|k| k.0).collect();
    let forget_keys: Vec<&str> = plan.forget_keys.iter().map(|k| k.1).collect();
    let forget_ids = &plan.forget_ids;
    // Borrowed by the statements' futures (owned arrays move into theirs).
    let (plan, keys) = (&plan, &keys);
    let mut steps: Vec<Step<'_>> = Vec::new();
    if plan.tokens.is_empty() {
        steps.push(Box::pin(async {
            client.batch_execute("BEGIN").await.map(|()| 0)
        }));
        steps.push(Box::pin(async move {
            client.execute(&st.fence, &[&term]).await
        }));
    } else {
        client.batch_execute("BEGIN").await.map_err(db_error)?;
        let copied = async {
            client.execute(&st.fence, &[&term]).await.map_err(fenced)?;
            copy_tokens(client, &plan.tokens).await.map_err(db_error)
        }
        .await;
        if let Err(error) = copied {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(error);
        }
    }
    // One statement per kind of write the batch has; its arrays move into the statement's
    // future.
    macro_rules! statement {
        ($rows:expr, $statement:expr, [$($param:expr),+ $(,)?]) => {
            if !$rows.is_empty() {
                steps.push(Box::pin(async move {
                    client.execute($statement, &[$($param),+]).await
                }));
            }
        };
    }
    statement!(plan.job_ids, &st.jobs, [&plan.job_ids, &plan.job_headers]);
    statement!(
        plan.keys,
        &st.keys,
        [
            &keys.apps,
            &keys.keys,
            &keys.jobs,
            &keys.at,
            &keys.accepted,
            &keys.fingerprints,
        ]
    );
    // The leases of one `deliver` call, and the chunk reports: one statement.
    statement!(
        chunk_jobs,
        &st.chunks,
        [&chunk_jobs, &chunk_indexes, &chunk_states]
    );
    statement!(
        added_jobs,
        &st.webhook_added,
        [&added_jobs, &added_chunks, &added_parts, &added_entries]
    );
    statement!(
        acked_jobs,
        &st.webhook_acked,
        [&acked_jobs, &acked_chunks, &acked_parts]
    );
    statement!(cancel_ids, &st.cancels, [&cancel_ids, &cancel_at]);
    statement!(
        duplicate_ids,
        &st.duplicates,
        [&duplicate_ids, &duplicate_counts]
    );
    statement!(
        declared_apps,
        &st.declared,
        [&declared_apps, &declared_platforms]
    );
    statement!(forget_ids, &st.forget_chunks, [forget_ids]);
    statement!(forget_ids, &st.forget_tokens, [forget_ids]);
    statement!(forget_ids, &st.forget_jobs, [forget_ids]);
    statement!(
        forget_apps,
        &st.forget_keys,
        [&forget_apps, &forget_keys, forget_ids]
    );
    steps.push(Box::pin(async {
        client.batch_execute("COMMIT").await.map(|()| 0)
    }));
    // Polled in order: sent in order, in one pipeline.
    let results = futures::future::join_all(steps).await;
    // The first failure says why (the statements after it fail as "transaction aborted").
    if let Some(error) = results.into_iter().find_map(Result::err) {
        return Err(fenced(error));
    }
    Ok(forget_ids.len())
}

/// The key columns of a batch, as arrays.
struct KeyColumns<'a> {
    apps: Vec<&'a str>,
    keys: Vec<&'a str>,
    jobs: Vec<Uuid>,
    at: Vec<i64>,
    accepted: Vec<i64>,
    fingerprints: Vec<Option<&'a [u8]>>,
}

impl<'a> KeyColumns<'a> {
    fn of(keys: &[&'a StoredKey]) -> KeyColumns<'a> {
        KeyColumns {
            apps: keys.iter().map(|k| k.app.as_str()).collect(),
            keys: keys.iter().map(|k| k.key.as_str()).collect(),
            jobs: keys.iter().map(|k| k.record.job.0).collect(),
            at: keys.iter().map(|k| k.record.at_ms as i64).collect(),
            accepted: keys.iter().map(|k| k.record.accepted as i64).collect(),
            fingerprints: keys
                .iter()
                .map(|k| k.record.fingerprint.as_ref().map(|f| &f.0[..]))
                .collect(),
        }
    }
}

/// Streams large jobs' token buffers with binary COPY: a million tokens are one 64 MB value
/// sent as it is.
async fn copy_tokens(
    client: &Client,
    tokens: &[(Uuid, i16, &Bytes)],
) -> Result<(), tokio_postgres::Error> {
    let sink = client
        .copy_in("COPY volley_tokens (job, platform, data) FROM STDIN BINARY")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::UUID, Type::INT2, Type::BYTEA]);
    futures::pin_mut!(writer);
    for (job, platform, data) in tokens {
        let data: &[u8] = data;
        writer
            .as_mut()
            .write(&[job as &(dyn ToSql + Sync), platform, &data])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

#[allow(clippy::type_complexity)]
fn unzip4<'a>(
    rows: &[(Uuid, i32, i32, &'a [u8])],
) -> (Vec<Uuid>, Vec<i32>, Vec<i32>, Vec<&'a [u8]>) {
    let mut out = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, c, d) in rows {
        out.0.push(*a);
        out.1.push(*b);
        out.2.push(*c);
        out.3.push(*d);
    }
    out
}

/// Reads back everything: jobs with their tokens and chunk states, keys, the webhook outbox
/// and the declared pairs.
async fn load(client: &Client) -> Result<Recovered, StoreError> {
    let mut chunks: HashMap<Uuid, Vec<(u32, ChunkState)>> = HashMap::new();
    for row in client
        .query("SELECT job, index, state FROM volley_chunks", &[])
        .await
        .map_err(db_error)?
    {
        let state = ChunkState::decode(row.get::<_, &[u8]>(2))?;
        chunks
            .entry(row.get(0))
            .or_default()
            .push((row.get::<_, i32>(1) as u32, state));
    }
    let mut tokens: HashMap<(Uuid, u8), Bytes> = HashMap::new();
    for row in client
        .query("SELECT job, platform, data FROM volley_tokens", &[])
        .await
        .map_err(db_error)?
    {
        let data: Vec<u8> = row.get(2);
        tokens.insert((row.get(0), row.get::<_, i16>(1) as u8), Bytes::from(data));
    }
    let mut jobs = Vec::new();
    for row in client
        .query(
            "SELECT id, header, cancelled_ms, duplicates FROM volley_jobs",
            &[],
        )
        .await
        .map_err(db_error)?
    {
        let id: Uuid = row.get(0);
        let cancelled = match row.get::<_, Option<i64>>(2) {
            Some(_) => CancelMark::Cancelled,
            None => CancelMark::None,
        };
        let mut states = chunks.remove(&id).unwrap_or_default();
        states.sort_unstable_by_key(|(index, _)| *index);
        jobs.push(store::stored_job(
            id.as_u128(),
            row.get::<_, &[u8]>(1),
            |platform| Ok(tokens.remove(&(id, platform))),
            states,
            cancelled,
            row.get::<_, i64>(3) as u64,
        )?);
    }
    let keys = client
        .query(
            "SELECT app, key, job, at_ms, accepted, fingerprint FROM volley_keys",
            &[],
        )
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|row| StoredKey {
            app: row.get(0),
            key: row.get(1),
            record: KeyRecord {
                job: JobId(row.get(2)),
                at_ms: row.get::<_, i64>(3) as u64,
                accepted: row.get::<_, i64>(4) as u64,
                fingerprint: row
                    .get::<_, Option<&[u8]>>(5)
                    .and_then(|f| <[u8; 32]>::try_from(f).ok())
                    .map(Fingerprint),
            },
        })
        .collect();
    let mut webhook = Vec::new();
    for row in client
        .query(
            "SELECT job, chunk, part, entry FROM volley_webhook ORDER BY job, chunk, part",
            &[],
        )
        .await
        .map_err(db_error)?
    {
        let entry: StoredEntry = bincode::deserialize(row.get::<_, &[u8]>(3)).map_err(db_error)?;
        let job: Uuid = row.get(0);
        webhook.push((
            (
                job.as_u128(),
                row.get::<_, i32>(1) as u32,
                row.get::<_, i32>(2) as u32,
            ),
            entry,
        ));
    }
    let declared = client
        .query("SELECT app, platform FROM volley_declared", &[])
        .await
        .map_err(db_error)?
        .into_iter()
        .filter_map(|row| {
            let platform = Platform::ALL.get(row.get::<_, i16>(1) as usize)?;
            Some((row.get::<_, String>(0), *platform))
        })
        .collect();
    Ok(Recovered {
        declared,
        jobs,
        keys,
        webhook,
    })
}

#[cfg(test)]
mod tests {
    //! Against the throwaway server `scripts/test` starts (`POSTGRES_TEST_URL`), each test in a
    //! database of its own.

    use super::*;
    use crate::store::NewJob;
    use volley_contracts::{ChunkReport, TokenList};

    /// A new database on the test server; its URL.
    async fn fresh_database() -> String {
        let url = std::env::var("POSTGRES_TEST_URL").expect(
            "POSTGRES_TEST_URL is not set: run the tests with scripts/test, which starts a \
             throwaway PostgreSQL",
        );
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("the test server answers");
        tokio::spawn(connection);
        let name = format!("store_{}", &Uuid::new_v4().simple().to_string()[..12]);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut config: tokio_postgres::Config = url.parse().unwrap();
        config.dbname(&name);
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        };
        let password = config
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        format!(
            "postgres://{}{password}@{host}:{}/{name}",
            config.get_user().unwrap_or("postgres"),
            config.get_ports().first().copied().unwrap_or(5432)
        )
    }

    fn controller_config(url: String) -> ControllerConfig {
        ControllerConfig {
            store: volley_config::StoreKind::Postgres,
            postgres_url: Some(volley_config::DatabaseUrl::new(url)),
            // The test server's TLS certificate is signed by a CA of its own.
            postgres_ca_file: std::env::var("POSTGRES_TEST_CA").ok().map(Into::into),
            ..ControllerConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_to_the_database_is_verified() {
        let ca = std::env::var("POSTGRES_TEST_CA").expect(
            "POSTGRES_TEST_CA is not set: run the tests with scripts/test, whose PostgreSQL \
             speaks TLS",
        );
        let url = fresh_database().await + "?sslmode=require";
        let db = Database::from_config(&ControllerConfig {
            postgres_ca_file: Some(ca.into()),
            ..controller_config(url.clone())
        })
        .unwrap();
        let client = db.connect().await.unwrap();
        let tls: bool = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(tls, "the session is encrypted");
        // Without the CA, the web PKI roots do not know the server's certificate: refused.
        let unknown = Database::from_config(&ControllerConfig {
            postgres_ca_file: None,
            ..controller_config(url)
        })
        .unwrap();
        let Err(error) = unknown.connect().await else {
            panic!("a server certificate of an unknown CA is accepted");
        };
        assert!(
            error.to_string().to_lowercase().contains("certificate"),
            "{error}"
        );
    }

    /// Takes the leadership at once (the previous lease ended): the new term.
    async fn lead(db: &Database) -> (Leadership, i64) {
        let mut leadership = Leadership::open(db.clone(), "here".into(), Duration::from_secs(5))
            .await
            .unwrap();
        leadership
            .client()
            .await
            .unwrap()
            .execute("UPDATE volley_leader SET expires_at = '-infinity'", &[])
            .await
            .unwrap();
        let term = leadership
            .try_lead()
            .await
            .unwrap()
            .expect("the lease ended");
        (leadership, term)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_is_written_reads_back_and_a_displaced_leader_is_fenced() {
        let db = Database::from_config(&controller_config(fresh_database().await)).unwrap();
        let (_first, term) = lead(&db).await;
        let fenced = CancellationToken::new();
        let (store, recovered) = {
            let (db, fenced) = (db.clone(), fenced.clone());
            tokio::task::spawn_blocking(move || {
                open(db, term, true, fenced, StoreMetrics::default())
            })
            .await
            .unwrap()
            .unwrap()
        };
        assert!(recovered.jobs.is_empty());

        // A small job (tokens inline), a large one (tokens by COPY), a key, chunk states, a
        // webhook entry, a cancel, duplicates and a declared pair.
        let small = JobId::new();
        let large = JobId::new();
        let mut submit = store::tests::record_submit();
        let job = NewJob::new(&submit, 2, 7).unwrap();
        let key = StoredKey {
            app: "shop".into(),
            key: "key-1".into(),
            record: KeyRecord {
                job: small,
                at_ms: 7,
                accepted: 3,
                fingerprint: Some(Fingerprint([7; 32])),
            },
        };
        let tokens: Vec<String> = (0..2000).map(|i| format!("{i:064x}")).collect();
        submit.apns_tokens = tokens.iter().map(String::as_str).collect::<TokenList>();
        submit.idempotency_key = None;
        let big = NewJob::new(&submit, 1000, 8).unwrap();
        assert!(!big.tokens[0].is_empty(), "a large job's tokens are apart");
        let report = bincode::serialize(&ChunkReport {
            delivered: 1000,
            ..ChunkReport::default()
        })
        .unwrap();
        let entry = bincode::serialize(&StoredEntry {
            app: "shop".into(),
            tokens: Vec::new(),
        })
        .unwrap();
        store
            .write(Write::Many(vec![
                Write::Job {
                    id: small,
                    job,
                    key: Some(key.clone()),
                },
                Write::Job {
                    id: large,
                    job: big,
                    key: None,
                },
                Write::Leased {
                    id: large,
                    index: 0,
                    epoch: 1,
                },
                Write::Leased {
                    id: large,
                    index: 1,
                    epoch: 3,
                },
                Write::Done {
                    id: large,
                    index: 0,
                    at_ms: 99,
                    report,
                    webhook: vec![((large.0.as_u128(), 0, 0), entry)],
                },
                Write::Cancelled {
                    id: small,
                    at_ms: 5,
                },
                Write::Duplicates {
                    id: large,
                    count: 4,
                },
                Write::Duplicates {
                    id: large,
                    count: 2,
                },
                Write::Declared {
                    app: "shop".into(),
                    platform: Platform::Apns,
                },
            ]))
            .await
            .unwrap();

        // Another controller takes over: this one's next commit is refused, and it knows.
        let (_second, second_term) = lead(&db).await;
        assert_eq!(second_term, term + 1);
        let refused = store
            .write(Write::Cancelled {
                id: large,
                at_ms: 6,
            })
            .await;
        assert!(refused.is_err(), "a fenced leader's write is refused");
        assert!(fenced.is_cancelled());
        assert!(store
            .write(Write::Declared {
                app: "other".into(),
                platform: Platform::Fcm,
            })
            .await
            .is_err());

        // The new leader reads back the first one's writes, and nothing after the fence.
        let (_, recovered) = tokio::task::spawn_blocking({
            let db = db.clone();
            move || {
                open(
                    db,
                    second_term,
                    true,
                    CancellationToken::new(),
                    StoreMetrics::default(),
                )
            }
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(recovered.jobs.len(), 2);
        let read = |id: JobId| recovered.jobs.iter().find(|job| job.id == id).unwrap();
        let small_read = read(small);
        assert_eq!(small_read.cancelled, CancelMark::Cancelled);
        assert_eq!(small_read.record.submit.apns_tokens.len(), 3);
        let large_read = read(large);
        assert_eq!(large_read.cancelled, CancelMark::None, "the fenced cancel");
        assert_eq!(large_read.record.submit.apns_tokens.len(), 2000);
        assert_eq!(
            large_read.record.submit.apns_tokens.get(1999),
            Some(tokens[1999].as_str())
        );
        assert_eq!(large_read.possible_duplicates, 6);
        assert_eq!(large_read.leased.get(&1), Some(&3));
        assert_eq!(large_read.done.len(), 1);
        assert_eq!(large_read.last_done_ms, Some(99));
        assert_eq!(recovered.keys, vec![key]);
        assert_eq!(recovered.webhook.len(), 1);
        assert_eq!(
            recovered.declared,
            vec![("shop".to_owned(), Platform::Apns)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_standby_waits_for_the_lease_and_a_resigned_leader_hands_over_at_once() {
        let db = Database::from_config(&controller_config(fresh_database().await)).unwrap();
        let (mut leader, term) = lead(&db).await;
        let mut standby = Leadership::open(db.clone(), "there".into(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(standby.try_lead().await.unwrap(), None, "the lease holds");
        assert_eq!(standby.leader().await.unwrap().as_deref(), Some("here"));
        assert!(leader.renew(term).await.unwrap());
        leader.resign(term).await.unwrap();
        assert_eq!(standby.try_lead().await.unwrap(), Some(term + 1));
        assert!(!leader.renew(term).await.unwrap(), "displaced");
        // Migrations are applied once: opening again changes nothing.
        Leadership::open(db, "again".into(), Duration::from_secs(5))
            .await
            .unwrap();
    }

    #[test]
    fn the_password_comes_from_its_file_and_a_missing_file_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-the-file\nignored\n").unwrap();
        let db = Database::from_config(&ControllerConfig {
            postgres_password_file: Some(file.clone()),
            ..controller_config("postgres://volley:from-the-url@db/volley".into())
        })
        .unwrap();
        assert_eq!(db.config.get_password(), Some(&b"from-the-file"[..]));
        let error = Database::from_config(&ControllerConfig {
            postgres_password_file: Some(dir.path().join("absent")),
            ..controller_config("postgres://volley@db/volley".into())
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("controller.postgres_password_file"),
            "{error}"
        );
    }

    #[test]
    fn the_password_never_shows() {
        let db = Database::from_config(&controller_config(
            "postgres://volley:s3cret-pw@db.internal:5433/volley".into(),
        ))
        .unwrap();
        assert_eq!(db.to_string(), "volley@db.internal:5433/volley");
        assert!(!format!("{db:?}").contains("s3cret"));
        let error = Database::from_config(&controller_config(
            "postgres://volley:s3cret-pw@db/volley?sslmode=bogus".into(),
        ))
        .err()
        .unwrap();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}
