//! Writing one part of a job's input in the provider's create format.

use std::io::{BufRead, Write};
use std::path::Path;

use sha2::Sha256;

use crate::input::{PartBounds, open_input};

/// Copies the part's lines of `input` to `out`: JSONL for OpenAI, the create
/// body `{"requests":[...]}` for Anthropic. Returns the requests written,
/// which is less than planned only if the input file shrank since it was checked.
pub fn write_part(
    input: &Path,
    provider: &str,
    part: &PartBounds,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let mut hasher = Sha256::default();
    let mut reader = open_input(input, &mut hasher)?;
    let anthropic = provider == "anthropic";
    if anthropic {
        out.write_all(br#"{"requests":["#)?;
    }
    let mut line = Vec::new();
    let mut index = 0u64;
    let mut written = 0u64;
    while written < part.requests {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if index < part.first_line {
            index += 1;
            continue;
        }
        index += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if anthropic {
            if written > 0 {
                out.write_all(b",")?;
            }
            out.write_all(text)?;
        } else {
            out.write_all(text)?;
            out.write_all(b"\n")?;
        }
        written += 1;
    }
    if anthropic {
        out.write_all(b"]}")?;
    }
    out.flush()?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        file
    }

    #[test]
    fn openai_part_is_a_line_range() {
        let file = input(&["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        let mut out = Vec::new();
        let part = PartBounds {
            first_line: 1,
            requests: 2,
            bytes: 0,
        };
        assert_eq!(
            write_part(file.path(), "openai", &part, &mut out).unwrap(),
            2
        );
        assert_eq!(String::from_utf8(out).unwrap(), "{\"b\":2}\n{\"c\":3}\n");
    }

    #[test]
    fn anthropic_part_is_a_create_body() {
        let file = input(&["{\"a\":1}", "{\"b\":2}"]);
        let mut out = Vec::new();
        let part = PartBounds {
            first_line: 0,
            requests: 2,
            bytes: 0,
        };
        write_part(file.path(), "anthropic", &part, &mut out).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(body["requests"].as_array().unwrap().len(), 2);
    }
}
