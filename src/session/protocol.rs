//! Client-to-server messages: parsing and validation (PROTOCOL.md, "Client
//! to server"). Every problem becomes a [`ProtocolError`] that is answered
//! with an `error` reply; the connection stays open.

use serde_json::Value;

use crate::channel::{ChannelName, Pattern};
use crate::json_depth;
use crate::wire::ErrorCode;

/// Most entries in a subscribe's `fields`.
pub const MAX_FIELDS: usize = 64;

/// Bounds on one client request (see `config::Limits` for the knobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Most names and patterns in one subscribe or unsubscribe
    /// (`limits.max_channels_per_request`).
    pub max_channels: usize,
    /// Most entries in a subscribe's `fields` (`limits.max_fields_per_subscribe`).
    pub max_fields: usize,
    /// Deepest `[`/`{` nesting (`limits.max_json_depth`).
    pub max_depth: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_channels: 1024,
            max_fields: MAX_FIELDS,
            max_depth: json_depth::DEFAULT_LIMIT,
        }
    }
}

/// A valid client request.
#[derive(Debug, PartialEq)]
pub enum ClientOp {
    Subscribe {
        id: Option<i64>,
        targets: Vec<Pattern>,
        options: SubscribeOptions,
    },
    Unsubscribe {
        id: Option<i64>,
        targets: Vec<Pattern>,
    },
    Ping {
        id: Option<i64>,
    },
    /// A fresh token for the connection (before the current one expires).
    Auth {
        id: Option<i64>,
        token: String,
    },
}

pub use crate::engine::SubscribeOptions;

/// Why a request was refused, and the `id` to echo if it had a usable one.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolError {
    pub id: Option<i64>,
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    fn new(id: Option<i64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            code,
            message: message.into(),
        }
    }
}

/// Parses one text message within `limits`; the depth bound is checked
/// before simd-json sees the text (see `json_depth`). The buffer is scratch
/// space for simd-json.
pub fn parse(text: &mut [u8], limits: &RequestLimits) -> Result<ClientOp, ProtocolError> {
    if let Err(too_deep) = json_depth::check(text, limits.max_depth) {
        return Err(ProtocolError::new(
            None,
            ErrorCode::BadRequest,
            format!(
                "message nests arrays/objects deeper than {} levels \
                 (limits.max_json_depth); send flatter JSON",
                too_deep.limit
            ),
        ));
    }
    // simd-json lets some malformed values through (crate::strict_json).
    if let Err(e) = crate::strict_json::check(text) {
        return Err(ProtocolError::new(
            None,
            ErrorCode::BadRequest,
            format!("message is not valid JSON ({e}); send one JSON object per text frame"),
        ));
    }
    let value: Value = simd_json::serde::from_slice(text).map_err(|e| {
        ProtocolError::new(
            None,
            ErrorCode::BadRequest,
            format!("message is not valid JSON ({e}); send one JSON object per text frame"),
        )
    })?;
    let Value::Object(message) = value else {
        return Err(ProtocolError::new(
            None,
            ErrorCode::BadRequest,
            "a message must be a JSON object like {\"op\":\"ping\"}",
        ));
    };
    let id = match message.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
        Some(_) => {
            return Err(ProtocolError::new(
                None,
                ErrorCode::BadRequest,
                "id must be an integer",
            ))
        }
    };
    let bad = |message: String| ProtocolError::new(id, ErrorCode::BadRequest, message);
    let op = match message.get("op") {
        Some(Value::String(op)) => op.as_str(),
        _ => {
            return Err(bad(
                "missing op: use subscribe, unsubscribe, ping or auth".into()
            ))
        }
    };
    match op {
        "ping" => Ok(ClientOp::Ping { id }),
        "subscribe" => {
            let targets = targets(id, message.get("channels"), limits.max_channels)?;
            let options = subscribe_options(id, &message, limits.max_fields)?;
            Ok(ClientOp::Subscribe {
                id,
                targets,
                options,
            })
        }
        "unsubscribe" => {
            let targets = targets(id, message.get("channels"), limits.max_channels)?;
            Ok(ClientOp::Unsubscribe { id, targets })
        }
        "auth" => match message.get("token") {
            Some(Value::String(token)) if !token.is_empty() => Ok(ClientOp::Auth {
                id,
                token: token.clone(),
            }),
            _ => Err(bad("auth needs a token: a JWT as a non-empty string".into())),
        },
        other => Err(bad(format!(
            "unknown op {other:?}: use subscribe, unsubscribe, ping or auth"
        ))),
    }
}

/// The present member `key` of `message` (`null` counts as absent).
fn member<'a>(message: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    message.get(key).filter(|v| !v.is_null())
}

