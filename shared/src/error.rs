//! Errors that callers match on: whether to retry, reject or dead-letter.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration error: {0}")]
    Config(String),

    /// The broker cannot be reached or refused an operation.
    #[error(
        "cannot reach RabbitMQ at {url}: {reason}. Start it with `rabbitmq-server -detached` \
         (or set BATCHGATE_BROKER_URL)"
    )]
    BrokerUnavailable { url: String, reason: String },

    /// The broker is reachable but rejected the user, password or vhost.
    #[error(
        "RabbitMQ at {url} refused the connection: {reason}. Check the user, password and vhost \
         in the URL (create a vhost with `rabbitmqctl add_vhost NAME` and grant it with \
         `rabbitmqctl set_permissions -p NAME USER '.*' '.*' '.*'`)"
    )]
    BrokerRefused { url: String, reason: String },

    #[error("RabbitMQ operation failed: {0}")]
    Broker(String),

    /// Redis cannot be reached.
    #[error(
        "cannot reach Redis at {url}: {reason}. Start it with `redis-server --daemonize yes \
         --bind 127.0.0.1 --port 6379` (or set BATCHGATE_REDIS_URL)"
    )]
    RedisUnavailable { url: String, reason: String },

    #[error("Redis command failed: {0}")]
    Redis(String),

    /// A manifest, input file or message that can never be processed as it is.
    #[error("{0}")]
    Invalid(String),

    /// A provider call failed. `retryable` is true when repeating it may succeed.
    #[error("provider request {operation} failed: {message}")]
    Provider {
        operation: String,
        message: String,
        retryable: bool,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Reports whether repeating the failed step later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::BrokerUnavailable { .. } | Error::Broker(_) => true,
            Error::BrokerRefused { .. } => false,
            Error::RedisUnavailable { .. } | Error::Redis(_) => true,
            Error::Provider { retryable, .. } => *retryable,
            Error::Io { .. } => true,
            Error::Config(_) | Error::Invalid(_) => false,
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Error {
        Error::Redis(error.to_string())
    }
}

impl From<lapin::Error> for Error {
    fn from(error: lapin::Error) -> Error {
        Error::Broker(error.to_string())
    }
}
