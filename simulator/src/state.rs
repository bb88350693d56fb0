//! In-memory store of files and batches, shared by all handlers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use rand::Rng;
use serde_json::{Value, json};

use crate::anthropic::batch::MessageBatch;
use crate::batch::{Batch, BatchObject, BatchStatus, Snapshot};
use crate::config::SimulatorConfig;
use crate::error::ApiError;
use crate::faults::{CallFaultBudget, FaultProfile};
use crate::plan::Plan;
use crate::results::{GeneratedFiles, GenerationSettings, generate_files};

/// A stored file: an upload, or a batch's output or error file.
#[derive(Debug, Clone)]
pub(crate) struct StoredFile {
    pub(crate) id: String,
    pub(crate) filename: String,
    /// `batch` for uploads, `batch_output` for generated files.
    pub(crate) purpose: &'static str,
    pub(crate) created_at: u64,
    pub(crate) content: Bytes,
    /// Number of lines after which downloads stop, from the
    /// `truncate_results_at_line` fault. The stored content stays whole.
    pub(crate) truncate_at_line: Option<u64>,
}

impl StoredFile {
    /// Builds OpenAI's file object.
    pub(crate) fn to_object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.content.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
        })
    }
}

/// A batch of either provider as stored, with the clock reading that its
/// elapsed time counts from.
#[derive(Debug)]
pub(crate) struct StoredBatch<B = Batch> {
    pub(crate) batch: B,
    pub(crate) created: Instant,
    /// Rate limit and server error responses still due to calls that name the
    /// batch, from a per-batch fault profile.
    pub(crate) call_faults: CallFaultBudget,
}

impl<B> StoredBatch<B> {
    pub(crate) fn elapsed_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.created).as_millis()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) config: SimulatorConfig,
    /// Base URL of the server, the prefix of Anthropic's `results_url`.
    pub(crate) base_url: String,
    pub(crate) files: HashMap<String, StoredFile>,
    /// OpenAI batches in creation order.
    pub(crate) batches: Vec<StoredBatch>,
    pub(crate) batch_positions: HashMap<String, usize>,
    /// Position of the OpenAI batch that each generated result file belongs to.
    pub(crate) result_file_batches: HashMap<String, usize>,
    /// Anthropic message batches in creation order.
    pub(crate) message_batches: Vec<StoredBatch<MessageBatch>>,
    pub(crate) message_batch_positions: HashMap<String, usize>,
    /// Number of files uploaded through `POST /v1/files`, deleted ones included.
    pub(crate) files_uploaded: usize,
    /// Last OpenAI batch sequence number handed out.
    pub(crate) last_sequence: u64,
    /// Last Anthropic message batch sequence number handed out.
    pub(crate) last_message_batch_sequence: u64,
    /// Fault profiles queued for the next batches created, oldest first.
    pub(crate) next_batch_faults: VecDeque<FaultProfile>,
    /// Rate limit and server error responses still due to any API call, from
    /// the run-level fault profile.
    pub(crate) run_call_faults: CallFaultBudget,
    /// Number of 429 responses injected so far.
    pub(crate) rate_limited_responses: u64,
    /// Number of server error responses injected so far.
    pub(crate) server_error_responses: u64,
}

impl Store {
    /// Replaces the run-level fault profile and restarts its call counters.
    pub(crate) fn set_run_faults(&mut self, faults: FaultProfile) {
        self.run_call_faults = faults.call_budget();
        self.config.faults = faults;
    }

    /// Takes the fault profile of a batch being created: the oldest queued
    /// per-batch profile with its call faults, or else the run-level profile,
    /// whose call faults stay at run level.
    pub(crate) fn take_batch_faults(&mut self) -> (FaultProfile, CallFaultBudget) {
        match self.next_batch_faults.pop_front() {
            Some(profile) => {
                let budget = profile.call_budget();
                (profile, budget)
            }
            None => (self.config.faults.clone(), CallFaultBudget::default()),
        }
    }

    /// Computes a batch's status at `now`.
    pub(crate) fn snapshot(&self, position: usize, now: Instant) -> Snapshot {
        let stored = &self.batches[position];
        stored.batch.snapshot(stored.elapsed_ms(now))
    }

    /// Returns the work to generate a batch's result files, or `None` if the batch
    /// has not finished or already has its files.
    fn pending_generation(&self, position: usize, snapshot: &Snapshot) -> Option<GenerationJob> {
        let batch = &self.batches[position].batch;
        let finished = matches!(
            snapshot.status,
            BatchStatus::Completed | BatchStatus::Cancelled | BatchStatus::Expired
        );
        if !finished || batch.files_generated {
            return None;
        }
        Some(GenerationJob {
            plan: batch.validation.as_ref().ok().map(Arc::clone),
            done: snapshot.done,
            endpoint: batch.endpoint.clone(),
            seed: batch.seed,
            sequence: batch.sequence,
            cached_ratio: batch.cached_ratio,
            expired: snapshot.status == BatchStatus::Expired,
            faults: batch.faults.clone(),
        })
    }

