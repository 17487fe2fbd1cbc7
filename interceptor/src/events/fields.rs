//! The string fields of one JSON event, with where each is written, so a masked value can be
//! written back in place and every other byte of the event stays as it was.
//!
//! Each field belongs to a *channel*: the text a client assembles from that field across
//! events. It is the field's path, plus the values of the `index`-like fields of the objects
//! around it, which is how the streaming APIs say which message, choice, tool call or content
//! block a delta continues (`choices[].index`, `tool_calls[].index`, Anthropic's `index`,
//! the Responses API's `output_index` and `content_index`, Gemini's `candidates[].index`).

use std::ops::Range;

use jiter::{Jiter, Peek};

/// Nesting deeper than this is not walked (the event is then scanned as text).
const MAX_DEPTH: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    /// RFC 6901 pointer of the field in the event's data.
    pub pointer: String,
    /// The text this field continues across events.
    pub channel: String,
    /// The string literal, quotes included, in the data.
    pub literal: Range<usize>,
    /// Its value, unescaped.
    pub text: String,
}

/// Every string value in `data` in document order; None when `data` is not one JSON value.
pub fn string_fields(data: &[u8]) -> Option<Vec<Field>> {
    let mut walk = Walk {
        jiter: Jiter::new(data),
        pointer: String::new(),
        objects: Vec::new(),
        open: Vec::new(),
        found: Vec::new(),
    };
    let peek = walk.jiter.peek().ok()?;
    walk.value(peek, 0).ok()?;
    walk.jiter.finish().ok()?;
    let Walk { objects, found, .. } = walk;
    Some(
        found
            .into_iter()
            .map(|(mut field, around)| {
                for object in around {
                    let indexes = &objects[object as usize];
                    if !indexes.is_empty() {
                        field.channel.push('|');
                        field.channel.push_str(indexes);
                    }
                }
                field
            })
            .collect(),
    )
}

/// Fields whose numeric value says which item an object continues.
fn is_index(key: &str) -> bool {
    key == "index" || key.ends_with("_index")
}

struct Walk<'j> {
    jiter: Jiter<'j>,
    pointer: String,
    /// Per object walked: its index fields, `name=value;` each.
    objects: Vec<String>,
    /// The objects around the current value.
    open: Vec<u32>,
    /// Fields found (channel still without indexes), with the objects around each.
    found: Vec<(Field, Vec<u32>)>,
}

struct NotJson;

impl From<jiter::JiterError> for NotJson {
    fn from(_: jiter::JiterError) -> NotJson {
        NotJson
    }
}

impl Walk<'_> {
    fn value(&mut self, peek: Peek, depth: usize) -> Result<(), NotJson> {
        if depth > MAX_DEPTH {
            return Err(NotJson);
        }
        match peek {
            Peek::String => {
                let start = self.jiter.current_index();
                let text = self.jiter.known_str()?.to_owned();
                let field = Field {
                    pointer: self.pointer.clone(),
                    channel: self.pointer.clone(),
                    literal: start..self.jiter.current_index(),
                    text,
                };
                self.found.push((field, self.open.clone()));
            }
            Peek::Object => {
                let id = self.objects.len() as u32;
                self.objects.push(String::new());
                self.open.push(id);
                let mut key = self.jiter.known_object()?.map(str::to_owned);
                while let Some(k) = key {
                    let len = self.pointer.len();
                    self.pointer.push('/');
                    self.pointer
                        .push_str(&k.replace('~', "~0").replace('/', "~1"));
                    let peek = self.jiter.peek()?;
                    if is_index(&k) && peek.is_num() {
                        let start = self.jiter.current_index();
                        self.jiter.known_skip(peek)?;
                        let number = String::from_utf8_lossy(self.jiter.slice_to_current(start));
                        let indexes = &mut self.objects[id as usize];
                        indexes.push_str(&k);
                        indexes.push('=');
                        indexes.push_str(&number);
                        indexes.push(';');
                    } else {
                        self.value(peek, depth + 1)?;
                    }
                    self.pointer.truncate(len);
                    key = self.jiter.next_key()?.map(str::to_owned);
                }
                self.open.pop();
            }
            Peek::Array => {
                let mut next = self.jiter.known_array()?;
                let mut i = 0usize;
                while let Some(peek) = next {
                    let len = self.pointer.len();
                    self.pointer.push('/');
                    self.pointer.push_str(&i.to_string());
                    self.value(peek, depth + 1)?;
                    self.pointer.truncate(len);
                    i += 1;
                    next = self.jiter.array_step()?;
                }
            }
            other => self.jiter.known_skip(other)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(data: &str) -> Vec<(String, String, String)> {
        string_fields(data.as_bytes())
            .unwrap()
            .into_iter()
            .map(|f| {
                assert_eq!(
                    &data[f.literal.clone()],
                    serde_json::to_string(&f.text).unwrap()
                );
                (f.pointer, f.channel, f.text)
            })
            .collect()
    }

    #[test]
    fn a_tool_call_delta_continues_its_index() {
        let data = r#"{"id":"c1","choices":[{"index":0,"delta":{"tool_calls":[{"index":2,"function":{"arguments":"{\"k\""}}]}}]}"#;
        let found = channels(data);
        assert_eq!(found[0], ("/id".into(), "/id".into(), "c1".into()));
        assert_eq!(
            found[1],
            (
                "/choices/0/delta/tool_calls/0/function/arguments".into(),
                "/choices/0/delta/tool_calls/0/function/arguments|index=0;|index=2;".into(),
                "{\"k\"".into()
            )
        );
    }

    #[test]
    fn indexes_after_the_text_still_count_and_keys_are_escaped() {
        let data = r#" {"candidates": [{"content": {"parts": [{"text": "a\nb"}]}, "index": 1}], "a/b~": "x"} "#;
        let found = channels(data);
        assert_eq!(found[0].1, "/candidates/0/content/parts/0/text|index=1;");
        assert_eq!(found[0].2, "a\nb");
        assert_eq!(found[1].0, "/a~1b~0");
    }

    #[test]
    fn what_is_not_one_json_value_has_no_fields() {
        for data in ["[DONE]", "{\"a\":", "{} {}", "", "plain text"] {
            assert!(string_fields(data.as_bytes()).is_none(), "{data}");
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(string_fields(deep.as_bytes()).is_none());
    }
}