fn subscribe_options(
    id: Option<i64>,
    message: &serde_json::Map<String, Value>,
    max_fields: usize,
) -> Result<SubscribeOptions, ProtocolError> {
    let bad = |message: &str| ProtocolError::new(id, ErrorCode::BadRequest, message);
    let mut options = SubscribeOptions::default();
    if let Some(fields) = member(message, "fields") {
        let not_strings = "fields must be a non-empty array of non-empty strings";
        let Value::Array(list) = fields else {
            return Err(bad(not_strings));
        };
        if list.is_empty() {
            return Err(bad(not_strings));
        }
        if list.len() > max_fields {
            return Err(ProtocolError::new(
                id,
                ErrorCode::Limit,
                format!(
                    "at most {max_fields} fields per subscribe (limits.max_fields_per_subscribe)"
                ),
            ));
        }
        let mut names = Vec::with_capacity(list.len());
        for item in list {
            match item {
                Value::String(name) if !name.is_empty() => names.push(name.clone()),
                _ => return Err(bad(not_strings)),
            }
        }
        options.fields = Some(names);
    }
    if let Some(max_hz) = member(message, "max_hz") {
        match max_hz.as_f64() {
            Some(hz) if hz > 0.0 && hz.is_finite() => options.max_hz = Some(hz),
            _ => return Err(bad("max_hz must be a number greater than 0")),
        }
    }
    if let Some(since) = member(message, "since") {
        let shape = "since must be an object of channel name -> last seq applied (an integer >= 0)";
        let Value::Object(positions) = since else {
            return Err(bad(shape));
        };
        for (name, seq) in positions {
            if let Err(e) = ChannelName::new(name) {
                return Err(bad(&format!("since {name:?}: {e}")));
            }
            let Some(seq) = seq.as_u64() else {
                return Err(bad(shape));
            };
            options.since.insert(name.clone(), seq);
        }
    }
    if let Some(epoch) = member(message, "epoch") {
        let Value::String(epoch) = epoch else {
            return Err(bad("epoch must be a string (the epoch of a snapshot)"));
        };
        options.epoch = Some(epoch.clone());
    }
    Ok(options)
}

