//! Budgets, reservations and job state in Redis.
//!
//! Per team and month: a budget hash (`limit`, `reserved`, `spent` in
//! micro-USD), a reservations hash (job id → reserved amount) and a
//! settlements hash (job id → settled cost). Their keys share the hash tag
//! `{team}` so the scripts also run on Redis Cluster. Reserve, settle and
//! release are single Lua scripts, idempotent per job id.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::broker::redact_url;
use crate::config::RedisConfig;
use crate::error::{Error, Result};
use crate::money::Micros;

const RESERVE_SCRIPT: &str = r#"
local existing = redis.call('HGET', KEYS[2], ARGV[1])
local limit = redis.call('HGET', KEYS[1], 'limit')
if not limit then
  redis.call('HSET', KEYS[1], 'limit', ARGV[3])
  limit = ARGV[3]
end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
if existing or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return {2, tonumber(limit), reserved, spent}
end
local amount = tonumber(ARGV[2])
if reserved + spent + amount > tonumber(limit) then
  return {0, tonumber(limit), reserved, spent}
end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('HSET', KEYS[2], ARGV[1], amount)
redis.call('HSET', KEYS[4], ARGV[1], redis.call('TIME')[1])
return {1, tonumber(limit), reserved + amount, spent}
"#;

/// Marks each alert threshold (ARGV, in per-mille of the limit) that reserved
/// plus spent has reached as `pending`, once per team and month, and returns
/// the ones this call marked.
const MARK_THRESHOLDS_SCRIPT: &str = r#"
local limit = tonumber(redis.call('HGET', KEYS[1], 'limit') or '0')
local used = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local marked = {}
if limit <= 0 then
  return marked
end
for _, per_mille in ipairs(ARGV) do
  if used * 1000 >= limit * tonumber(per_mille) then
    if redis.call('HSETNX', KEYS[2], per_mille, 'pending') == 1 then
      table.insert(marked, per_mille)
    end
  end
end
return marked
"#;

/// Moves every `pending` threshold to `claimed` and returns them, so that one
/// caller publishes each.
const CLAIM_THRESHOLDS_SCRIPT: &str = r#"
local fields = redis.call('HGETALL', KEYS[1])
local claimed = {}
for index = 1, #fields, 2 do
  if fields[index + 1] == 'pending' then
    redis.call('HSET', KEYS[1], fields[index], 'claimed')
    table.insert(claimed, fields[index])
  end
end
return claimed
"#;

/// Settles a reservation (KEYS 1 to 4: budget, reservations, settlements and
/// reservation times of the reserving month) and adds each charge to the spent
/// of its month's budget (KEYS 5 and on, with amounts ARGV 4 and on). A month
/// without a limit yet gets the default limit ARGV 3, unless it is empty.
/// Once per job id.
const SETTLE_SPLIT_SCRIPT: &str = r#"
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return 0
end
local amount = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if amount ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'reserved', -amount)
end
for index = 5, #KEYS do
  if ARGV[3] ~= '' then
    redis.call('HSETNX', KEYS[index], 'limit', ARGV[3])
  end
  redis.call('HINCRBY', KEYS[index], 'spent', ARGV[index - 1])
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"#;

/// Adds a correction's billed difference (ARGV 2) to a month's spent
/// (KEYS 1), once per correction record id (ARGV 1, remembered in KEYS 2). A
/// month without a limit yet gets the default limit ARGV 3.
const APPLY_CORRECTION_SCRIPT: &str = r#"
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('HSETNX', KEYS[1], 'limit', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
return 1
"#;

/// Creates the job record if it is new. Otherwise returns whether the same
/// message came back (a redelivery) or another message reused the job id.
const CLAIM_JOB_SCRIPT: &str = r#"
local fingerprint = redis.call('HGET', KEYS[1], 'fingerprint')
if not fingerprint then
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'received', 'team', ARGV[2])
  return {'new', 'received'}
end
local state = redis.call('HGET', KEYS[1], 'state') or ''
if fingerprint == ARGV[1] then
  return {'redelivered', state}
end
return {'duplicate', state}
"#;

