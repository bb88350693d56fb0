//! Prompt token counting with OpenAI's BPE encodings (`tiktoken-rs`).
//!
//! The scheduler uses it for the pre-flight estimate and the simulator for the
//! `prompt_tokens` it reports, so both count a request the same way.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// A BPE encoding known to this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    /// Parses an encoding name as used in the price table (`o200k_base`, `cl100k_base`).
    pub fn from_name(name: &str) -> Option<Encoding> {
        match name {
            "o200k_base" => Some(Encoding::O200kBase),
            "cl100k_base" => Some(Encoding::Cl100kBase),
            _ => None,
        }
    }

    /// Picks the encoding for an OpenAI model name when the price table names none.
    ///
    /// Embedding models of the `text-embedding-3` family and GPT-4/3.5 use
    /// `cl100k_base`; every later chat model uses `o200k_base`.
    pub fn for_model(model: &str) -> Encoding {
        let cl100k = ["text-embedding-", "gpt-4-", "gpt-3.5"];
        if model == "gpt-4" || cl100k.iter().any(|prefix| model.starts_with(prefix)) {
            Encoding::Cl100kBase
        } else {
            Encoding::O200kBase
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Counts the tokens of plain text, treating special-token text as ordinary.
    pub fn count(self, text: &str) -> u64 {
        self.bpe().count_ordinary(text) as u64
    }
}

/// Tokens that frame each chat message and that prime the reply, as OpenAI documents
/// for its chat format.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_REPLY_PRIMING: u64 = 3;

/// Counts the prompt tokens of a request body for the given endpoint.
///
/// Chat bodies count each message's role, name and text parts plus the framing
/// tokens; embeddings count every input string; Responses bodies count `input`
/// and `instructions`. Non-text parts (images, audio) are not counted.
pub fn count_prompt_tokens(encoding: Encoding, endpoint: &str, body: &Value) -> u64 {
    match endpoint {
        "/v1/chat/completions" => count_chat(encoding, body),
        "/v1/embeddings" => count_strings(encoding, body.get("input")),
        "/v1/responses" => {
            count_strings(encoding, body.get("instructions"))
                + count_strings(encoding, body.get("input"))
        }
        _ => count_strings(encoding, body.get("prompt").or_else(|| body.get("input"))),
    }
}

/// Counts the prompt tokens of Anthropic Messages `params`: the system prompt,
/// each message's text and the same framing as chat requests.
///
/// NOTE: Anthropic publishes no tokenizer, so this counts with the OpenAI
/// encoding given; it is an estimate that may differ from Anthropic's
/// `input_tokens` by some percent in either direction.
pub fn count_anthropic_prompt_tokens(encoding: Encoding, params: &Value) -> u64 {
    count_strings(encoding, params.get("system")) + count_chat(encoding, params)
}

fn count_chat(encoding: Encoding, body: &Value) -> u64 {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return 0;
    };
    let mut total = TOKENS_REPLY_PRIMING;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        total += count_strings(encoding, message.get("role"));
        total += count_strings(encoding, message.get("content"));
        if let Some(name) = message.get("name") {
            total += 1 + count_strings(encoding, Some(name));
        }
    }
    total
}

/// Counts every string in a value: a string, an array of strings, or content parts
/// with a `text` field. Token-id arrays (embeddings input) count one token per id.
fn count_strings(encoding: Encoding, value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(text)) => encoding.count(text),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Number(_) => 1,
                Value::Object(part) => count_strings(encoding, part.get("text")),
                other => count_strings(encoding, Some(other)),
            })
            .sum(),
        Some(Value::Object(part)) => count_strings(encoding, part.get("text")),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_counts_framing_and_content() {
        let body = json!({"messages": [{"role": "user", "content": "hello world"}]});
        let content = Encoding::O200kBase.count("hello world");
        let role = Encoding::O200kBase.count("user");
        let expected = TOKENS_REPLY_PRIMING + TOKENS_PER_MESSAGE + role + content;
        assert_eq!(
            count_prompt_tokens(Encoding::O200kBase, "/v1/chat/completions", &body),
            expected
        );
    }

    #[test]
    fn embeddings_count_each_input() {
        let body = json!({"input": ["alpha beta", "gamma"]});
        let expected =
            Encoding::Cl100kBase.count("alpha beta") + Encoding::Cl100kBase.count("gamma");
        assert_eq!(
            count_prompt_tokens(Encoding::Cl100kBase, "/v1/embeddings", &body),
            expected
        );
    }

    #[test]
    fn anthropic_counts_system_and_messages() {
        let params = json!({"system": "be brief", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
        let chat = json!({"messages": [{"role": "user", "content": "hello"}]});
        let expected = Encoding::O200kBase.count("be brief")
            + count_prompt_tokens(Encoding::O200kBase, "/v1/chat/completions", &chat);
        assert_eq!(
            count_anthropic_prompt_tokens(Encoding::O200kBase, &params),
            expected
        );
    }

    #[test]
    fn model_names_pick_encoding() {
        assert_eq!(
            Encoding::for_model("text-embedding-3-small"),
            Encoding::Cl100kBase
        );
        assert_eq!(Encoding::for_model("gpt-6-luna"), Encoding::O200kBase);
    }
}
