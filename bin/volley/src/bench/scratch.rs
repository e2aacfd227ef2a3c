//! A scratch PostgreSQL database for one run of `volley bench --postgres-url`: created empty
//! before the run, so that no earlier run's jobs are loaded, and dropped after it.

use anyhow::Context as _;
use tokio_postgres::NoTls;

/// A database made for one run.
pub struct Database {
    /// Its URL: the server's, with this database's name.
    pub url: String,
    server: String,
    name: String,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to the PostgreSQL server of --postgres-url")?;
    tokio::spawn(connection);
    Ok(client)
}

impl Database {
    /// Creates `volley_bench_<random>` on the server at `server`.
    pub async fn create(server: &str) -> anyhow::Result<Database> {
        let name = format!(
            "volley_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        connect(server)
            .await?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .context("cannot create the bench's scratch database (the user needs CREATEDB)")?;
        let mut url: url::Url = server
            .parse()
            .context("--postgres-url is not a URL (postgres://user@host:port/db)")?;
        url.set_path(&name);
        Ok(Database {
            url: url.to_string(),
            server: server.to_owned(),
            name,
        })
    }

    /// Drops it (its sessions are gone with the run's controller).
    pub async fn drop_database(self) -> anyhow::Result<()> {
        connect(&self.server)
            .await?
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .context("cannot drop the bench's scratch database")?;
        Ok(())
    }
}
