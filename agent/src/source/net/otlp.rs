//! The `otlp` input's decoding: an OTLP/HTTP logs request (`ExportLogsServiceRequest`,
//! protobuf or the OTLP/JSON mapping) into records, and its answer
//! (`ExportLogsServiceResponse`, with partial success when some were rejected).
//!
//! Each log record is one record:
//!
//! | record | from |
//! | --- | --- |
//! | body | `body`: a string's bytes or a bytes value exactly; anything else as compact JSON; none: empty |
//! | timestamp | `time_unix_nano`, else `observed_time_unix_nano`, else arrival |
//! | `resource.<key>` | the resource's attributes |
//! | `scope.name`, `scope.version`, `scope.<key>` | the instrumentation scope and its attributes |
//! | `<key>` | the log record's attributes |
//! | `severity_text`, `severity_number`, `time_unix_nano`, `observed_time_unix_nano`, `trace_id`, `span_id` (hex), `flags`, `event_name` | the log record's fields, when set |
//!
//! An attribute value that is a string or bytes is the field's value exactly; a bool,
//! int or double its text; an array or map compact JSON (bytes in it as base64).
//! A record whose body is over `max_line_size` is rejected (partial success), the
//! others are taken.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value::Value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde_json::Value as Json;

use super::Record;

/// How a request body is encoded (its `Content-Type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    Protobuf,
    Json,
}

/// The records of a request, and how many log records were refused.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    pub records: Vec<Record>,
    pub rejected: u64,
}

/// Decodes `body`; `Err` is a message for a `400`.
pub(super) fn decode(
    body: &[u8],
    encoding: Encoding,
    max_record: usize,
) -> Result<Decoded, String> {
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(body).map_err(|e| e.to_string())?,
        Encoding::Json => {
            let json: Json = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            from_json(&json)?
        }
    };
    Ok(records(request, max_record))
}

/// The answer, in the request's encoding.
pub(super) fn response(encoding: Encoding, rejected: u64) -> Bytes {
    let partial = (rejected > 0).then(|| ExportLogsPartialSuccess {
        rejected_log_records: rejected as i64,
        error_message: "log records with a body over max_line_size were rejected".into(),
    });
    match encoding {
        Encoding::Protobuf => Bytes::from(
            ExportLogsServiceResponse {
                partial_success: partial,
            }
            .encode_to_vec(),
        ),
        Encoding::Json => {
            let value = match partial {
                None => serde_json::json!({}),
                Some(p) => serde_json::json!({"partialSuccess": {
                    "rejectedLogRecords": p.rejected_log_records.to_string(),
                    "errorMessage": p.error_message,
                }}),
            };
            Bytes::from(value.to_string())
        }
    }
}

fn records(request: ExportLogsServiceRequest, max_record: usize) -> Decoded {
    let mut out = Decoded::default();
    for resource_logs in request.resource_logs {
        let mut shared: Vec<(Bytes, Bytes)> = Vec::new();
        if let Some(resource) = &resource_logs.resource {
            attributes(&mut shared, "resource.", &resource.attributes);
        }
        for scope_logs in resource_logs.scope_logs {
            let mut scoped = shared.clone();
            if let Some(scope) = &scope_logs.scope {
                text(&mut scoped, "scope.name", &scope.name);
                text(&mut scoped, "scope.version", &scope.version);
                attributes(&mut scoped, "scope.", &scope.attributes);
            }
            for log in scope_logs.log_records {
                let body = log.body.as_ref().map_or_else(Bytes::new, value_bytes);
                if body.len() > max_record {
                    out.rejected += 1;
                    continue;
                }
                let mut fields = scoped.clone();
                attributes(&mut fields, "", &log.attributes);
                text(&mut fields, "severity_text", &log.severity_text);
                number(
                    &mut fields,
                    "severity_number",
                    i64::from(log.severity_number),
                );
                number(&mut fields, "time_unix_nano", log.time_unix_nano as i64);
                number(
                    &mut fields,
                    "observed_time_unix_nano",
                    log.observed_time_unix_nano as i64,
                );
                hex(&mut fields, "trace_id", &log.trace_id);
                hex(&mut fields, "span_id", &log.span_id);
                number(&mut fields, "flags", i64::from(log.flags));
                text(&mut fields, "event_name", &log.event_name);
                let time = [log.time_unix_nano, log.observed_time_unix_nano]
                    .into_iter()
                    .find(|&t| t != 0 && t <= i64::MAX as u64)
                    .map(|t| t as i64);
                out.records.push(Record { body, fields, time });
            }
        }
    }
    out
}

