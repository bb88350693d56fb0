//! Recording job events: appended to the job's history in Redis and published
//! to the events exchange, whose stream keeps them for replay.

use lapin::BasicProperties;

use crate::broker::Broker;
use crate::error::Result;
use crate::message::JobEvent;
use crate::store::Store;

/// Appends an event to the job's history and publishes it with its name as the routing key.
pub async fn record(broker: &Broker, store: &Store, event: &JobEvent) -> Result<()> {
    let json =
        serde_json::to_string(event).map_err(|error| crate::Error::Broker(error.to_string()))?;
    store.append_history(&event.job_id, &json).await?;
    let properties = BasicProperties::default().with_message_id(event_id(event).into());
    broker
        .publish_bytes(
            &broker.names.events_exchange(),
            &event.event,
            json.as_bytes(),
            properties,
        )
        .await
}

fn event_id(event: &JobEvent) -> String {
    format!(
        "{}:{}:{}",
        event.job_id,
        event.event,
        event.at.timestamp_micros()
    )
}
