//! Streams in the wire formats agents use, with secrets split across their deltas: what a
//! client assembles must be what masking the whole text gives, wherever the splits fall.

use super::*;
use crate::detection::mask_buffer;
use crate::detection::tests::engine;

/// Where a client finds the text of one delta, per API.
#[derive(Clone, Copy, Debug)]
enum Shape {
    ChatContent,
    ChatArguments,
    ResponsesText,
    ResponsesArguments,
    AnthropicText,
    AnthropicJson,
    Gemini,
    Ollama,
    Mcp,
    Text,
}

const SHAPES: [Shape; 10] = [
    Shape::ChatContent,
    Shape::ChatArguments,
    Shape::ResponsesText,
    Shape::ResponsesArguments,
    Shape::AnthropicText,
    Shape::AnthropicJson,
    Shape::Gemini,
    Shape::Ollama,
    Shape::Mcp,
    Shape::Text,
];

impl Shape {
    fn format(self) -> Format {
        match self {
            Shape::Ollama => Format::Ndjson,
            _ => Format::Sse,
        }
    }

    fn pointer(self) -> &'static str {
        match self {
            Shape::ChatContent => "/choices/0/delta/content",
            Shape::ChatArguments => "/choices/0/delta/tool_calls/0/function/arguments",
            Shape::ResponsesText | Shape::ResponsesArguments => "/delta",
            Shape::AnthropicText => "/delta/text",
            Shape::AnthropicJson => "/delta/partial_json",
            Shape::Gemini => "/candidates/0/content/parts/0/text",
            Shape::Ollama => "/message/content",
            Shape::Mcp => "/params/data",
            Shape::Text => "",
        }
    }

    /// The event that carries `piece` as delta number `n`.
    fn event(self, n: usize, piece: &str) -> String {
        let s = serde_json::to_string(piece).unwrap();
        match self {
            Shape::ChatContent => format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{s}}},\"finish_reason\":null}}]}}\n\n"
            ),
            Shape::ChatArguments => format!(
                "data: {{\"id\":\"chatcmpl-1\",\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":{s}}}}}]}}}}]}}\n\n"
            ),
            Shape::ResponsesText => format!(
                "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":{s},\"sequence_number\":{n}}}\n\n"
            ),
            Shape::ResponsesArguments => format!(
                "event: response.function_call_arguments.delta\ndata: {{\"type\":\"response.function_call_arguments.delta\",\"item_id\":\"fc_1\",\"output_index\":1,\"delta\":{s},\"sequence_number\":{n}}}\n\n"
            ),
            Shape::AnthropicText => format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{s}}}}}\n\n"
            ),
            Shape::AnthropicJson => format!(
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{s}}}}}\n\n"
            ),
            Shape::Gemini => format!(
                "data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": {s}}}],\"role\": \"model\"}},\"index\": 0}}],\"modelVersion\": \"gemini-2.0-flash\"}}\r\n\r\n"
            ),
            Shape::Ollama => format!(
                "{{\"model\":\"llama3\",\"created_at\":\"2026-12-04T00:00:00Z\",\"message\":{{\"role\":\"assistant\",\"content\":{s}}},\"done\":false}}\n"
            ),
            Shape::Mcp => format!(
                "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"data\":{s}}}}}\n\n"
            ),
            Shape::Text => {
                let lines: Vec<String> =
                    piece.split('\n').map(|l| format!("data: {l}\n")).collect();
                format!("{}\n", lines.concat())
            }
        }
    }

    /// The text a client assembles from `stream`; panics on an event that is not valid.
    fn assembled(self, stream: &[u8]) -> (String, usize) {
        let format = self.format();
        let (mut text, mut events, mut start) = (String::new(), 0, 0);
        while let Ok(end) = format.event_end(&stream[start..], 0) {
            let event = &stream[start..start + end];
            let data = joined(event, &format.data(event)).into_owned();
            let data = String::from_utf8(data).unwrap();
            match self {
                Shape::Text => text.push_str(&data),
                _ => {
                    let value: serde_json::Value = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("event {events} is not JSON ({e}): {data}"));
                    let piece = value.pointer(self.pointer()).expect("the field is there");
                    text.push_str(piece.as_str().expect("a string"));
                }
            }
            events += 1;
            start += end;
        }
        assert_eq!(start, stream.len(), "a partial event at the end");
        (text, events)
    }
}