fn attributes(out: &mut Vec<(Bytes, Bytes)>, prefix: &str, attributes: &[KeyValue]) {
    for kv in attributes {
        let key = Bytes::from(format!("{prefix}{}", kv.key));
        let value = kv.value.as_ref().map_or_else(Bytes::new, value_bytes);
        out.push((key, value));
    }
}

fn text(out: &mut Vec<(Bytes, Bytes)>, key: &'static str, value: &str) {
    if !value.is_empty() {
        out.push((
            Bytes::from_static(key.as_bytes()),
            Bytes::from(value.to_string()),
        ));
    }
}

fn number(out: &mut Vec<(Bytes, Bytes)>, key: &'static str, value: i64) {
    if value != 0 {
        out.push((
            Bytes::from_static(key.as_bytes()),
            Bytes::from(value.to_string()),
        ));
    }
}

fn hex(out: &mut Vec<(Bytes, Bytes)>, key: &'static str, id: &[u8]) {
    if !id.is_empty() {
        let text: String = id.iter().map(|b| format!("{b:02x}")).collect();
        out.push((Bytes::from_static(key.as_bytes()), Bytes::from(text)));
    }
}

/// A value as a field's (or body's) bytes: strings and bytes exactly.
fn value_bytes(value: &AnyValue) -> Bytes {
    match &value.value {
        None => Bytes::new(),
        Some(Value::StringValue(s)) => Bytes::from(s.clone()),
        Some(Value::BytesValue(b)) => Bytes::from(b.clone()),
        Some(Value::BoolValue(b)) => Bytes::from(b.to_string()),
        Some(Value::IntValue(i)) => Bytes::from(i.to_string()),
        Some(Value::DoubleValue(d)) => Bytes::from(d.to_string()),
        Some(_) => Bytes::from(to_json(value).to_string()),
    }
}

/// A value as plain JSON (arrays and maps inside a field or body).
fn to_json(value: &AnyValue) -> Json {
    match &value.value {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::from(s.as_str()),
        Some(Value::BoolValue(b)) => Json::from(*b),
        Some(Value::IntValue(i)) => Json::from(*i),
        Some(Value::DoubleValue(d)) => Json::from(*d),
        Some(Value::BytesValue(b)) => Json::from(crate::sink::store::b64::encode(b)),
        // An index into a profiles dictionary: logs have none to resolve it in.
        Some(Value::StringValueStrindex(i)) => Json::from(*i),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.iter().map(to_json).collect()),
        Some(Value::KvlistValue(kv)) => Json::Object(
            kv.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map_or(Json::Null, to_json),
                    )
                })
                .collect(),
        ),
    }
}

// The OTLP/JSON mapping (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):
// lowerCamelCase keys (the protobuf names are accepted too), 64-bit integers as
// strings or numbers, trace and span ids as hex, bytes as base64.

fn from_json(json: &Json) -> Result<ExportLogsServiceRequest, String> {
    let mut request = ExportLogsServiceRequest::default();
    for rl in array(json, "resourceLogs", "resource_logs")? {
        let mut resource_logs = ResourceLogs::default();
        if let Some(r) = member(rl, "resource", "resource") {
            resource_logs.resource = Some(Resource {
                attributes: key_values(r, "attributes")?,
                ..Default::default()
            });
        }
        for sl in array(rl, "scopeLogs", "scope_logs")? {
            let mut scope_logs = ScopeLogs::default();
            if let Some(s) = member(sl, "scope", "scope") {
                scope_logs.scope = Some(InstrumentationScope {
                    name: string(s, "name", "name")?,
                    version: string(s, "version", "version")?,
                    attributes: key_values(s, "attributes")?,
                    ..Default::default()
                });
            }
            for lr in array(sl, "logRecords", "log_records")? {
                scope_logs.log_records.push(log_record(lr)?);
            }
            resource_logs.scope_logs.push(scope_logs);
        }
        request.resource_logs.push(resource_logs);
    }
    Ok(request)
}