/// Moves a pending part to `creating` under a lease, so that only one worker
/// creates its provider batch. A deferred part becomes claimable once its
/// `not_before` time passed, and another worker may take over a lapsed lease.
const CLAIM_CREATION_SCRIPT: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
local now = tonumber(redis.call('TIME')[1])
local lease = now + tonumber(ARGV[1])
local not_before = tonumber(redis.call('HGET', KEYS[1], 'not_before') or '0')
if state == 'pending' or (state == 'deferred' and not_before <= now) then
  redis.call('HSET', KEYS[1], 'state', 'creating', 'creating_until', lease, 'intent_at', now)
  return 'fresh'
end
if state == 'creating' then
  local until_ = tonumber(redis.call('HGET', KEYS[1], 'creating_until') or '0')
  if until_ < now then
    redis.call('HSET', KEYS[1], 'creating_until', lease)
    return 'resume'
  end
  return 'busy'
end
return state or ''
"#;

/// Moves a job from one state to another if it is in the expected state, and
/// keeps the set of jobs held for review in step. With a decision id, the id
/// is recorded, and a repeated call with the same id reports `resumed`.
const TRANSITION_SCRIPT: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state') or ''
if state ~= ARGV[1] then
  if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'decision_id') == ARGV[3] then
    return {'resumed', state}
  end
  return {'other', state}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'decision_id', ARGV[3])
end
if ARGV[2] == 'held' then
  redis.call('ZADD', KEYS[2], redis.call('TIME')[1], ARGV[4])
else
  redis.call('ZREM', KEYS[2], ARGV[4])
end
return {'moved', state}
"#;

/// Result of a conditional state change of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Moved,
    /// The decision id given was already recorded: an earlier call moved the
    /// job, which is now in the given state.
    Resumed(String),
    /// The job was in another state, given here, and nothing changed.
    Other(String),
}

/// Result of a worker's attempt to create a job's provider batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreationClaim {
    /// The part was pending and is now this worker's to create.
    Fresh,
    /// An earlier worker's lease lapsed: it may have created the batch already.
    Resume,
    /// Another worker holds the lease.
    Busy,
    /// The part is in another state (the state is given), so there is nothing to create.
    Other(String),
}

/// Budget counters of one team and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetCounters {
    pub limit: Micros,
    pub reserved: Micros,
    pub spent: Micros,
}

impl BudgetCounters {
    pub fn remaining(&self) -> Micros {
        self.limit - self.reserved - self.spent
    }
}

/// Outcome of a reservation attempt, with the counters after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    Reserved(BudgetCounters),
    /// The job id already has a reservation or was settled, so nothing changed.
    AlreadyReserved(BudgetCounters),
    /// The amount does not fit; nothing changed.
    OverBudget(BudgetCounters),
}

/// Result of claiming a job id for a newly consumed job message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    New,
    Redelivered { state: String },
    Duplicate { state: String },
}

#[derive(Clone)]
pub struct Store {
    connection: ConnectionManager,
    prefix: String,
    reserve: redis::Script,
    claim: redis::Script,
    claim_creation: redis::Script,
    mark_thresholds: redis::Script,
    claim_thresholds: redis::Script,
    transition: redis::Script,
    settle_split: redis::Script,
    apply_correction: redis::Script,
}

impl Store {
    /// Connects through a connection manager that reconnects after failures.
    pub async fn connect(config: &RedisConfig) -> Result<Store> {
        let unavailable = |reason: String| Error::RedisUnavailable {
            url: redact_url(&config.url),
            reason,
        };
        let client = redis::Client::open(config.url.as_str())
            .map_err(|error| unavailable(error.to_string()))?;
        let timeout = Duration::from_secs(config.timeout_secs);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(3);
        let connect = client.get_connection_manager_with_config(manager_config);
        let connection = tokio::time::timeout(timeout + Duration::from_secs(1), connect)
            .await
            .map_err(|_| unavailable(format!("no connection within {} s", config.timeout_secs)))?
            .map_err(|error| unavailable(error.to_string()))?;
        Ok(Store {
            connection,
            prefix: config.prefix.clone(),
            reserve: redis::Script::new(RESERVE_SCRIPT),
            claim: redis::Script::new(CLAIM_JOB_SCRIPT),
            claim_creation: redis::Script::new(CLAIM_CREATION_SCRIPT),
            mark_thresholds: redis::Script::new(MARK_THRESHOLDS_SCRIPT),
            claim_thresholds: redis::Script::new(CLAIM_THRESHOLDS_SCRIPT),
            transition: redis::Script::new(TRANSITION_SCRIPT),
            settle_split: redis::Script::new(SETTLE_SPLIT_SCRIPT),
            apply_correction: redis::Script::new(APPLY_CORRECTION_SCRIPT),
        })
    }