    /// Stores generated result files and links them to the batch, unless another
    /// request has already done so.
    fn attach_files(&mut self, position: usize, snapshot: &Snapshot, generated: GeneratedFiles) {
        let batch = &mut self.batches[position].batch;
        if batch.files_generated {
            return;
        }
        batch.files_generated = true;
        let created_at = unix_secs_now();
        let mut new_files = Vec::new();
        if !generated.output.is_empty() {
            let mut file = generated_file(&batch.id, "output", created_at, generated.output);
            file.truncate_at_line = batch.faults.truncate_results_at_line;
            batch.output_file_id = Some(file.id.clone());
            new_files.push(file);
        }
        if !generated.errors.is_empty() {
            let file = generated_file(&batch.id, "error", created_at, generated.errors);
            batch.error_file_id = Some(file.id.clone());
            new_files.push(file);
        }
        tracing::info!(
            batch_id = %batch.id,
            status = snapshot.status.as_str(),
            completed = snapshot.completed,
            failed = snapshot.failed,
            expired = snapshot.expired,
            output_file_id = ?batch.output_file_id,
            error_file_id = ?batch.error_file_id,
            "batch finished"
        );
        for file in new_files {
            self.result_file_batches.insert(file.id.clone(), position);
            self.files.insert(file.id.clone(), file);
        }
    }
}

/// Inputs of one result file generation, copied out of the store so that the
/// work runs without the lock.
struct GenerationJob {
    /// `None` for a batch that failed validation, which gets no result files.
    plan: Option<Arc<Plan>>,
    done: usize,
    endpoint: String,
    seed: u64,
    sequence: u64,
    cached_ratio: f64,
    expired: bool,
    faults: FaultProfile,
}

impl GenerationJob {
    fn run(&self) -> GeneratedFiles {
        let Some(plan) = &self.plan else {
            return GeneratedFiles::default();
        };
        generate_files(
            plan,
            self.done,
            GenerationSettings {
                endpoint: &self.endpoint,
                seed: self.seed,
                sequence: self.sequence,
                cached_ratio: self.cached_ratio,
                expired: self.expired,
                faults: &self.faults,
            },
        )
    }
}

fn generated_file(batch_id: &str, kind: &str, created_at: u64, content: Vec<u8>) -> StoredFile {
    StoredFile {
        id: new_file_id(),
        filename: format!("{batch_id}_{kind}.jsonl"),
        purpose: "batch_output",
        created_at,
        content: Bytes::from(content),
        truncate_at_line: None,
    }
}

/// The store behind a mutex. Handlers hold the lock only for in-memory work.
#[derive(Debug, Clone)]
pub(crate) struct AppState {
    store: Arc<Mutex<Store>>,
}

impl AppState {
    pub(crate) fn new(config: SimulatorConfig, base_url: String) -> AppState {
        let run_call_faults = config.faults.call_budget();
        let store = Store {
            config,
            base_url,
            files: HashMap::new(),
            batches: Vec::new(),
            batch_positions: HashMap::new(),
            result_file_batches: HashMap::new(),
            message_batches: Vec::new(),
            message_batch_positions: HashMap::new(),
            files_uploaded: 0,
            last_sequence: 0,
            last_message_batch_sequence: 0,
            next_batch_faults: VecDeque::new(),
            run_call_faults,
            rate_limited_responses: 0,
            server_error_responses: 0,
        };
        AppState {
            store: Arc::new(Mutex::new(store)),
        }
    }

    /// Builds the object of the batch at `position` in creation order.
    ///
    /// A batch read for the first time in `completed`, `cancelled` or `expired`
    /// gets its result files first. They are generated on a blocking thread without the
    /// lock, so a large batch does not stall other requests. Two requests that
    /// race here generate the same bytes, and the first to finish stores them.
    pub(crate) async fn batch_object(&self, position: usize) -> Result<BatchObject, ApiError> {
        let job = {
            let store = self.lock();
            let snapshot = store.snapshot(position, Instant::now());
            match store.pending_generation(position, &snapshot) {
                None => return Ok(store.batches[position].batch.to_object(&snapshot)),
                Some(job) => job,
            }
        };

        let generated = tokio::task::spawn_blocking(move || job.run())
            .await
            .map_err(|error| {
                tracing::error!(%error, position, "result file generation task failed");
                ApiError::internal("The simulator failed while generating result files.")
            })?;

        let mut store = self.lock();
        // A finished batch stays finished, so this snapshot has the same status
        // and counts as the one that the job was made from.
        let snapshot = store.snapshot(position, Instant::now());
        store.attach_files(position, &snapshot, generated);
        Ok(store.batches[position].batch.to_object(&snapshot))
    }

    /// Locks the store. A poisoned lock is recovered rather than propagated, so
    /// one panicking handler does not fail every later request.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) fn unix_millis_now() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn unix_secs_now() -> u64 {
    unix_millis_now() / 1000
}

/// Creates a random file id. Ids come from the thread RNG, not the seed, so they
/// differ between runs while result contents stay the same.
pub(crate) fn new_file_id() -> String {
    format!("file-{:024x}", rand::rng().random::<u128>() >> 32)
}

pub(crate) fn new_batch_id() -> String {
    format!("batch_{:032x}", rand::rng().random::<u128>())
}

pub(crate) fn new_message_batch_id() -> String {
    format!("msgbatch_{:032x}", rand::rng().random::<u128>())
}