fn hasher() -> SecretHasher {
    SecretHasher::with_salt([7; 16])
}

/// `text` streamed as one delta per piece (cut at `cuts`), each event its own chunk.
fn stream(shape: Shape, text: &str, cuts: &[usize]) -> (Vec<u8>, Vec<PlacedFinding>) {
    let mut masker = EventMasker::new(shape.format(), engine(), hasher(), None);
    let mut out = Vec::new();
    let mut from = 0;
    for (n, &cut) in cuts.iter().chain([&text.len()]).enumerate() {
        masker
            .push(shape.event(n, &text[from..cut]).as_bytes(), &mut out)
            .unwrap();
        from = cut;
    }
    masker.finish(&mut out).unwrap();
    (out, masker.take_findings())
}

/// What masking `text` whole gives (for SSE text data with its line ends kept where they
/// were: masking keeps an event's data lines).
fn masked_whole(shape: Shape, text: &str) -> String {
    let masked = mask_buffer(&engine(), &hasher(), text.as_bytes())
        .unwrap()
        .0;
    let kept = masked.iter().zip(text.as_bytes());
    let lines = matches!(shape, Shape::Text);
    String::from_utf8(
        kept.map(|(&m, &o)| if lines && o == b'\n' { o } else { m })
            .collect(),
    )
    .unwrap()
}

