//! Transform: a source's `processors`, applied to every record after its parser and
//! before it is packaged.
//!
//! | step | what it does |
//! | --- | --- |
//! | `keep` / `drop` | keeps only, or drops, the records whose body (or a field) matches a regex or equals a value |
//! | `mask` | replaces every match of a regex, in the body and every field value (or one field) |
//! | `add_fields` | adds constant fields |
//! | `rename_fields` | renames fields |
//! | `remove_fields` | removes fields |
//! | `extract` | adds the named captures of a regex in the body (or a field) as fields |
//!
//! Steps run in the order configured; each sees what the steps before it left (a
//! field added or extracted can be filtered on, a field masked is masked for the
//! steps after). A field step names the *last* field of that name when a record has
//! several (a JSON object with a repeated key); `rename_fields` and `remove_fields`
//! act on every field of the name.
//!
//! # Exact bytes
//!
//! Only `mask` changes a record's body: it is the one step a user asks for to keep
//! bytes *out* of the logs (card numbers, tokens), so it applies to the body and to
//! every field value — a parser may have copied the secret into a field. Masking a
//! body that was not valid UTF-8 keeps the bytes around the matches as they were.
//!
//! # Cost
//!
//! A source without processors pays one branch per record. Field values and captures
//! are spans of the body (no copy); a `mask` copies only the records it changes. The
//! body is made a `Bytes` of its own (one reference count); a field value only when
//! a `mask` rewrites it.

use bytes::Bytes;

use crate::batch::Field;
use crate::config::{ProcessorConfig, ValueTest};
use crate::frame::{Body, Line};

/// The processors of one source, ready to run.
#[derive(Debug, Default)]
pub struct Transform {
    steps: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Filter {
        keep: bool,
        target: Target,
        test: ValueTest,
    },
    Mask {
        target: Target,
        regex: regex::bytes::Regex,
        replacement: Bytes,
    },
    AddFields(Vec<(Bytes, Bytes)>),
    RenameFields(Vec<(Bytes, Bytes)>),
    RemoveFields(Vec<Bytes>),
    Extract {
        target: Target,
        regex: regex::bytes::Regex,
        /// `(group index, field key)` of every named group.
        groups: Vec<(usize, Bytes)>,
    },
}

/// The bytes a step looks at.
#[derive(Debug)]
enum Target {
    Body,
    Field(Bytes),
}

/// What [`Transform::apply`] did to a record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A `keep` or `drop` step filtered it out: its fields were removed again, and it
    /// must not be packaged.
    pub dropped: bool,
    /// A `mask` step replaced something in it.
    pub masked: bool,
}

fn key(name: &str) -> Bytes {
    Bytes::copy_from_slice(name.as_bytes())
}

fn target(field: &Option<std::sync::Arc<str>>) -> Target {
    match field {
        None => Target::Body,
        Some(name) => Target::Field(key(name)),
    }
}