fn log_record(json: &Json) -> Result<LogRecord, String> {
    Ok(LogRecord {
        time_unix_nano: integer(json, "timeUnixNano", "time_unix_nano")? as u64,
        observed_time_unix_nano: integer(json, "observedTimeUnixNano", "observed_time_unix_nano")?
            as u64,
        severity_number: integer(json, "severityNumber", "severity_number")? as i32,
        severity_text: string(json, "severityText", "severity_text")?,
        body: member(json, "body", "body").map(any_value).transpose()?,
        attributes: key_values(json, "attributes")?,
        flags: integer(json, "flags", "flags")? as u32,
        trace_id: id(json, "traceId", "trace_id")?,
        span_id: id(json, "spanId", "span_id")?,
        event_name: string(json, "eventName", "event_name")?,
        ..Default::default()
    })
}

fn any_value(json: &Json) -> Result<AnyValue, String> {
    let Some(object) = json.as_object() else {
        return Err(format!("an AnyValue must be an object, not {json}"));
    };
    let value = if let Some(s) = object.get("stringValue").or(object.get("string_value")) {
        Value::StringValue(s.as_str().ok_or("stringValue: not a string")?.to_string())
    } else if let Some(b) = object.get("boolValue").or(object.get("bool_value")) {
        Value::BoolValue(b.as_bool().ok_or("boolValue: not a bool")?)
    } else if object.contains_key("intValue") || object.contains_key("int_value") {
        Value::IntValue(integer(json, "intValue", "int_value")?)
    } else if let Some(d) = object.get("doubleValue").or(object.get("double_value")) {
        Value::DoubleValue(d.as_f64().ok_or("doubleValue: not a number")?)
    } else if let Some(b) = object.get("bytesValue").or(object.get("bytes_value")) {
        let text = b.as_str().ok_or("bytesValue: not a string")?;
        Value::BytesValue(crate::sink::store::b64::decode(text).ok_or("bytesValue: not base64")?)
    } else if let Some(a) = object.get("arrayValue").or(object.get("array_value")) {
        let values = array(a, "values", "values")?
            .iter()
            .map(any_value)
            .collect::<Result<_, _>>()?;
        Value::ArrayValue(ArrayValue { values })
    } else if let Some(kv) = object.get("kvlistValue").or(object.get("kvlist_value")) {
        Value::KvlistValue(KeyValueList {
            values: key_values(kv, "values")?,
        })
    } else {
        return Ok(AnyValue { value: None });
    };
    Ok(AnyValue { value: Some(value) })
}

fn key_values(json: &Json, name: &str) -> Result<Vec<KeyValue>, String> {
    array(json, name, name)?
        .iter()
        .map(|kv| {
            Ok(KeyValue {
                key: string(kv, "key", "key")?,
                value: member(kv, "value", "value").map(any_value).transpose()?,
                ..Default::default()
            })
        })
        .collect()
}

fn member<'a>(json: &'a Json, camel: &str, snake: &str) -> Option<&'a Json> {
    json.get(camel)
        .or_else(|| json.get(snake))
        .filter(|v| !v.is_null())
}

fn array<'a>(json: &'a Json, camel: &str, snake: &str) -> Result<&'a [Json], String> {
    match member(json, camel, snake) {
        None => Ok(&[]),
        Some(Json::Array(a)) => Ok(a),
        Some(other) => Err(format!("{camel}: an array expected, not {other}")),
    }
}

fn string(json: &Json, camel: &str, snake: &str) -> Result<String, String> {
    match member(json, camel, snake) {
        None => Ok(String::new()),
        Some(Json::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{camel}: a string expected, not {other}")),
    }
}

/// A 64-bit integer: a JSON number or a decimal string (the mapping's form).
fn integer(json: &Json, camel: &str, snake: &str) -> Result<i64, String> {
    match member(json, camel, snake) {
        None => Ok(0),
        Some(Json::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| u as i64))
            .ok_or_else(|| format!("{camel}: not an integer")),
        Some(Json::String(s)) => s
            .parse::<i64>()
            .or_else(|_| s.parse::<u64>().map(|u| u as i64))
            .map_err(|_| format!("{camel}: {s:?} is not an integer")),
        Some(other) => Err(format!("{camel}: an integer expected, not {other}")),
    }
}

