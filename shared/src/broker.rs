//! RabbitMQ topology and confirmed publishing.
//!
//! Every process declares the whole topology on start; declarations are
//! idempotent. Names carry the configured prefix (default `batchgate`):
//!
//! | name | kind | purpose |
//! | --- | --- | --- |
//! | `P.jobs` | topic exchange | `job.submitted`, `job.ready.<provider>` |
//! | `P.jobs.submitted` | quorum queue | consumed by schedulers |
//! | `P.jobs.ready.<provider>` | quorum queue | consumed by workers holding that provider's key |
//! | `P.review.decisions` | quorum queue | review decisions (`review.decision`), consumed by schedulers |
//! | `P.events` | topic exchange | job events, routing key = event name |
//! | `P.events.stream` | stream queue | replayable job history |
//! | `P.ledger` | topic exchange | ledger records, key `ledger.<provider>.<team>` |
//! | `P.ledger.stream` | stream queue | replayable ledger |
//! | `P.poll` | direct exchange | due polls, dead-lettered from the wait queue |
//! | `P.poll.wait.<N>s` | classic queue, TTL N s | fixed-delay tier before a poll |
//! | `P.poll.due` | quorum queue | polls a worker should run now |
//! | `P.dead` / `P.dead.letters` | topic exchange / quorum queue | messages that cannot be processed, reason in `x-batchgate-reason` |

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Serialize;

use crate::config::BrokerConfig;
use crate::error::{Error, Result};

/// Header carrying the reason a message was dead-lettered.
pub const REASON_HEADER: &str = "x-batchgate-reason";

/// Time a publish may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Retention of the ledger stream (RabbitMQ `x-max-age` syntax).
const LEDGER_MAX_AGE: &str = "800D";
const EVENTS_MAX_AGE: &str = "400D";

/// Exchange and queue names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    pub prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    pub fn submitted_queue(&self) -> String {
        format!("{}.jobs.submitted", self.prefix)
    }
    pub fn ready_queue(&self, provider: &str) -> String {
        format!("{}.jobs.ready.{provider}", self.prefix)
    }
    pub fn review_queue(&self) -> String {
        format!("{}.review.decisions", self.prefix)
    }
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.prefix)
    }
    pub fn events_stream(&self) -> String {
        format!("{}.events.stream", self.prefix)
    }
    pub fn ledger_exchange(&self) -> String {
        format!("{}.ledger", self.prefix)
    }
    pub fn ledger_stream(&self) -> String {
        format!("{}.ledger.stream", self.prefix)
    }
    pub fn poll_exchange(&self) -> String {
        format!("{}.poll", self.prefix)
    }
    pub fn poll_wait_queue(&self, delay_secs: u64) -> String {
        format!("{}.poll.wait.{delay_secs}s", self.prefix)
    }
    pub fn poll_due_queue(&self) -> String {
        format!("{}.poll.due", self.prefix)
    }
    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }
    pub fn dead_queue(&self) -> String {
        format!("{}.dead.letters", self.prefix)
    }
}

/// Routing key of jobs ready for a provider's workers.
pub fn ready_routing_key(provider: &str) -> String {
    format!("job.ready.{provider}")
}

/// Replaces the password of a URL with `***`, for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A broker connection with one confirm-mode channel for publishing.
pub struct Broker {
    pub connection: Connection,
    publisher: Channel,
    pub names: Names,
}

