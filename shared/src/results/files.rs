//! Accounting of local result files on several threads, for `batchgate cost`.
//!
//! One thread reads the files in blocks that end at a line break and hands
//! each block to every accounting thread. Each thread counts the lines whose
//! `custom_id` hashes to it, so a repeated `custom_id` always meets the same
//! duplicate set, and files are counted in order as the worker counts them.
//! Memory is the blocks in flight plus 16 bytes (and table overhead) per
//! distinct request, whatever the length of the lines.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use memchr::memmem;

use super::{ResultFormat, ResultTotals};

/// Bytes read at a time; a block grows past this only to finish a line.
const BLOCK_BYTES: usize = 1 << 20;

/// Blocks queued per accounting thread before the reader waits.
const QUEUE_DEPTH: usize = 2;

/// A run of whole lines from one file.
struct Block {
    file: usize,
    /// One-based number of the block's first line in its file.
    first_line: u64,
    bytes: Vec<u8>,
}

/// A line that could not be counted, or a file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {problem}", .line.map(|line| format!(" line {line}")).unwrap_or_default())]
pub struct FileError {
    pub path: PathBuf,
    pub line: Option<u64>,
    pub problem: String,
}

/// Counts the result lines of `paths`, in order, as one provider batch's
/// files, on `threads` accounting threads (at least one).
pub fn account_files(
    paths: &[PathBuf],
    format: ResultFormat,
    long_context_above: Option<u64>,
    threads: usize,
) -> Result<ResultTotals, FileError> {
    let threads = threads.max(1);
    // Sizing the duplicate sets up front avoids the peak of a rehash, when the
    // old and the new table are both allocated.
    let expected_per_thread = expected_lines(paths) / threads + 1024;
    let mut senders: Vec<SyncSender<Arc<Block>>> = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    for partition in 0..threads {
        let (sender, receiver) = sync_channel::<Arc<Block>>(QUEUE_DEPTH);
        senders.push(sender);
        let mut totals = ResultTotals::new(format).with_long_context(long_context_above);
        totals.reserve(expected_per_thread);
        handles.push(std::thread::spawn(move || {
            count_partition(receiver, totals, partition, threads)
        }));
    }

    let read = read_blocks(paths, &senders);
    drop(senders);
    let mut total = ResultTotals::new(format).with_long_context(long_context_above);
    let mut first_error: Option<(usize, u64, String)> = None;
    for handle in handles {
        let (totals, error) = handle.join().map_err(|_| FileError {
            path: PathBuf::new(),
            line: None,
            problem: "an accounting thread panicked".to_owned(),
        })?;
        if let Some(error) = error
            && first_error
                .as_ref()
                .is_none_or(|first| (error.0, error.1) < (first.0, first.1))
        {
            first_error = Some(error);
        }
        // Each thread owns different custom_ids, so the counts simply add up.
        total.add_counts(&totals);
    }
    read?;
    if let Some((file, line, problem)) = first_error {
        return Err(FileError {
            path: paths[file].clone(),
            line: Some(line),
            problem,
        });
    }
    Ok(total)
}

/// Estimates the number of lines of the files from their sizes and the line
/// length of their first 64 KiB; compressed files count as none.
fn expected_lines(paths: &[PathBuf]) -> usize {
    let mut lines = 0;
    for path in paths {
        let Ok(mut file) = std::fs::File::open(path) else {
            continue;
        };
        let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
        let mut head = vec![0u8; 1 << 16];
        let Ok(read) = read_full(&mut file, &mut head) else {
            continue;
        };
        let head = &head[..read];
        if head.starts_with(&[0x1f, 0x8b]) {
            continue;
        }
        let breaks = memchr::memchr_iter(b'\n', head).count().max(1) as u64;
        lines += (size / (read as u64 / breaks).max(1)) as usize;
    }
    lines
}

/// Reads every file in blocks of whole lines and sends each block to every thread.
fn read_blocks(paths: &[PathBuf], senders: &[SyncSender<Arc<Block>>]) -> Result<(), FileError> {
    for (file, path) in paths.iter().enumerate() {
        let fail = |error: std::io::Error| FileError {
            path: path.clone(),
            line: None,
            problem: format!("cannot read: {error}"),
        };
        let mut reader = open(path).map_err(fail)?;
        let mut carry: Vec<u8> = Vec::new();
        let mut next_line = 1u64;
        loop {
            let mut bytes = std::mem::take(&mut carry);
            let start = bytes.len();
            bytes.resize(start + BLOCK_BYTES, 0);
            let filled = read_full(&mut reader, &mut bytes[start..]).map_err(fail)?;
            bytes.truncate(start + filled);
            let at_end = filled == 0;
            if !at_end {
                // Keep the unfinished last line for the next block.
                match memchr::memrchr(b'\n', &bytes) {
                    Some(last) => carry = bytes.split_off(last + 1),
                    None => {
                        carry = bytes;
                        continue;
                    }
                }
            }
            if !bytes.is_empty() {
                let lines = memchr::memchr_iter(b'\n', &bytes).count() as u64
                    + u64::from(!bytes.ends_with(b"\n"));
                let block = Arc::new(Block {
                    file,
                    first_line: next_line,
                    bytes,
                });
                next_line += lines;
                for sender in senders {
                    // A closed channel means the thread stopped; its result reports why.
                    let _ = sender.send(Arc::clone(&block));
                }
            }
            if at_end {
                break;
            }
        }
    }
    Ok(())
}

