//! Damage to JSONL result files that fault profiles ask for: a duplicated line,
//! a malformed line and a download that stops early.

use axum::body::Bytes;
use rand::Rng;
use rand::rngs::StdRng;

/// One result line without its newline, and whether it reports a succeeded request.
#[derive(Debug, Clone)]
pub(crate) struct ResultLine {
    pub(crate) bytes: Vec<u8>,
    pub(crate) succeeded: bool,
}

/// Applies the content faults to result lines in served order and joins them
/// into JSONL, each line ending with a newline.
///
/// The duplicate is inserted first, so `malformed_line_at` counts it.
pub(crate) fn damage_and_join(
    mut lines: Vec<ResultLine>,
    duplicate_custom_id: bool,
    malformed_line_at: Option<u64>,
    rng: &mut StdRng,
) -> Vec<u8> {
    if duplicate_custom_id {
        duplicate_one_succeeded(&mut lines, rng);
    }
    if let Some(line_number) = malformed_line_at {
        let index = usize::try_from(line_number.saturating_sub(1)).unwrap_or(usize::MAX);
        if let Some(line) = lines.get_mut(index) {
            let half = first_half(&line.bytes).len();
            line.bytes.truncate(half);
        }
    }
    let mut content = Vec::with_capacity(lines.iter().map(|line| line.bytes.len() + 1).sum());
    for line in lines {
        content.extend_from_slice(&line.bytes);
        content.push(b'\n');
    }
    content
}

/// Inserts a copy of one succeeded line at a random position. Does nothing when
/// no line succeeded.
fn duplicate_one_succeeded(lines: &mut Vec<ResultLine>, rng: &mut StdRng) {
    let succeeded: Vec<usize> = (0..lines.len())
        .filter(|&index| lines[index].succeeded)
        .collect();
    if succeeded.is_empty() {
        return;
    }
    let original = succeeded[rng.random_range(0..succeeded.len())];
    let copy = lines[original].clone();
    let position = rng.random_range(0..=lines.len());
    lines.insert(position, copy);
}

/// Returns the content cut after `line_count` lines, the last of which keeps
/// only its first half and no newline. Content with fewer lines is returned whole.
pub(crate) fn truncate_after_lines(content: &Bytes, line_count: u64) -> Bytes {
    let mut line_start = 0;
    for _ in 1..line_count {
        match content[line_start..].iter().position(|&byte| byte == b'\n') {
            Some(offset) => line_start += offset + 1,
            None => return content.clone(),
        }
    }
    let Some(line_length) = content[line_start..].iter().position(|&byte| byte == b'\n') else {
        return content.clone();
    };
    let last_line = &content[line_start..line_start + line_length];
    content.slice(0..line_start + first_half(last_line).len())
}

/// Returns the first half of a line, shortened to a UTF-8 character boundary.
///
/// A JSON object closes only with its last byte, so any shorter prefix of an
/// object line is invalid JSON.
fn first_half(line: &[u8]) -> &[u8] {
    let mut end = line.len() / 2;
    // UTF-8 continuation bytes are 0b10xxxxxx.
    while end > 0 && (line[end] & 0b1100_0000) == 0b1000_0000 {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn lines(texts: &[&str]) -> Vec<ResultLine> {
        texts
            .iter()
            .map(|text| ResultLine {
                bytes: text.as_bytes().to_vec(),
                succeeded: text.contains("ok"),
            })
            .collect()
    }

    #[test]
    fn malformed_line_keeps_first_half() {
        let mut rng = StdRng::seed_from_u64(0);
        let joined = damage_and_join(
            lines(&[r#"{"a":1}"#, r#"{"b":22}"#]),
            false,
            Some(2),
            &mut rng,
        );
        assert_eq!(joined, b"{\"a\":1}\n{\"b\"\n");
    }

    #[test]
    fn malformed_line_past_end_changes_nothing() {
        let mut rng = StdRng::seed_from_u64(0);
        let joined = damage_and_join(lines(&["{}"]), false, Some(5), &mut rng);
        assert_eq!(joined, b"{}\n");
    }

    #[test]
    fn duplicate_copies_a_succeeded_line() {
        let mut rng = StdRng::seed_from_u64(3);
        let joined = damage_and_join(lines(&["ok-1", "bad-2", "bad-3"]), true, None, &mut rng);
        let text = String::from_utf8(joined).unwrap();
        assert_eq!(text.lines().filter(|line| *line == "ok-1").count(), 2);
        assert_eq!(text.lines().count(), 4);
    }

    #[test]
    fn duplicate_without_succeeded_lines_changes_nothing() {
        let mut rng = StdRng::seed_from_u64(3);
        let joined = damage_and_join(lines(&["bad-1"]), true, None, &mut rng);
        assert_eq!(joined, b"bad-1\n");
    }

    #[test]
    fn truncation_cuts_last_kept_line() {
        let content = Bytes::from_static(b"aaaa\nbbbbbb\ncc\n");
        assert_eq!(&truncate_after_lines(&content, 1)[..], b"aa");
        assert_eq!(&truncate_after_lines(&content, 2)[..], b"aaaa\nbbb");
        assert_eq!(&truncate_after_lines(&content, 4)[..], &content[..]);
    }

    #[test]
    fn first_half_respects_character_boundaries() {
        let line = "ééé".as_bytes();
        assert!(std::str::from_utf8(first_half(line)).is_ok());
    }
}