impl Broker {
    /// Connects with automatic recovery and enables publisher confirms.
    ///
    /// A plain TCP connection is tried first, so that a broker that is not
    /// listening fails at once with the reason rather than after the timeout.
    pub async fn connect(config: &BrokerConfig, connection_name: &str) -> Result<Broker> {
        let url = redact_url(&config.url);
        let timeout = Duration::from_secs(config.connect_timeout_secs);
        check_listening(&config.url, timeout)
            .await
            .map_err(|reason| Error::BrokerUnavailable {
                url: url.clone(),
                reason,
            })?;
        let properties = ConnectionProperties::default()
            .with_connection_name(connection_name.into())
            .enable_auto_recover();
        let connection =
            tokio::time::timeout(timeout, Connection::connect(&config.url, properties))
                .await
                .map_err(|_| Error::BrokerUnavailable {
                    url: url.clone(),
                    reason: format!("no AMQP session within {} s", config.connect_timeout_secs),
                })?
                .map_err(|error| classify_connect_error(&url, &error))?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Broker {
            connection,
            publisher,
            names: Names::new(&config.prefix),
        })
    }

    /// Returns the user name of the broker URL, which the broker requires as the
    /// `user_id` of every message this connection publishes with one.
    pub fn user_name(url: &str) -> Option<String> {
        let uri: lapin::uri::AMQPUri = url.parse().ok()?;
        Some(uri.authority.userinfo.username)
    }

    /// Opens a channel for consuming.
    pub async fn channel(&self) -> Result<Channel> {
        with_timeout("opening a channel", self.connection.create_channel()).await
    }

    /// Declares every exchange and queue; safe to run from every process.
    pub async fn declare_topology(&self, poll_delays_secs: &[u64]) -> Result<()> {
        with_timeout("declaring the topology", self.declare_all(poll_delays_secs)).await
    }

    async fn declare_all(&self, poll_delays_secs: &[u64]) -> Result<()> {
        let names = &self.names;
        let channel = &self.publisher;
        for (exchange, kind) in [
            (names.jobs_exchange(), ExchangeKind::Topic),
            (names.events_exchange(), ExchangeKind::Topic),
            (names.ledger_exchange(), ExchangeKind::Topic),
            (names.poll_exchange(), ExchangeKind::Direct),
            (names.dead_exchange(), ExchangeKind::Topic),
        ] {
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            channel
                .exchange_declare(exchange.into(), kind, options, FieldTable::default())
                .await?;
        }

        let submitted = names.submitted_queue();
        declare_queue(channel, &submitted, quorum_arguments()).await?;
        bind(channel, &submitted, &names.jobs_exchange(), "job.submitted").await?;
        let review = names.review_queue();
        declare_queue(channel, &review, quorum_arguments()).await?;
        bind(
            channel,
            &review,
            &names.jobs_exchange(),
            crate::review::DECISION_ROUTING_KEY,
        )
        .await?;
        for provider in crate::provider::PROVIDERS {
            let ready = names.ready_queue(provider);
            declare_queue(channel, &ready, quorum_arguments()).await?;
            bind(
                channel,
                &ready,
                &names.jobs_exchange(),
                &ready_routing_key(provider),
            )
            .await?;
        }

        declare_queue(
            channel,
            &names.events_stream(),
            stream_arguments(EVENTS_MAX_AGE),
        )
        .await?;
        bind(
            channel,
            &names.events_stream(),
            &names.events_exchange(),
            "#",
        )
        .await?;
        declare_queue(
            channel,
            &names.ledger_stream(),
            stream_arguments(LEDGER_MAX_AGE),
        )
        .await?;
        bind(
            channel,
            &names.ledger_stream(),
            &names.ledger_exchange(),
            "#",
        )
        .await?;

        declare_queue(channel, &names.poll_due_queue(), quorum_arguments()).await?;
        bind(
            channel,
            &names.poll_due_queue(),
            &names.poll_exchange(),
            "due",
        )
        .await?;
        for delay in poll_delays_secs {
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(*delay as i64 * 1000),
            );
            arguments.insert(
                "x-dead-letter-exchange".into(),
                long_string(&names.poll_exchange()),
            );
            arguments.insert("x-dead-letter-routing-key".into(), long_string("due"));
            declare_queue(channel, &names.poll_wait_queue(*delay), arguments).await?;
        }

        declare_queue(channel, &names.dead_queue(), quorum_arguments()).await?;
        bind(channel, &names.dead_queue(), &names.dead_exchange(), "#").await?;
        Ok(())
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm.
    ///
    /// The message is mandatory: if no queue is bound for the routing key, the
    /// broker returns it and this fails rather than dropping it silently.
    pub async fn publish_json<T: Serialize>(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &T,
        properties: BasicProperties,
    ) -> Result<()> {
        let payload = serde_json::to_vec(body).map_err(|error| Error::Broker(error.to_string()))?;
        self.publish_bytes(exchange, routing_key, &payload, properties)
            .await
    }

    pub async fn publish_bytes(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let properties = properties
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let publish = async {
            self.publisher
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    payload,
                    properties,
                )
                .await?
                .await
        };
        let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, publish)
            .await
            .map_err(|_| {
                Error::Broker(format!(
                    "no publisher confirm within {} s",
                    CONFIRM_TIMEOUT.as_secs()
                ))
            })??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(Error::Broker(format!(
                "message to exchange {exchange:?} with routing key {routing_key:?} was returned \
                 unroutable ({}): is the topology declared?",
                returned.reply_text
            ))),
            Confirmation::Nack(_) => Err(Error::Broker(format!(
                "broker rejected the message to exchange {exchange:?} with routing key {routing_key:?}"
            ))),
            Confirmation::NotRequested => {
                Err(Error::Broker("publisher confirms are not enabled".into()))
            }
        }
    }

    /// Publishes a message that cannot be processed to the dead-letter exchange,
    /// with the reason in [`REASON_HEADER`].
    pub async fn dead_letter(
        &self,
        source_queue: &str,
        payload: &[u8],
        reason: &str,
    ) -> Result<()> {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), long_string(reason));
        headers.insert("x-batchgate-source-queue".into(), long_string(source_queue));
        let properties = BasicProperties::default().with_headers(headers);
        self.publish_bytes(
            &self.names.dead_exchange(),
            source_queue,
            payload,
            properties,
        )
        .await
    }

    pub async fn close(&self) {
        let _ = self.connection.close(200, "closing".into()).await;
    }
}

/// Time a broker operation other than a publish may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

async fn with_timeout<T, E: Into<Error>>(
    operation: &str,
    future: impl Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(OPERATION_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(Error::Broker(format!(
            "{operation} timed out after {} s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

/// Opens and closes a TCP connection to the broker's host and port.
async fn check_listening(url: &str, timeout: Duration) -> std::result::Result<(), String> {
    let uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|error| format!("invalid URL: {error}"))?;
    let address = format!("{}:{}", uri.authority.host, uri.authority.port);
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(format!("connection to {address} failed: {error}")),
        Err(_) => Err(format!(
            "no TCP connection to {address} within {} s",
            timeout.as_secs()
        )),
    }
}

/// Tells a refused login or vhost apart from a broker that is down.
fn classify_connect_error(url: &str, error: &lapin::Error) -> Error {
    let reason = error.to_string();
    if reason.contains("ACCESS_REFUSED") || reason.contains("NOT_ALLOWED") {
        Error::BrokerRefused {
            url: url.to_owned(),
            reason,
        }
    } else {
        Error::BrokerUnavailable {
            url: url.to_owned(),
            reason,
        }
    }
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

fn stream_arguments(max_age: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("stream"));
    arguments.insert("x-max-age".into(), long_string(max_age));
    arguments
}

pub fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

async fn declare_queue(channel: &Channel, name: &str, arguments: FieldTable) -> Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(ShortString::from(name), options, arguments)
        .await?;
    Ok(())
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, routing_key: &str) -> Result<()> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
