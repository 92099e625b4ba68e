//! Delivers outbox rows (written in the same transaction as the change that caused them) to
//! the configured webhook, at least once, in order, with exponential backoff. Without a
//! webhook the rows are marked delivered: the audit log already holds them.

use std::time::Duration;

use crate::clock;
use crate::store::{self, db::Db};

const BATCH: i64 = 100;
const MAX_BACKOFF_S: i64 = 3_600;

/// The delivery task: the configuration database and where to send, nothing else.
pub fn spawn(db: Db, webhook_url: Option<String>) {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build();
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "cannot build the webhook HTTP client; outbox delivery is off");
                return;
            }
        };
        loop {
            match deliver_due(&db, webhook_url.as_deref(), &client).await {
                Ok(0) => tokio::time::sleep(Duration::from_secs(1)).await,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "outbox delivery failed");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
}

/// Delivers what is due; returns how many rows it handled.
pub async fn deliver_due(
    db: &Db,
    webhook_url: Option<&str>,
    client: &reqwest::Client,
) -> Result<usize, crate::store::Error> {
    let mut conn = db.pool.acquire().await?;
    let due = store::due_outbox(&mut conn, clock::now_ms(), BATCH).await?;
    drop(conn);
    if due.is_empty() {
        return Ok(0);
    }
    // HTTP first, without holding the database's write gate; then one short transaction
    // records the outcomes.
    let mut delivered = Vec::new();
    let mut failed = None;
    for item in &due {
        let Some(url) = webhook_url else {
            delivered.push(item.id);
            continue;
        };
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-abx-topic", &item.topic)
            .header("x-abx-delivery", item.id.to_string())
            .body(item.payload.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => delivered.push(item.id),
            outcome => {
                let error = match outcome {
                    Ok(response) => format!("webhook answered {}", response.status()),
                    Err(error) => error.to_string(),
                };
                let backoff_s = 2i64
                    .saturating_pow(item.attempts.min(20) as u32)
                    .min(MAX_BACKOFF_S);
                tracing::warn!(id = item.id, topic = %item.topic, %error, backoff_s, "webhook delivery failed");
                failed = Some((item.id, backoff_s, error));
                // Keep order: later rows wait until this one is delivered.
                break;
            }
        }
    }
    let mut tx = db.begin_write().await?;
    let now = clock::now_ms();
    for id in &delivered {
        store::outbox_delivered(&mut tx, *id, now).await?;
    }
    if let Some((id, backoff_s, error)) = failed {
        store::outbox_failed(&mut tx, id, now + backoff_s * 1_000, &error).await?;
    }
    tx.commit().await?;
    Ok(delivered.len())
}
