//! Shared core of batchgate: configuration, the manifest and job contract,
//! input validation, pricing, the budget store in Redis, the broker topology
//! and the OpenAI batch client.
//!
//! - [`config`]: the TOML configuration with environment overrides.
//! - [`manifest`] and [`input`]: what `submit` and the scheduler check.
//! - [`pricing`] and [`tokens`]: the price table, estimates and exact costs.
//! - [`message`]: job messages, job events and ledger records.
//! - [`broker`]: exchanges, queues and confirmed publishing on RabbitMQ.
//! - [`store`]: budgets, reservations and job state in Redis.
//! - [`review`]: review holds and the decisions that release them.
//! - [`provider`] and [`results`]: the OpenAI and Anthropic clients behind one
//!   trait, and result-file accounting.

pub mod broker;
pub mod config;
pub mod error;
pub mod input;
pub mod journal;
pub mod manifest;
pub mod message;
pub mod money;
pub mod period;
pub mod pricing;
pub mod provider;
pub mod reaper;
pub mod rebuild;
pub mod replay;
pub mod results;
pub mod review;
pub mod split;
pub mod store;
pub mod telemetry;
pub mod tokens;

pub use error::{Error, Result};
