//! The worker runs admitted jobs at the provider.
//!
//! It consumes two queues. From the ready queue it takes an admitted job,
//! uploads the input file, creates the provider batch and records its id in
//! Redis before acknowledging. Polls arrive on the due queue after a fixed
//! delay in a wait queue, so no delivery stays unacknowledged while a batch
//! runs for hours. When the batch ends, the worker reads its result files,
//! publishes one ledger record and settles the job's reservation.

#![forbid(unsafe_code)]

mod finish;
mod poll;
mod start;

use std::future::Future;
use std::sync::Arc;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::{Config, openai_api_key};
use batchgate_shared::openai::OpenAiClient;
use batchgate_shared::pricing::PriceTable;
use batchgate_shared::store::Store;
use batchgate_shared::{Error, Result};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};

pub use poll::PollMessage;

/// Shared state of one worker process.
pub struct Worker {
    pub config: Arc<Config>,
    pub prices: Arc<PriceTable>,
    pub broker: Broker,
    pub store: Store,
    pub openai: OpenAiClient,
}

impl Worker {
    /// Connects to the broker and Redis, declares the topology and reads the API key.
    pub async fn connect(config: Config) -> Result<Arc<Worker>> {
        let openai = OpenAiClient::new(&config.providers.openai, openai_api_key()?)?;
        Worker::connect_with_client(config, openai).await
    }

    /// Connects with a ready provider client, for callers that hold the key themselves.
    pub async fn connect_with_client(config: Config, openai: OpenAiClient) -> Result<Arc<Worker>> {
        let prices = PriceTable::load(&config.price_table)?;
        let broker = Broker::connect(&config.broker, "batchgate-worker").await?;
        let store = Store::connect(&config.redis).await?;
        broker
            .declare_topology(&[config.worker.poll_interval_secs])
            .await?;
        Ok(Arc::new(Worker {
            config: Arc::new(config),
            prices: Arc::new(prices),
            broker,
            store,
            openai,
        }))
    }

    /// Consumes ready jobs and due polls until `shutdown` resolves.
    pub async fn run(self: &Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.resume_inflight().await?;
        let (ready_channel, mut ready) = self
            .consume(&self.broker.names.ready_queue("openai"))
            .await?;
        let (poll_channel, mut polls) = self.consume(&self.broker.names.poll_due_queue()).await?;
        tracing::info!("Worker consuming ready jobs and due polls");
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                next = ready.next() => {
                    let Some(delivery) = next_delivery(&ready_channel, next).await? else { continue };
                    let worker = Arc::clone(self);
                    tasks.spawn(async move { worker.handle(delivery, Kind::Ready).await });
                }
                next = polls.next() => {
                    let Some(delivery) = next_delivery(&poll_channel, next).await? else { continue };
                    let worker = Arc::clone(self);
                    tasks.spawn(async move { worker.handle(delivery, Kind::Poll).await });
                }
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = finished {
                        tracing::error!(error = %error, "Worker task panicked");
                    }
                }
            }
        }
        tasks.shutdown().await;
        tracing::info!("Worker stopped");
        Ok(())
    }

    async fn consume(&self, queue: &str) -> Result<(Channel, Consumer)> {
        let channel = self.broker.channel().await?;
        channel
            .basic_qos(self.config.worker.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    async fn handle(&self, delivery: Delivery, kind: Kind) {
        let outcome = match kind {
            Kind::Ready => self.start_job(&delivery.data).await,
            Kind::Poll => self.poll(&delivery.data).await,
        };
        // An error here is a broker, Redis or provider failure mid-step; every step
        // is idempotent, so the message is delivered again to finish it.
        let acknowledged = match outcome {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await.map(|_| ()),
            Err(error) => {
                tracing::warn!(error = %error, "Job step interrupted, the message will be delivered again");
                requeue_later(&delivery).await
            }
        };
        if let Err(error) = acknowledged {
            tracing::warn!(error = %error, "Cannot acknowledge a delivery; the broker will redeliver it");
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Ready,
    Poll,
}

async fn requeue_later(delivery: &Delivery) -> std::result::Result<(), lapin::Error> {
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn next_delivery(
    channel: &Channel,
    next: Option<std::result::Result<Delivery, lapin::Error>>,
) -> Result<Option<Delivery>> {
    match next {
        Some(Ok(delivery)) => Ok(Some(delivery)),
        Some(Err(error)) => {
            tracing::warn!(error = %error, "Consumer interrupted, waiting for broker recovery");
            channel.wait_for_recovery(error).await?;
            Ok(None)
        }
        None => Err(Error::Broker(
            "a worker consumer was cancelled by the broker".into(),
        )),
    }
}