/// Opens a result file, decompressing it when it starts with the gzip magic bytes.
pub fn open(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    let mut file = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let peeked = read_full(&mut file, &mut magic)?;
    let head = std::io::Cursor::new(magic[..peeked].to_vec());
    let chained = head.chain(file);
    Ok(if peeked == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else {
        Box::new(chained)
    })
}

fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Counts the lines of each block that belong to `partition`, and returns the
/// totals with the first problem found (file index, line number, problem).
fn count_partition(
    receiver: Receiver<Arc<Block>>,
    mut totals: ResultTotals,
    partition: usize,
    partitions: usize,
) -> (ResultTotals, Option<(usize, u64, String)>) {
    let finder = memmem::Finder::new(b"\"custom_id\"");
    let mut first_error = None;
    for block in receiver {
        let bytes = &block.bytes;
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', bytes).chain(std::iter::once(bytes.len()));
        for (number, end) in (block.first_line..).zip(ends) {
            let line = &bytes[start..end];
            let mine = start < end && partition_of(&finder, line, partitions) == partition;
            if mine
                && let Err(problem) = totals.add_line(line)
                && first_error.is_none()
            {
                first_error = Some((block.file, number, problem));
            }
            start = end + 1;
            if start >= bytes.len() {
                break;
            }
        }
    }
    (totals, first_error)
}

/// Picks the thread of a line from the raw bytes of its `custom_id` value, so
/// that lines with the same `custom_id` always go to the same thread. A line
/// without one goes to thread 0, which reports it.
fn partition_of(finder: &memmem::Finder, line: &[u8], partitions: usize) -> usize {
    if partitions == 1 {
        return 0;
    }
    let Some(key) = finder.find(line) else {
        return 0;
    };
    let rest = &line[key + b"\"custom_id\"".len()..];
    let Some(open) = rest.iter().position(|byte| *byte == b'"') else {
        return 0;
    };
    let value = &rest[open + 1..];
    let close = value
        .iter()
        .position(|byte| *byte == b'"')
        .unwrap_or(value.len());
    (xxhash_rust::xxh3::xxh3_64(&value[..close]) % partitions as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(id: &str, status: u16, prompt: u64) -> String {
        format!(
            "{{\"id\":\"x\",\"custom_id\":\"{id}\",\"response\":{{\"status_code\":{status},\"body\":{{\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":1}}}}}},\"error\":null}}\n"
        )
    }

    #[test]
    fn threads_count_what_one_thread_counts() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("output.jsonl");
        let errors = dir.path().join("errors.jsonl");
        let mut text = String::new();
        for index in 0..5000 {
            text.push_str(&line(
                &format!("r{index}"),
                if index % 11 == 0 { 400 } else { 200 },
                index,
            ));
        }
        // A repeated id, and the last line without its line break.
        text.push_str(&line("r7", 200, 99));
        text.push_str(line("last", 200, 5).trim_end());
        std::fs::write(&output, &text).unwrap();
        // The error file repeats an id of the output file.
        std::fs::File::create(&errors)
            .unwrap()
            .write_all(line("r8", 500, 0).as_bytes())
            .unwrap();
        let paths = vec![output, errors];
        let single = account_files(&paths, ResultFormat::OpenAi, Some(4000), 1).unwrap();
        let three = account_files(&paths, ResultFormat::OpenAi, Some(4000), 3).unwrap();
        assert_eq!(single.requests, three.requests);
        assert_eq!(single.tokens_succeeded, three.tokens_succeeded);
        assert_eq!(single.long_context_succeeded, three.long_context_succeeded);
        assert_eq!(single.requests.total, 5001);
        assert_eq!(single.duplicate_lines, 2);
        assert_eq!(three.duplicate_lines, 2);
    }

    #[test]
    fn problems_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.jsonl");
        let text = format!(
            "{}{}not json\n{}",
            line("a", 200, 1),
            line("b", 200, 1),
            line("c", 200, 1)
        );
        std::fs::write(&path, text).unwrap();
        let error =
            account_files(std::slice::from_ref(&path), ResultFormat::OpenAi, None, 2).unwrap_err();
        assert_eq!(error.line, Some(3));
        assert_eq!(error.path, path);
        assert!(error.problem.contains("malformed"), "{error}");
    }
}