fn id(json: &Json, camel: &str, snake: &str) -> Result<Vec<u8>, String> {
    let text = string(json, camel, snake)?;
    if text.len() % 2 != 0 {
        return Err(format!("{camel}: {text:?} is not hex"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{camel}: {text:?} is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(record: &'a Record, key: &str) -> Option<&'a [u8]> {
        record
            .fields
            .iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| &v[..])
    }

    const JSON: &str = r#"{"resourceLogs":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"shop"}},
        {"key":"pid","value":{"intValue":"42"}}]},
      "scopeLogs":[{"scope":{"name":"lib","version":"1.2"},"logRecords":[
        {"timeUnixNano":"1700000000000000001","severityNumber":9,"severityText":"INFO",
         "body":{"stringValue":"hello \u00e9"},"traceId":"5b8efff798038103d269b633813fc60c",
         "spanId":"eee19b7ec3c1b174","attributes":[
           {"key":"user","value":{"kvlistValue":{"values":[{"key":"id","value":{"intValue":7}}]}}},
           {"key":"ok","value":{"boolValue":true}}]},
        {"body":{"bytesValue":"AP8="}},
        {"body":{"arrayValue":{"values":[{"doubleValue":1.5},{"stringValue":"x"}]}}},
        {"body":{"stringValue":"this one is far too long for the limit"}}]}]}]}"#;

    #[test]
    fn json_and_protobuf_give_the_same_records() {
        let from_json = decode(JSON.as_bytes(), Encoding::Json, 20).unwrap();
        let request = super::from_json(&serde_json::from_str(JSON).unwrap()).unwrap();
        let from_protobuf = decode(&request.encode_to_vec(), Encoding::Protobuf, 20).unwrap();
        for d in [&from_json, &from_protobuf] {
            assert_eq!(d.rejected, 1, "the long body");
            assert_eq!(d.records.len(), 3);
            let first = &d.records[0];
            assert_eq!(&first.body[..], "hello é".as_bytes());
            assert_eq!(first.time, Some(1_700_000_000_000_000_001));
            assert_eq!(field(first, "resource.service.name"), Some(&b"shop"[..]));
            assert_eq!(field(first, "resource.pid"), Some(&b"42"[..]));
            assert_eq!(field(first, "scope.name"), Some(&b"lib"[..]));
            assert_eq!(field(first, "scope.version"), Some(&b"1.2"[..]));
            assert_eq!(field(first, "severity_text"), Some(&b"INFO"[..]));
            assert_eq!(field(first, "severity_number"), Some(&b"9"[..]));
            assert_eq!(
                field(first, "trace_id"),
                Some(&b"5b8efff798038103d269b633813fc60c"[..])
            );
            assert_eq!(field(first, "span_id"), Some(&b"eee19b7ec3c1b174"[..]));
            assert_eq!(field(first, "user"), Some(&br#"{"id":7}"#[..]));
            assert_eq!(field(first, "ok"), Some(&b"true"[..]));
            assert_eq!(&d.records[1].body[..], b"\x00\xff", "bytes exactly");
            assert_eq!(d.records[1].time, None);
            assert_eq!(&d.records[2].body[..], br#"[1.5,"x"]"#);
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"resourceLogs":{}}"#,
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}"#,
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"soon"}]}]}]}"#,
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"plain"}]}]}]}"#,
        ] {
            let got = decode(bad, Encoding::Json, 100);
            assert!(
                got.is_err() || bad == b"[]",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode(b"\xff\xff\xff", Encoding::Protobuf, 100).is_err());
        let empty = decode(b"{}", Encoding::Json, 100).unwrap();
        assert!(empty.records.is_empty());
        assert_eq!(&response(Encoding::Json, 0)[..], b"{}");
        let partial = response(Encoding::Protobuf, 2);
        let decoded = ExportLogsServiceResponse::decode(&partial[..]).unwrap();
        assert_eq!(decoded.partial_success.unwrap().rejected_log_records, 2);
    }
}
