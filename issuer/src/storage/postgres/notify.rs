//! Word between processes that places changed, by PostgreSQL's
//! `NOTIFY`/`LISTEN`: a process that changed places says so (at most once
//! every few milliseconds, outside the transactions that sell, so that
//! commits never queue on the notification queue), and every process that
//! listens looks at the live feed at once. The feed itself is read from
//! the database; a word lost costs only the wait for the next pass.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::PgStorage;

/// The channel processes of one shop speak on.
const CHANNEL: &str = "issuer_places";

/// Words said at most this often by one process.
const COALESCE: Duration = Duration::from_millis(5);

impl PgStorage {
    /// Says that places changed, soon (see the module's description).
    pub(super) fn tell(&self) {
        let told = self.told.get_or_init(|| {
            let told = Arc::new(Notify::new());
            // The task keeps no storage alive: it ends with it.
            let (me, waiting) = (Arc::downgrade(&self.0), told.clone());
            self.runtime.spawn(async move {
                loop {
                    waiting.notified().await;
                    let Some(me) = me.upgrade().map(PgStorage) else {
                        return;
                    };
                    let said = async {
                        let mut c = me.conn().await?;
                        c.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await
                    }
                    .await;
                    if let Err(e) = said {
                        tracing::debug!(error = %e, "telling other processes of a change");
                    }
                    tokio::time::sleep(COALESCE).await;
                }
            });
            told
        });
        told.notify_one();
    }

    /// Listens for other processes' word, waking `wake`, on a connection
    /// of its own, made again whenever it is lost.
    pub(super) fn listen(&self, wake: Arc<Notify>) {
        let config = self.pool.config().clone();
        self.runtime.spawn(async move {
            loop {
                if let Err(e) = listen_once(&config, &wake).await {
                    tracing::debug!(error = %e, "listening for other processes' changes");
                }
                // The feed is read at the next pass meanwhile.
                wake.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

/// Listens until the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    wake: &Arc<Notify>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let heard = wake.clone();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => heard.notify_one(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let listening = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if listening.is_ok() {
        // The client lives while the connection does.
        let _ = driver.await;
    } else {
        driver.abort();
    }
    drop(client);
    listening
}