/// Char boundaries of `text` strictly inside it.
fn cut_points(text: &str) -> Vec<usize> {
    (1..text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect()
}

fn text_of(shape: Shape, example: &str) -> String {
    match shape {
        // SSE text data cannot hold a CR; a client sees its lines.
        Shape::Text => example.replace("\r\n", "\n").replace('\r', "\n"),
        _ => example.to_owned(),
    }
}

/// Every shipped rule's examples that name their secret: (text, secret).
fn examples() -> Vec<(String, String)> {
    let rules = crate::detection::load_dir(&crate::detection::tests::rules_dir()).unwrap();
    (rules.iter().flat_map(|r| &r.examples))
        .filter_map(|e| Some((e.text().to_string(), e.secret()?.to_string())))
        .collect()
}

/// `got` is `expected`, or differs from it only in secret bytes that went on in clear just
/// before one of the `cuts`, fewer than [`OPEN_AFTER`] (for a secret shorter than 16 bytes,
/// more than the prefix masking keeps).
///
/// [`OPEN_AFTER`]: crate::detection::openings::OPEN_AFTER
fn assert_masked(got: &str, expected: &str, text: &str, cuts: &[usize], what: &str) {
    if got == expected {
        return;
    }
    let head = crate::detection::openings::OPEN_AFTER;
    let allowed = got.len() == expected.len()
        && (got
            .bytes()
            .zip(expected.bytes())
            .zip(text.bytes())
            .enumerate())
        .filter(|(_, ((g, e), _))| g != e)
        .all(|(i, ((g, e), t))| g == t && e == b'*' && cuts.iter().any(|&c| i < c && i + head > c));
    assert!(allowed, "{what}: {text}\n got {got}\nwant {expected}");
}

/// Which cut points the split tests try: every `stride`-th, starting at a different one for
/// each example (`EVENT_SPLIT_STRIDE=1` tries them all). By default about 30 examples' worth
/// of cuts per shape in all, however many rules there are: the debug build's test time stays
/// in CI's budget, and over the examples every offset class is still reached.
fn stride(examples: usize) -> usize {
    std::env::var("EVENT_SPLIT_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(examples.div_ceil(30).max(7))
}

#[test]
fn every_example_split_in_two_is_masked_in_every_format() {
    let examples = examples();
    let stride = stride(examples.len());
    for (n, (example, secret)) in examples.iter().enumerate() {
        for shape in SHAPES {
            let text = format!("Here it is: {} and more.", text_of(shape, example));
            let expected = masked_whole(shape, &text);
            assert!(!expected.contains(secret.as_str()), "{example}");
            let cuts = cut_points(&text);
            for &cut in cuts.iter().skip(n % stride).step_by(stride) {
                let (out, _) = stream(shape, &text, &[cut]);
                let (got, events) = shape.assembled(&out);
                assert_eq!(events, 2, "{shape:?}");
                let what = format!("{shape:?} cut at {cut}");
                assert_masked(&got, &expected, &text, &[cut], &what);
            }
        }
    }
}

#[test]
fn examples_split_into_many_deltas_are_masked_in_every_format() {
    let examples = examples();
    let stride = stride(examples.len());
    // A share of the examples (a different one for each format), every byte its own delta
    // and deltas of a few bytes.
    for (n, (example, _)) in examples.iter().enumerate() {
        for (s, shape) in SHAPES.into_iter().enumerate() {
            if (n + s) % stride != 0 {
                continue;
            }
            let text = text_of(shape, example);
            let points = cut_points(&text);
            let expected = masked_whole(shape, &text);
            for step in [1, 3, 7] {
                let cuts: Vec<usize> = points.iter().copied().step_by(step).collect();
                let (out, _) = stream(shape, &text, &cuts);
                let (got, events) = shape.assembled(&out);
                assert_eq!(events, cuts.len() + 1);
                let what = format!("{shape:?} every {step}");
                assert_masked(&got, &expected, &text, &cuts, &what);
            }
        }
    }
}

const KEY: &str = "AKIA4UAVNHXTUL3D4D4U";

#[test]
fn a_finding_is_placed_at_its_event_and_field() {
    let text = format!("first. The key is {KEY} ok");
    // Deltas: "first. ", "The key is AKI", "A4UAVNHX", "TUL3D4D4U ok".
    let (out, found) = stream(Shape::ChatArguments, &text, &[7, 21, 29]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].location,
        "event:1/choices/0/delta/tool_calls/0/function/arguments"
    );
    assert_eq!((found[0].finding.offset, found[0].finding.length), (11, 20));
    let (got, _) = Shape::ChatArguments.assembled(&out);
    assert_eq!(got, "first. The key is AKIA**************** ok");
    // No fragment of the key in what went out.
    let out = String::from_utf8(out).unwrap();
    for fragment in ["4UAVNHX", "TUL3D4D4U"] {
        assert!(!out.contains(fragment), "{out}");
    }
}

#[test]
fn events_without_a_candidate_go_at_once_and_a_candidate_waits_for_the_next_or_idle() {
    let shape = Shape::ChatContent;
    let mut masker = EventMasker::new(shape.format(), engine(), hasher(), None);
    let mut out = Vec::new();
    // The first event's ids and types (`"object":"chat.completion.chunk"`) may wait for the
    // second, which shows them to be values that repeat, not text that grows.
    for (n, text) in ["", "Hello, how can I help you today? "]
        .into_iter()
        .enumerate()
    {
        masker
            .push(shape.event(n, text).as_bytes(), &mut out)
            .unwrap();
    }
    assert_eq!(shape.assembled(&out).1, 2, "ordinary events go at once");
    assert!(!masker.waiting());
    // The start of a key waits: its rest may come.
    masker
        .push(shape.event(2, "The key: AKIA4U").as_bytes(), &mut out)
        .unwrap();
    assert_eq!(shape.assembled(&out).1, 2);
    assert!(masker.waiting());
    masker
        .push(
            shape.event(3, "AVNHXTUL3D4D4U is it. ").as_bytes(),
            &mut out,
        )
        .unwrap();
    let (text, events) = shape.assembled(&out);
    assert_eq!(events, 4);
    assert!(
        text.ends_with("The key: AKIA**************** is it. "),
        "{text}"
    );
    // A tail that could start a key goes when the stream idles.
    masker
        .push(shape.event(4, " and AKIA4").as_bytes(), &mut out)
        .unwrap();
    assert_eq!(shape.assembled(&out).1, 4);
    masker.idle(&mut out).unwrap();
    assert_eq!(shape.assembled(&out).1, 5);
    assert!(!masker.waiting());
}

#[test]
fn a_key_named_in_the_json_is_masked_by_the_scan_of_the_whole_event() {
    let mut masker = EventMasker::new(Format::Ndjson, engine(), hasher(), None);
    let mut out = Vec::new();
    let line = "{\"config\":{\"password\":\"hunter2-Correct-Horse\"}}\n";
    masker.push(line.as_bytes(), &mut out).unwrap();
    masker.finish(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("Correct-Horse"), "{out}");
    serde_json::from_str::<serde_json::Value>(out.trim()).unwrap();
    let found = masker.take_findings();
    assert_eq!(found[0].location, "event:0");
}

#[test]
fn events_arriving_in_any_chunks_come_out_whole_and_in_order() {
    let shape = Shape::AnthropicText;
    let text = format!("a {KEY} b {KEY} c");
    let events: String = (0..text.len())
        .step_by(3)
        .map(|i| shape.event(i, &text[i..(i + 3).min(text.len())]))
        .collect();
    for chunk in [1, 2, 5, 64] {
        let mut masker = EventMasker::new(shape.format(), engine(), hasher(), None);
        let mut out = Vec::new();
        for c in events.as_bytes().chunks(chunk) {
            masker.push(c, &mut out).unwrap();
        }
        masker.finish(&mut out).unwrap();
        let (got, n) = shape.assembled(&out);
        assert_eq!(n, text.len().div_ceil(3));
        assert_eq!(got, masked_whole(shape, &text), "chunks of {chunk}");
    }
}

#[test]
fn data_that_is_not_json_is_text_and_done_markers_pass() {
    let mut masker = EventMasker::new(Format::Sse, engine(), hasher(), None);
    let mut out = Vec::new();
    let stream = format!(
        ": keep-alive\n\ndata: {}\n\ndata: {}\nid: 7\n\ndata: [DONE]\n\n",
        &KEY[..9],
        &KEY[9..]
    );
    masker.push(stream.as_bytes(), &mut out).unwrap();
    masker.finish(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        ": keep-alive\n\ndata: AKIA*****\n\ndata: ***********\nid: 7\n\ndata: [DONE]\n\n"
    );
}

#[test]
fn an_event_over_the_cap_is_masked_as_raw_bytes_from_there_on() {
    let mut masker = EventMasker::new(Format::Ndjson, engine(), hasher(), None);
    let mut out = Vec::new();
    masker
        .push(b"{\"a\":\"small\"}\n{\"b\":\"", &mut out)
        .unwrap();
    let big = "x".repeat(MAX_EVENT);
    masker.push(big.as_bytes(), &mut out).unwrap();
    masker
        .push(format!(" {KEY} \"}}\n").as_bytes(), &mut out)
        .unwrap();
    masker.finish(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("{\"a\":\"small\"}\n{\"b\":\"xxx"));
    assert!(out.ends_with(" AKIA**************** \"}\n"));
    assert_eq!(out.len(), 20 + MAX_EVENT + 25);
}

#[test]
fn a_tail_that_stays_open_holds_only_itself() {
    // Every delta ends in a word a rule could still go on from: each waits for the next one
    // at most, never for the end of the stream.
    let shape = Shape::ChatContent;
    let mut masker = EventMasker::new(shape.format(), engine(), hasher(), None);
    let mut out = Vec::new();
    // A first event with a value no later event has (a word that could start a secret).
    let first = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n";
    masker.push(first.as_bytes(), &mut out).unwrap();
    for n in 1..40 {
        masker
            .push(shape.event(n, &format!(" build{n}")).as_bytes(), &mut out)
            .unwrap();
        assert!(
            shape.assembled(&out).1 + 1 >= n,
            "event {n} still waits for older ones"
        );
    }
    masker.finish(&mut out).unwrap();
    assert_eq!(shape.assembled(&out).1, 40);
}
