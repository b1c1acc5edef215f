//! Client-to-server messages: parsing and validation (PROTOCOL.md, "Client
//! to server"). Every problem becomes a [`ProtocolError`] that is answered
//! with an `error` reply; the connection stays open.

use serde_json::Value;

use crate::channel::Pattern;
use crate::wire::ErrorCode;

/// A valid client request.
#[derive(Debug, PartialEq)]
pub enum ClientOp {
    Subscribe {
        id: Option<i64>,
        targets: Vec<Pattern>,
    },
    Unsubscribe {
        id: Option<i64>,
        targets: Vec<Pattern>,
    },
    Ping {
        id: Option<i64>,
    },
}

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

/// Parses one text message. `max_channels` bounds the `channels` array.
/// The buffer is scratch space for simd-json.
pub fn parse(text: &mut [u8], max_channels: usize) -> Result<ClientOp, ProtocolError> {
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
        _ => return Err(bad("missing op: use subscribe, unsubscribe or ping".into())),
    };
    match op {
        "ping" => Ok(ClientOp::Ping { id }),
        "subscribe" => {
            for option in ["fields", "max_hz", "since", "epoch"] {
                if message.get(option).is_some_and(|v| !v.is_null()) {
                    return Err(ProtocolError::new(
                        id,
                        ErrorCode::Unsupported,
                        format!("{option} is not supported by this server version"),
                    ));
                }
            }
            let targets = targets(id, message.get("channels"), max_channels)?;
            Ok(ClientOp::Subscribe { id, targets })
        }
        "unsubscribe" => {
            let targets = targets(id, message.get("channels"), max_channels)?;
            Ok(ClientOp::Unsubscribe { id, targets })
        }
        other => Err(bad(format!(
            "unknown op {other:?}: use subscribe, unsubscribe or ping"
        ))),
    }
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
        parse(&mut s.as_bytes().to_vec(), 4)
    }

    fn code(s: &str) -> (Option<i64>, ErrorCode) {
        let e = parse_str(s).unwrap_err();
        (e.id, e.code)
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
        let Ok(ClientOp::Subscribe { id, targets }) =
            parse_str(r#"{"op":"subscribe","id":1,"channels":["quotes.*","a.b","a.b"]}"#)
        else {
            panic!("subscribe expected")
        };
        assert_eq!(id, Some(1));
        assert_eq!(targets.len(), 2, "repeats collapse");
    }

    #[test]
    fn invalid_requests_get_the_right_code_and_keep_the_id() {
        use ErrorCode::*;
        assert_eq!(code("{"), (None, BadRequest));
        assert_eq!(code("[]"), (None, BadRequest));
        assert_eq!(code(r#"{"op":"ping","id":"x"}"#), (None, BadRequest));
        assert_eq!(code(r#"{"id":2}"#), (Some(2), BadRequest));
        assert_eq!(code(r#"{"op":"dance","id":2}"#), (Some(2), BadRequest));
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
}