fn targets(
    id: Option<i64>,
    channels: Option<&Value>,
    max_channels: usize,
) -> Result<Vec<Pattern>, ProtocolError> {
    let bad = |message: String| ProtocolError::new(id, ErrorCode::BadRequest, message);
    let list = match channels {
        Some(Value::Array(list)) if !list.is_empty() => list,
        _ => return Err(bad("channels must be a non-empty array".into())),
    };
    if list.len() > max_channels {
        return Err(ProtocolError::new(
            id,
            ErrorCode::Limit,
            format!("at most {max_channels} channels per request"),
        ));
    }
    let mut targets = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::String(text) = item else {
            return Err(bad(format!("channels[{i}] must be a string")));
        };
        let pattern =
            Pattern::new(text).map_err(|e| bad(format!("channels[{i}] {text:?}: {e}")))?;
        if !targets.contains(&pattern) {
            targets.push(pattern);
        }
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<ClientOp, ProtocolError> {
        parse(
            &mut s.as_bytes().to_vec(),
            &RequestLimits {
                max_channels: 4,
                ..RequestLimits::default()
            },
        )
    }

    fn code(s: &str) -> (Option<i64>, ErrorCode) {
        let e = parse_str(s).unwrap_err();
        (e.id, e.code)
    }

    /// Found by fuzz/ (target protocol): simd-json alone accepted these.
    #[test]
    fn malformed_values_are_not_valid_json() {
        for text in [
            "{\"op\":\"ping\",\"id\":9\0\0&160546&\0}",
            "{\"op\":\"ping\",\"id\":1,\"x\":104184467407370955161&62}",
        ] {
            assert_eq!(code(text), (None, ErrorCode::BadRequest), "{text:?}");
        }
    }

    #[test]
    fn valid_requests() {
        assert_eq!(
            parse_str(r#"{"op":"ping","id":3}"#),
            Ok(ClientOp::Ping { id: Some(3) })
        );
        assert_eq!(
            parse_str(r#"{"op":"ping","x":[1]}"#),
            Ok(ClientOp::Ping { id: None })
        );
        assert_eq!(
            parse_str(r#"{"op":"auth","id":4,"token":"a.b.c"}"#),
            Ok(ClientOp::Auth {
                id: Some(4),
                token: "a.b.c".into()
            })
        );
        let Ok(ClientOp::Subscribe {
            id,
            targets,
            options,
        }) = parse_str(r#"{"op":"subscribe","id":1,"channels":["quotes.*","a.b","a.b"]}"#)
        else {
            panic!("subscribe expected")
        };
        assert_eq!(id, Some(1));
        assert_eq!(targets.len(), 2, "repeats collapse");
        assert_eq!(options, SubscribeOptions::default());
    }

    #[test]
    fn subscribe_options_are_parsed() {
        let Ok(ClientOp::Subscribe { options, .. }) = parse_str(
            r#"{"op":"subscribe","channels":["q.A"],"fields":["bid","ask"],"max_hz":2.5,
                "since":{"q.A":41,"q.B":0},"epoch":"e1"}"#,
        ) else {
            panic!("subscribe expected")
        };
        assert_eq!(
            options.fields,
            Some(vec!["bid".to_owned(), "ask".to_owned()])
        );
        assert_eq!(options.max_hz, Some(2.5));
        assert_eq!(options.since.get("q.A"), Some(&41));
        assert_eq!(options.since.get("q.B"), Some(&0));
        assert_eq!(options.epoch.as_deref(), Some("e1"));
        let Ok(ClientOp::Subscribe { options, .. }) =
            parse_str(r#"{"op":"subscribe","channels":["q.A"],"fields":null,"max_hz":null}"#)
        else {
            panic!("subscribe expected")
        };
        assert_eq!(options, SubscribeOptions::default(), "null means absent");
    }

    #[test]
    fn bad_subscribe_options_are_refused() {
        use ErrorCode::*;
        let sub = |extra: &str| {
            code(&format!(
                r#"{{"op":"subscribe","id":9,"channels":["q.A"],{extra}}}"#
            ))
        };
        for extra in [
            r#""fields":[]"#,
            r#""fields":"bid""#,
            r#""fields":[""]"#,
            r#""fields":[1]"#,
            r#""max_hz":0"#,
            r#""max_hz":-1"#,
            r#""max_hz":"fast""#,
            r#""since":[1]"#,
            r#""since":{"q.A":-1}"#,
            r#""since":{"q.A":1.5}"#,
            r#""since":{"q.*":1}"#,
            r#""epoch":7"#,
        ] {
            assert_eq!(sub(extra), (Some(9), BadRequest), "{extra}");
        }
        let many: Vec<String> = (0..=MAX_FIELDS).map(|i| format!("\"f{i}\"")).collect();
        assert_eq!(
            sub(&format!(r#""fields":[{}]"#, many.join(","))),
            (Some(9), Limit)
        );
    }

    #[test]
    fn the_fields_limit_is_the_configured_one() {
        let limits = RequestLimits {
            max_fields: 2,
            ..RequestLimits::default()
        };
        let mut two =
            br#"{"op":"subscribe","id":1,"channels":["q.A"],"fields":["a","b"]}"#.to_vec();
        assert!(parse(&mut two, &limits).is_ok());
        let mut three =
            br#"{"op":"subscribe","id":1,"channels":["q.A"],"fields":["a","b","c"]}"#.to_vec();
        let err = parse(&mut three, &limits).unwrap_err();
        assert_eq!((err.id, err.code), (Some(1), ErrorCode::Limit));
        assert!(
            err.message.contains("limits.max_fields_per_subscribe"),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_requests_get_the_right_code_and_keep_the_id() {
        use ErrorCode::*;
        assert_eq!(code("{"), (None, BadRequest));
        assert_eq!(code("[]"), (None, BadRequest));
        assert_eq!(code(r#"{"op":"ping","id":"x"}"#), (None, BadRequest));
        assert_eq!(code(r#"{"id":2}"#), (Some(2), BadRequest));
        assert_eq!(code(r#"{"op":"dance","id":2}"#), (Some(2), BadRequest));
        assert_eq!(code(r#"{"op":"auth","id":2}"#), (Some(2), BadRequest));
        assert_eq!(
            code(r#"{"op":"auth","id":2,"token":7}"#),
            (Some(2), BadRequest)
        );
        assert_eq!(code(r#"{"op":"subscribe","id":2}"#), (Some(2), BadRequest));
        assert_eq!(
            code(r#"{"op":"subscribe","id":2,"channels":[]}"#),
            (Some(2), BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","id":2,"channels":["a..b"]}"#),
            (Some(2), BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","id":2,"channels":[1]}"#),
            (Some(2), BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","id":2,"channels":["a","b","c","d","e"]}"#),
            (Some(2), Limit)
        );
    }

    fn ping_nested(depth: usize) -> String {
        format!(
            r#"{{"op":"ping","id":5,"x":{}{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    /// Nesting is refused before simd-json builds a (recursive) value: a
    /// million levels would overflow the stack if it got that far.
    #[test]
    fn too_deep_messages_are_refused_before_parsing() {
        let limit = json_depth::DEFAULT_LIMIT;
        assert_eq!(
            parse_str(&ping_nested(limit)),
            Ok(ClientOp::Ping { id: Some(5) })
        );
        let err = parse_str(&ping_nested(limit + 1)).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("limits.max_json_depth"), "{err:?}");
        assert!(err.message.contains(&limit.to_string()), "{err:?}");
        let mut huge = ping_nested(1_000_000).into_bytes();
        let limits = RequestLimits {
            max_channels: 4,
            max_depth: 8,
            ..RequestLimits::default()
        };
        let err = parse(&mut huge, &limits).unwrap_err();
        assert_eq!(
            (err.code, err.message.contains("8 levels")),
            (ErrorCode::BadRequest, true)
        );
    }
}
