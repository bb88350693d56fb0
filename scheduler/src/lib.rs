//! The scheduler admits submitted jobs.
//!
//! For each `job.submitted` message it rejects a job id already used by
//! another message, validates the manifest and the input file, estimates the
//! cost, reserves it against the team's monthly budget, and forwards the job to
//! the provider's ready queue. Messages are acknowledged only after every step
//! is durable, and each step is idempotent, so a redelivered message finishes
//! the admission without reserving twice.
//!
//! A job above its team's review threshold, or whose model has no price, is
//! held without a reservation. The scheduler also consumes review decisions:
//! an approved job is then reserved and forwarded like any other.

#![forbid(unsafe_code)]

mod admit;
mod review;

use std::future::Future;
use std::sync::Arc;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::pricing::PriceBook;
use batchgate_shared::store::Store;
use batchgate_shared::{Error, Result};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;

pub use admit::Admission;

/// Shared state of one scheduler process.
pub struct Scheduler {
    /// Source of the current time; tests replace it to cross a month boundary.
    pub clock: fn() -> chrono::DateTime<chrono::Utc>,
    pub config: Arc<Config>,
    pub prices: Arc<PriceBook>,
    pub broker: Broker,
    pub store: Store,
}

impl Scheduler {
    /// Connects to the broker and Redis and declares the topology.
    pub async fn connect(config: Config) -> Result<Scheduler> {
        let prices = PriceBook::load(&config.price_table)?;
        let broker = Broker::connect(&config.broker, "batchgate-scheduler").await?;
        let store = Store::connect(&config.redis).await?;
        broker
            .declare_topology(&[config.worker.poll_interval_secs])
            .await?;
        Ok(Scheduler {
            clock: chrono::Utc::now,
            config: Arc::new(config),
            prices: Arc::new(prices),
            broker,
            store,
        })
    }

    /// Releases reservations whose job is gone; failures are logged and retried
    /// at the next interval.
    async fn run_reaper(&self) {
        let max_age = self.config.scheduler.reservation_max_age_secs as i64;
        let now = (self.clock)();
        match batchgate_shared::reaper::reap(&self.config, &self.store, &self.broker, now, max_age)
            .await
        {
            Ok(reaped) if !reaped.is_empty() => {
                tracing::info!(released = reaped.len(), "Reaper released reservations")
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %error, "Reservation reaper failed; it runs again at the next interval")
            }
        }
    }

    /// Consumes submitted jobs until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let channel = self.broker.channel().await?;
        channel
            .basic_qos(self.config.scheduler.prefetch, BasicQosOptions::default())
            .await?;
        let queue = self.broker.names.submitted_queue();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let review_queue = self.broker.names.review_queue();
        let mut decisions = channel
            .basic_consume(
                review_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(
            queue,
            review_queue,
            "Scheduler consuming submitted jobs and review decisions"
        );
        tokio::pin!(shutdown);
        let reaper_every = self.config.scheduler.reaper_interval_secs;
        let mut reaper = tokio::time::interval(std::time::Duration::from_secs(reaper_every.max(1)));
        reaper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (delivery, is_decision) = tokio::select! {
                _ = &mut shutdown => break,
                _ = reaper.tick(), if reaper_every > 0 => {
                    self.run_reaper().await;
                    continue;
                }
                next = consumer.next() => (next, false),
                next = decisions.next() => (next, true),
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "Consumer interrupted, waiting for broker recovery");
                    channel.wait_for_recovery(error).await?;
                    continue;
                }
                None => {
                    return Err(Error::Broker(format!(
                        "the {} consumer was cancelled",
                        if is_decision {
                            "review decision"
                        } else {
                            "submitted-jobs"
                        }
                    )));
                }
            };
            let user_id = delivery
                .properties
                .user_id()
                .as_ref()
                .map(|user| user.as_str().to_owned());
            let handled = if is_decision {
                self.decide(&delivery.data, user_id.as_deref())
                    .await
                    .map(|outcome| tracing::debug!(?outcome, "Review decision applied"))
            } else {
                self.admit(&delivery.data, user_id.as_deref())
                    .await
                    .map(|admission| tracing::debug!(?admission, "Admission finished"))
            };
            match handled {
                Ok(()) => {
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Err(error) => {
                    // Broker or Redis failed midway: every step is idempotent, so
                    // requeue and let the next delivery finish it.
                    tracing::warn!(error = %error, "Message handling interrupted, requeueing it");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await?;
                }
            }
        }
        tracing::info!("Scheduler stopped");
        Ok(())
    }
}