    fn budget_keys(&self, team: &str, month: &str) -> [String; 4] {
        let prefix = &self.prefix;
        [
            format!("{prefix}:budget:{{{team}}}:{month}"),
            format!("{prefix}:reservations:{{{team}}}:{month}"),
            format!("{prefix}:settlements:{{{team}}}:{month}"),
            format!("{prefix}:reservation-times:{{{team}}}:{month}"),
        ]
    }

    fn job_key(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.prefix)
    }

    fn history_key(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}:history", self.prefix)
    }

    fn held_key(&self) -> String {
        format!("{}:jobs:held", self.prefix)
    }

    /// Moves a job from state `from` to `to` atomically, recording
    /// `decision_id` when given. Entering `held` adds the job to the held set,
    /// and leaving it removes the job.
    pub async fn transition(
        &self,
        job_id: &str,
        from: &str,
        to: &str,
        decision_id: Option<&str>,
    ) -> Result<Transition> {
        let reply: Vec<String> = self
            .transition
            .key(self.job_key(job_id))
            .key(self.held_key())
            .arg(from)
            .arg(to)
            .arg(decision_id.unwrap_or_default())
            .arg(job_id)
            .invoke_async(&mut self.connection.clone())
            .await?;
        let state = reply.get(1).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("moved") => Transition::Moved,
            Some("resumed") => Transition::Resumed(state),
            _ => Transition::Other(state),
        })
    }

    /// Returns the jobs held for review with the Unix time each was held, oldest first.
    pub async fn held_jobs(&self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .connection
            .clone()
            .zrange_withscores(self.held_key(), 0, -1)
            .await?)
    }

    fn inflight_key(&self) -> String {
        format!("{}:jobs:inflight", self.prefix)
    }

    /// Reserves `amount` for a job unless it would take reserved plus spent past
    /// the limit. `default_limit` becomes the limit when the month has none yet.
    pub async fn reserve(
        &self,
        team: &str,
        month: &str,
        job_id: &str,
        amount: Micros,
        default_limit: Micros,
    ) -> Result<Reservation> {
        let keys = self.budget_keys(team, month);
        let reply: Vec<i64> = self
            .reserve
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .key(&keys[3])
            .arg(job_id)
            .arg(amount.0)
            .arg(default_limit.0)
            .invoke_async(&mut self.connection.clone())
            .await?;
        let counters = BudgetCounters {
            limit: Micros(reply[1]),
            reserved: Micros(reply[2]),
            spent: Micros(reply[3]),
        };
        Ok(match reply[0] {
            1 => Reservation::Reserved(counters),
            2 => Reservation::AlreadyReserved(counters),
            _ => Reservation::OverBudget(counters),
        })
    }

    /// Replaces a job's reservation with its actual cost; returns false when the
    /// job was already settled, in which case nothing changed.
    pub async fn settle(
        &self,
        team: &str,
        month: &str,
        job_id: &str,
        actual: Micros,
    ) -> Result<bool> {
        let charges = [(month.to_owned(), actual)];
        self.settle_split(team, month, job_id, &charges, None).await
    }

    /// Releases the reservation a job made in `month` and adds each charge to
    /// the spent of its own month (`charges` lists month and amount), in one
    /// script. A charged month without counters gets `default_limit` as its
    /// limit. Returns false when the job was already settled.
    pub async fn settle_split(
        &self,
        team: &str,
        month: &str,
        job_id: &str,
        charges: &[(String, Micros)],
        default_limit: Option<Micros>,
    ) -> Result<bool> {
        let keys = self.budget_keys(team, month);
        let total: Micros = charges.iter().map(|(_, amount)| *amount).sum();
        let mut script = self.settle_split.key(&keys[0]);
        script.key(&keys[1]).key(&keys[2]).key(&keys[3]);
        for (charge_month, _) in charges {
            script.key(&self.budget_keys(team, charge_month)[0]);
        }
        let default_limit = default_limit.map(|limit| limit.0.to_string());
        script
            .arg(job_id)
            .arg(total.0)
            .arg(default_limit.unwrap_or_default());
        for (_, amount) in charges {
            script.arg(amount.0);
        }
        let applied: i64 = script.invoke_async(&mut self.connection.clone()).await?;
        Ok(applied == 1)
    }

    /// Adds a correction record's billed difference to the spent of its
    /// accrual month, once per record id. Returns false when it was applied before.
    pub async fn apply_correction(
        &self,
        team: &str,
        month: &str,
        record_id: &str,
        difference: Micros,
        default_limit: Micros,
    ) -> Result<bool> {
        let applied: i64 = self
            .apply_correction
            .key(&self.budget_keys(team, month)[0])
            .key(format!("{}:corrections:{{{team}}}:{month}", self.prefix))
            .arg(record_id)
            .arg(difference.0)
            .arg(default_limit.0)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(applied == 1)
    }

    /// Releases a job's reservation without spending anything.
    pub async fn release(&self, team: &str, month: &str, job_id: &str) -> Result<bool> {
        self.settle(team, month, job_id, Micros::ZERO).await
    }

    pub async fn budget(&self, team: &str, month: &str) -> Result<Option<BudgetCounters>> {
        let keys = self.budget_keys(team, month);
        let fields: HashMap<String, i64> = self.connection.clone().hgetall(&keys[0]).await?;
        let Some(limit) = fields.get("limit") else {
            return Ok(None);
        };
        Ok(Some(BudgetCounters {
            limit: Micros(*limit),
            reserved: Micros(fields.get("reserved").copied().unwrap_or(0)),
            spent: Micros(fields.get("spent").copied().unwrap_or(0)),
        }))
    }

    fn alerts_key(&self, team: &str, month: &str) -> String {
        format!("{}:budget-alerts:{{{team}}}:{month}", self.prefix)
    }

    /// Marks the alert thresholds (per mille of the limit) that the month's
    /// reserved plus spent reached, then claims every pending one for the caller
    /// to publish. Each threshold is claimed once per team and month, however
    /// many schedulers race.
    pub async fn claim_threshold_alerts(
        &self,
        team: &str,
        month: &str,
        per_mille: &[u32],
    ) -> Result<Vec<u32>> {
        let keys = self.budget_keys(team, month);
        let alerts = self.alerts_key(team, month);
        let mut mark = self.mark_thresholds.key(&keys[0]);
        mark.key(&alerts);
        for threshold in per_mille {
            mark.arg(threshold);
        }
        let _: Vec<String> = mark.invoke_async(&mut self.connection.clone()).await?;
        let claimed: Vec<String> = self
            .claim_thresholds
            .key(&alerts)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(claimed
            .iter()
            .filter_map(|threshold| threshold.parse().ok())
            .collect())
    }

    /// Records a claimed threshold as published, or puts it back as pending
    /// when its event could not be published.
    pub async fn finish_threshold_alert(
        &self,
        team: &str,
        month: &str,
        per_mille: u32,
        published: bool,
    ) -> Result<()> {
        let state = if published { "published" } else { "pending" };
        let _: () = self
            .connection
            .clone()
            .hset(self.alerts_key(team, month), per_mille, state)
            .await?;
        Ok(())
    }

    /// Replaces a team's counters, reservations, settlements and published alert
    /// marks for a month with rebuilt ones, in one transaction.
    pub async fn restore_budget(
        &self,
        team: &str,
        month: &str,
        budget: &crate::rebuild::RebuiltBudget,
    ) -> Result<()> {
        let keys = self.budget_keys(team, month);
        let alerts = self.alerts_key(team, month);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&keys[0])
            .del(&keys[1])
            .del(&keys[2])
            .del(&keys[3])
            .del(&alerts);
        pipe.hset_multiple(
            &keys[0],
            &[
                ("limit", budget.counters.limit.0),
                ("reserved", budget.counters.reserved.0),
                ("spent", budget.counters.spent.0),
            ],
        );
        let now = chrono::Utc::now().timestamp();
        for (job_id, amount) in &budget.reservations {
            pipe.hset(&keys[1], job_id, amount.0);
            pipe.hset(&keys[3], job_id, now);
        }
        for (job_id, amount) in &budget.settlements {
            pipe.hset(&keys[2], job_id, amount.0);
        }
        for per_mille in &budget.alerts_published {
            pipe.hset(&alerts, per_mille, "published");
        }
        let _: () = pipe.query_async(&mut self.connection.clone()).await?;
        Ok(())
    }

    /// Returns reservations made at least `min_age_secs` ago, as
    /// (job id, amount, Unix time reserved); one without a recorded time counts
    /// as made at time 0.
    pub async fn old_reservations(
        &self,
        team: &str,
        month: &str,
        min_age_secs: i64,
    ) -> Result<Vec<(String, Micros, i64)>> {
        let keys = self.budget_keys(team, month);
        let mut connection = self.connection.clone();
        let amounts: HashMap<String, i64> = connection.hgetall(&keys[1]).await?;
        let times: HashMap<String, i64> = connection.hgetall(&keys[3]).await?;
        let now = chrono::Utc::now().timestamp();
        let mut old: Vec<(String, Micros, i64)> = amounts
            .into_iter()
            .map(|(job_id, amount)| {
                let at = times.get(&job_id).copied().unwrap_or(0);
                (job_id, Micros(amount), at)
            })
            .filter(|(_, _, at)| now - at >= min_age_secs)
            .collect();
        old.sort();
        Ok(old)
    }

    /// Creates a month's counters with `default_limit` unless they exist.
    pub async fn init_budget(&self, team: &str, month: &str, default_limit: Micros) -> Result<()> {
        let keys = self.budget_keys(team, month);
        let _: bool = self
            .connection
            .clone()
            .hset_nx(&keys[0], "limit", default_limit.0)
            .await?;
        Ok(())
    }

    /// Sets a team's limit for a month and returns the previous one, if any.
    /// Reservations already made stay; later ones check the new limit.
    pub async fn set_limit(
        &self,
        team: &str,
        month: &str,
        limit: Micros,
    ) -> Result<Option<Micros>> {
        let keys = self.budget_keys(team, month);
        let mut connection = self.connection.clone();
        let (previous, _): (Option<i64>, ()) = redis::pipe()
            .atomic()
            .hget(&keys[0], "limit")
            .hset(&keys[0], "limit", limit.0)
            .query_async(&mut connection)
            .await?;
        Ok(previous.map(Micros))
    }

    fn budget_history_key(&self, team: &str, month: &str) -> String {
        format!("{}:budget-history:{{{team}}}:{month}", self.prefix)
    }

    /// Appends a budget event (JSON) to the team's history for the month.
    pub async fn append_budget_history(
        &self,
        team: &str,
        month: &str,
        event_json: &str,
    ) -> Result<()> {
        let _: () = self
            .connection
            .clone()
            .rpush(self.budget_history_key(team, month), event_json)
            .await?;
        Ok(())
    }

    pub async fn budget_history(&self, team: &str, month: &str) -> Result<Vec<String>> {
        Ok(self
            .connection
            .clone()
            .lrange(self.budget_history_key(team, month), 0, -1)
            .await?)
    }

    /// Returns the reserved amount per job id for a team and month.
    pub async fn reservations(&self, team: &str, month: &str) -> Result<HashMap<String, i64>> {
        let keys = self.budget_keys(team, month);
        Ok(self.connection.clone().hgetall(&keys[1]).await?)
    }

    pub async fn claim_job(&self, job_id: &str, fingerprint: &str, team: &str) -> Result<Claim> {
        let reply: Vec<String> = self
            .claim
            .key(self.job_key(job_id))
            .arg(fingerprint)
            .arg(team)
            .invoke_async(&mut self.connection.clone())
            .await?;
        let state = reply.get(1).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("new") => Claim::New,
            Some("redelivered") => Claim::Redelivered { state },
            _ => Claim::Duplicate { state },
        })
    }

    /// Claims the creation of a part's provider batch for `lease_secs` seconds.
    pub async fn claim_creation(
        &self,
        job_id: &str,
        part: u32,
        lease_secs: u64,
    ) -> Result<CreationClaim> {
        let reply: String = self
            .claim_creation
            .key(self.part_key(job_id, part))
            .arg(lease_secs)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(match reply.as_str() {
            "fresh" => CreationClaim::Fresh,
            "resume" => CreationClaim::Resume,
            "busy" => CreationClaim::Busy,
            _ => CreationClaim::Other(reply),
        })
    }

    fn part_key(&self, job_id: &str, part: u32) -> String {
        format!("{}:job:{job_id}:part:{part}", self.prefix)
    }

    fn known_batches_key(&self) -> String {
        format!("{}:batches", self.prefix)
    }

    /// Creates a part record in state `pending` unless it exists already.
    pub async fn init_part(
        &self,
        job_id: &str,
        part: u32,
        fields: &[(&str, String)],
    ) -> Result<()> {
        let key = self.part_key(job_id, part);
        let mut connection = self.connection.clone();
        let created: bool = connection.hset_nx(&key, "state", "pending").await?;
        if created {
            let _: () = connection.hset_multiple(&key, fields).await?;
        }
        Ok(())
    }

    pub async fn set_part_fields(
        &self,
        job_id: &str,
        part: u32,
        fields: &[(&str, String)],
    ) -> Result<()> {
        let _: () = self
            .connection
            .clone()
            .hset_multiple(self.part_key(job_id, part), fields)
            .await?;
        Ok(())
    }

    pub async fn part(&self, job_id: &str, part: u32) -> Result<HashMap<String, String>> {
        Ok(self
            .connection
            .clone()
            .hgetall(self.part_key(job_id, part))
            .await?)
    }

    /// Returns the records of all of a job's parts, by index.
    pub async fn parts(&self, job_id: &str) -> Result<Vec<HashMap<String, String>>> {
        let job = self.job(job_id).await?;
        let count: u32 = job
            .get("parts")
            .and_then(|parts| parts.parse().ok())
            .unwrap_or(0);
        let mut parts = Vec::with_capacity(count as usize);
        for index in 0..count {
            parts.push(self.part(job_id, index).await?);
        }
        Ok(parts)
    }

    /// Remembers a provider batch id as recorded for some part.
    pub async fn add_known_batch(&self, batch_id: &str) -> Result<()> {
        let _: () = self
            .connection
            .clone()
            .sadd(self.known_batches_key(), batch_id)
            .await?;
        Ok(())
    }

    pub async fn is_known_batch(&self, batch_id: &str) -> Result<bool> {
        Ok(self
            .connection
            .clone()
            .sismember(self.known_batches_key(), batch_id)
            .await?)
    }

    pub async fn set_job_fields(&self, job_id: &str, fields: &[(&str, String)]) -> Result<()> {
        let _: () = self
            .connection
            .clone()
            .hset_multiple(self.job_key(job_id), fields)
            .await?;
        Ok(())
    }

    pub async fn job(&self, job_id: &str) -> Result<HashMap<String, String>> {
        Ok(self
            .connection
            .clone()
            .hgetall(self.job_key(job_id))
            .await?)
    }

    pub async fn append_history(&self, job_id: &str, event_json: &str) -> Result<()> {
        let _: () = self
            .connection
            .clone()
            .rpush(self.history_key(job_id), event_json)
            .await?;
        Ok(())
    }

    pub async fn history(&self, job_id: &str) -> Result<Vec<String>> {
        Ok(self
            .connection
            .clone()
            .lrange(self.history_key(job_id), 0, -1)
            .await?)
    }

    pub async fn mark_inflight(&self, job_id: &str, inflight: bool) -> Result<()> {
        let mut connection = self.connection.clone();
        let _: () = if inflight {
            connection.sadd(self.inflight_key(), job_id).await?
        } else {
            connection.srem(self.inflight_key(), job_id).await?
        };
        Ok(())
    }

    pub async fn inflight_jobs(&self) -> Result<Vec<String>> {
        Ok(self
            .connection
            .clone()
            .smembers(self.inflight_key())
            .await?)
    }

    /// Deletes every key under this store's prefix; used by tests to clean up.
    pub async fn delete_prefix(&self) -> Result<u64> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut connection)
                .await?;
            if !keys.is_empty() {
                let removed: u64 = connection.del(&keys).await?;
                deleted += removed;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
