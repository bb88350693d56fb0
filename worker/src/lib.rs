//! The worker runs admitted jobs at the provider.
//!
//! A job splits into parts that each fit one provider batch. From a ready
//! queue the worker takes an admitted job, records its parts, and creates each
//! part's provider batch, recording the batch id in Redis before it
//! acknowledges. Polls arrive on the due queue after a fixed delay in a wait
//! queue, so no delivery stays unacknowledged while a batch runs for hours.
//! When a part's batch ends, the worker reads its results and publishes one
//! ledger record; when every part has ended, it settles the job's reservation.

#![forbid(unsafe_code)]

mod crash;
mod finish;
mod part;
mod poll;
mod settle;
mod start;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use batchgate_shared::broker::Broker;
use batchgate_shared::config::Config;
use batchgate_shared::pricing::PriceBook;
use batchgate_shared::provider::{Provider, clients_from_env};
use batchgate_shared::store::Store;
use batchgate_shared::{Error, Result};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{Semaphore, watch};

pub use poll::PollMessage;

/// A provider client with the worker's limits on concurrent calls to it.
pub struct ProviderSlot {
    pub client: Arc<dyn Provider>,
    pub creates: Semaphore,
    pub polls: Semaphore,
}

/// Shared state of one worker process.
pub struct Worker {
    pub config: Arc<Config>,
    pub prices: Arc<PriceBook>,
    pub broker: Broker,
    pub store: Store,
    pub providers: HashMap<String, ProviderSlot>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ready,
    Poll,
}

impl Worker {
    /// Connects to the broker and Redis, declares the topology and builds a
    /// client for each provider whose API key is in the environment.
    pub async fn connect(config: Config) -> Result<Arc<Worker>> {
        let clients = clients_from_env(&config)?;
        if clients.is_empty() {
            return Err(Error::Config(
                "no provider API key is set: export OPENAI_API_KEY and/or ANTHROPIC_API_KEY".into(),
            ));
        }
        Worker::connect_with_providers(config, clients).await
    }

    /// Connects with ready provider clients, for callers that hold the keys themselves.
    pub async fn connect_with_providers(
        config: Config,
        clients: Vec<(String, Arc<dyn Provider>)>,
    ) -> Result<Arc<Worker>> {
        let prices = PriceBook::load(&config.price_table)?;
        let broker = Broker::connect(&config.broker, "batchgate-worker").await?;
        let store = Store::connect(&config.redis).await?;
        broker
            .declare_topology(&[config.worker.poll_interval_secs])
            .await?;
        let mut providers = HashMap::new();
        for (name, client) in clients {
            let limits = config
                .providers
                .get(&name)
                .ok_or_else(|| Error::Config(format!("unknown provider {name}")))?;
            let slot = ProviderSlot {
                client,
                creates: Semaphore::new(limits.max_concurrent_creates.max(1)),
                polls: Semaphore::new(limits.max_concurrent_polls.max(1)),
            };
            providers.insert(name, slot);
        }
        Ok(Arc::new(Worker {
            config: Arc::new(config),
            prices: Arc::new(prices),
            broker,
            store,
            providers,
        }))
    }

    pub(crate) fn provider(&self, name: &str) -> Result<&ProviderSlot> {
        self.providers
            .get(name)
            .ok_or_else(|| Error::Config(format!("this worker has no API key for provider {name}")))
    }

    /// Consumes ready jobs of each configured provider and due polls until `shutdown` resolves.
    pub async fn run(self: &Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.resume_inflight().await?;
        let (stop, stopped) = watch::channel(false);
        let mut consumers = tokio::task::JoinSet::new();
        let mut queues: Vec<(String, Kind)> = self
            .providers
            .keys()
            .map(|provider| (self.broker.names.ready_queue(provider), Kind::Ready))
            .collect();
        queues.push((self.broker.names.poll_due_queue(), Kind::Poll));
        for (queue, kind) in queues {
            let worker = Arc::clone(self);
            let stopped = stopped.clone();
            consumers.spawn(async move { worker.consume(queue, kind, stopped).await });
        }
        tracing::info!(providers = ?self.providers.keys().collect::<Vec<_>>(), "Worker consuming ready jobs and due polls");

        tokio::pin!(shutdown);
        let outcome = tokio::select! {
            _ = &mut shutdown => Ok(()),
            Some(finished) = consumers.join_next() => match finished {
                Ok(result) => result,
                Err(error) => Err(Error::Broker(format!("a consumer task failed: {error}"))),
            },
        };
        let _ = stop.send(true);
        while consumers.join_next().await.is_some() {}
        tracing::info!("Worker stopped");
        outcome
    }

    async fn consume(
        self: Arc<Self>,
        queue: String,
        kind: Kind,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<()> {
        let channel = self.broker.channel().await?;
        channel
            .basic_qos(self.config.worker.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let worker = Arc::clone(&self);
                        tasks.spawn(async move { worker.handle(delivery, kind).await });
                    }
                    Some(Err(error)) => {
                        tracing::warn!(queue, error = %error, "Consumer interrupted, waiting for broker recovery");
                        channel.wait_for_recovery(error).await?;
                    }
                    None => return Err(Error::Broker(format!("the consumer of {queue} was cancelled by the broker"))),
                },
                Some(finished) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = finished {
                        tracing::error!(queue, error = %error, "Worker task panicked");
                    }
                }
            }
        }
        tasks.shutdown().await;
        Ok(())
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
                tracing::warn!(?kind, error = %error, "Job step interrupted, the message will be delivered again");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }
        };
        if let Err(error) = acknowledged {
            tracing::warn!(error = %error, "Cannot acknowledge a delivery; the broker will redeliver it");
        }
    }
}