impl Transform {
    pub fn new(steps: &[ProcessorConfig]) -> Transform {
        let steps = steps
            .iter()
            .map(|p| match p {
                ProcessorConfig::Filter { keep, field, test } => Step::Filter {
                    keep: *keep,
                    target: target(field),
                    test: test.clone(),
                },
                ProcessorConfig::Mask {
                    field,
                    regex,
                    replacement,
                } => Step::Mask {
                    target: target(field),
                    regex: regex.clone(),
                    replacement: key(replacement),
                },
                ProcessorConfig::AddFields(fields) => {
                    Step::AddFields(fields.iter().map(|(k, v)| (key(k), key(v))).collect())
                }
                ProcessorConfig::RenameFields(pairs) => {
                    Step::RenameFields(pairs.iter().map(|(k, v)| (key(k), key(v))).collect())
                }
                ProcessorConfig::RemoveFields(names) => {
                    Step::RemoveFields(names.iter().map(|n| key(n)).collect())
                }
                ProcessorConfig::Extract { field, regex } => Step::Extract {
                    target: target(field),
                    groups: regex
                        .capture_names()
                        .enumerate()
                        .filter_map(|(i, name)| name.map(|n| (i, key(n))))
                        .collect(),
                    regex: regex.clone(),
                },
            })
            .collect();
        Transform { steps }
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs the steps on `line`, whose fields are `fields[start..]` (tagged `index`).
    /// A dropped record's fields are truncated away again. The body (a span of
    /// `chunks`) is taken as a `Bytes` (one reference count): steps slice it into
    /// fields and rewrite it; a rewritten body becomes a chunk of its own, added to
    /// `chunks`. Field values that are spans are of `chunks` too, and stay spans
    /// unless rewritten.
    pub fn apply(
        &self,
        line: &mut Line,
        chunks: &mut Vec<Bytes>,
        index: u32,
        fields: &mut Vec<Field>,
        start: usize,
    ) -> Outcome {
        let mut body = line.body.to_bytes(chunks);
        let mut rewritten = false;
        let outcome = self.run(&mut body, &mut rewritten, chunks, index, fields, start);
        if rewritten && !outcome.dropped {
            line.body = crate::frame::own(chunks, body);
        }
        outcome
    }

    /// The steps of [`apply`](Self::apply) over `body`, `rewritten` set when a step
    /// replaced it.
    fn run(
        &self,
        body: &mut Bytes,
        rewritten: &mut bool,
        chunks: &[Bytes],
        index: u32,
        fields: &mut Vec<Field>,
        start: usize,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        for step in &self.steps {
            match step {
                Step::Filter { keep, target, test } => {
                    let matched =
                        value(body, chunks, fields, start, target).is_some_and(|v| match test {
                            ValueTest::Regex(re) => re.is_match(v),
                            ValueTest::Equals(expected) => v == expected.as_ref(),
                        });
                    if matched != *keep {
                        fields.truncate(start);
                        outcome.dropped = true;
                        return outcome;
                    }
                }
                Step::Mask {
                    target,
                    regex,
                    replacement,
                } => {
                    let mut masked = false;
                    // The rewritten value, a `Bytes` of its own, if a match was replaced.
                    let mut mask =
                        |bytes: &[u8]| match regex.replace_all(bytes, replacement.as_ref()) {
                            std::borrow::Cow::Owned(new) => {
                                masked = true;
                                Some(Bytes::from(new))
                            }
                            std::borrow::Cow::Borrowed(_) => None,
                        };
                    let mut mask_value = |value: &mut Body| {
                        if let Some(new) = mask(value.get(chunks)) {
                            *value = Body::Owned(new);
                        }
                    };
                    match target {
                        Target::Body => {
                            fields[start..]
                                .iter_mut()
                                .for_each(|f| mask_value(&mut f.value));
                            if let Some(new) = mask(body) {
                                *body = new;
                                *rewritten = true;
                            }
                        }
                        Target::Field(name) => fields[start..]
                            .iter_mut()
                            .filter(|f| f.key == name)
                            .for_each(|f| mask_value(&mut f.value)),
                    }
                    outcome.masked |= masked;
                }
                Step::AddFields(pairs) => {
                    fields.extend(pairs.iter().map(|(k, v)| Field {
                        line: index,
                        key: k.clone(),
                        value: Body::Owned(v.clone()),
                    }));
                }
                Step::RenameFields(pairs) => {
                    for f in &mut fields[start..] {
                        if let Some((_, new)) = pairs.iter().find(|(old, _)| f.key == old) {
                            f.key = new.clone();
                        }
                    }
                }
                Step::RemoveFields(names) => {
                    let mut kept = start;
                    for i in start..fields.len() {
                        if !names.contains(&fields[i].key) {
                            fields.swap(kept, i);
                            kept += 1;
                        }
                    }
                    fields.truncate(kept);
                }
                Step::Extract {
                    target,
                    regex,
                    groups,
                } => {
                    let Some(source) = owned_value(body, chunks, fields, start, target) else {
                        continue;
                    };
                    let Some(caps) = regex.captures(&source) else {
                        continue;
                    };
                    for (group, name) in groups {
                        if let Some(m) = caps.get(*group) {
                            fields.push(Field {
                                line: index,
                                key: name.clone(),
                                value: Body::Owned(source.slice(m.range())),
                            });
                        }
                    }
                }
            }
        }
        outcome
    }
}

/// The bytes `target` names in this record: the body, or the last field of the name.
/// Field values that are spans are of `chunks`.
fn value<'a>(
    body: &'a Bytes,
    chunks: &'a [Bytes],
    fields: &'a [Field],
    start: usize,
    target: &Target,
) -> Option<&'a [u8]> {
    match target {
        Target::Body => Some(body),
        Target::Field(name) => fields[start..]
            .iter()
            .rev()
            .find(|f| f.key == name)
            .map(|f| f.value.get(chunks)),
    }
}

/// Like [`value`], as a `Bytes` whose slices are spans (no copy; a field's span is
/// sliced out of its chunk: one reference count).
fn owned_value(
    body: &Bytes,
    chunks: &[Bytes],
    fields: &[Field],
    start: usize,
    target: &Target,
) -> Option<Bytes> {
    match target {
        Target::Body => Some(body.clone()),
        Target::Field(name) => fields[start..]
            .iter()
            .rev()
            .find(|f| f.key == name)
            .map(|f| f.value.to_bytes(chunks)),
    }
}

#[cfg(test)]
mod tests;
