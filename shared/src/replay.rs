//! Reading a stream queue (ledger or events) from its first message.
//!
//! AMQP 0-9-1 does not say where a stream ends, so the reader stops when no
//! message arrived for `idle`. The message count that a stream queue reports
//! lags behind recent publishes, so it cannot mark the end.

use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

use crate::broker::{Broker, long_string};
use crate::error::Result;
use crate::message::LedgerRecord;

/// Messages the broker sends ahead of acknowledgements while replaying.
const REPLAY_PREFETCH: u16 = 1000;

/// Returns the bodies of every message in a stream queue, oldest first.
pub async fn read_stream(broker: &Broker, queue: &str, idle: Duration) -> Result<Vec<Vec<u8>>> {
    let channel = broker.channel().await?;
    channel
        .basic_qos(REPLAY_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), long_string("first"));
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await?;

    let mut bodies = Vec::new();
    loop {
        let next = match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(next)) => next?,
            Ok(None) | Err(_) => break,
        };
        next.ack(BasicAckOptions { multiple: false }).await?;
        bodies.push(next.data);
    }
    let _ = channel.close(200, "replay finished".into()).await;
    Ok(bodies)
}

/// Replays the ledger stream and keeps one record per record id (the first seen).
/// Returns the records and the number of bodies that were not ledger records.
pub async fn ledger_records(broker: &Broker, idle: Duration) -> Result<(Vec<LedgerRecord>, usize)> {
    let bodies = read_stream(broker, &broker.names.ledger_stream(), idle).await?;
    let mut seen = std::collections::HashSet::new();
    let mut records = Vec::new();
    let mut unreadable = 0;
    for body in bodies {
        match serde_json::from_slice::<LedgerRecord>(&body) {
            Ok(record) => {
                if seen.insert(record.record_id.clone()) {
                    records.push(record);
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    Ok((records, unreadable))
}
