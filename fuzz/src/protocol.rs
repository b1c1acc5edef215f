//! The client-message parser (`tickcast::session::protocol::parse`).
//!
//! Input: one text message as a client sends it. Checked, for a small and
//! for the default `max_channels`:
//! - no panic;
//! - an accepted message is a JSON object (serde_json agrees) whose `op` is
//!   the op returned, with between 1 and `max_channels` distinct targets;
//! - a refusal carries a message, and echoes an `id` only if the request
//!   had that integer `id`; too many channels is a `limit` error.

use serde_json::Value;
use tickcast::session::protocol::{self, ClientOp, ProtocolError};
use tickcast::wire::ErrorCode;

/// A small limit (reachable by short inputs) and the server's default.
const MAX_CHANNELS: [usize; 2] = [3, 1024];

pub fn check(data: &[u8]) {
    for max_channels in MAX_CHANNELS {
        let mut scratch = data.to_vec();
        let outcome = parse_message(&mut scratch, max_channels);
        let reference = reference(data);
        match outcome {
            Ok(op) => accepted(data, &op, reference, max_channels),
            Err(error) => refused(&error, reference, max_channels),
        }
    }
}

/// The one place the target calls tickcast's parser.
fn parse_message(text: &mut [u8], max_channels: usize) -> Result<ClientOp, ProtocolError> {
    let limits = protocol::RequestLimits {
        max_channels,
        ..protocol::RequestLimits::default()
    };
    protocol::parse(text, &limits)
}

/// The message as serde_json reads it: `None` if it is not JSON (or is
/// deeper than serde_json's own recursion limit, where it cannot say).
fn reference(data: &[u8]) -> Option<Result<Value, ()>> {
    match serde_json::from_slice::<Value>(data) {
        Ok(value) => Some(Ok(value)),
        Err(e) if e.to_string().contains("recursion limit") => None,
        Err(_) => Some(Err(())),
    }
}

fn accepted(data: &[u8], op: &ClientOp, reference: Option<Result<Value, ()>>, max_channels: usize) {
    let (name, id, targets) = match op {
        ClientOp::Ping { id } => ("ping", *id, None),
        ClientOp::Subscribe { id, targets, .. } => ("subscribe", *id, Some(targets)),
        ClientOp::Unsubscribe { id, targets } => ("unsubscribe", *id, Some(targets)),
        ClientOp::Auth { id, .. } => ("auth", *id, None),
    };
    if let Some(targets) = targets {
        assert!(
            (1..=max_channels).contains(&targets.len()),
            "{} targets with max_channels {max_channels}",
            targets.len()
        );
        for (i, target) in targets.iter().enumerate() {
            assert!(!targets[..i].contains(target), "targets repeat");
        }
    }
    let Some(reference) = reference else {
        return;
    };
    let Ok(Value::Object(message)) = reference else {
        panic!(
            "accepted {:?} as {op:?}; serde_json does not read it as an object",
            String::from_utf8_lossy(data)
        );
    };
    assert_eq!(message.get("op"), Some(&Value::from(name)), "op");
    assert_eq!(id_of(&message), id, "id");
}

fn refused(error: &ProtocolError, reference: Option<Result<Value, ()>>, max_channels: usize) {
    assert!(!error.message.is_empty(), "an error without a message");
    let Some(reference) = reference else {
        return;
    };
    let message = match reference {
        Ok(Value::Object(message)) => message,
        // Not an object: nothing to echo.
        _ => {
            assert_eq!(error.id, None, "an id echoed from a non-object");
            return;
        }
    };
    if error.id.is_some() {
        assert_eq!(error.id, id_of(&message), "echoed id");
    }
    let channels = message.get("channels").and_then(Value::as_array);
    if error.code == ErrorCode::Limit && channels.is_some_and(|list| list.len() <= max_channels) {
        assert!(
            message
                .get("fields")
                .and_then(Value::as_array)
                .is_some_and(|f| f.len() > protocol::MAX_FIELDS),
            "a limit error for a request within the limits: {}",
            error.message
        );
    }
}

/// The request's `id` if it is an integer (PROTOCOL.md).
/// serde_json reads `-0` as a float; tickcast (simd-json) reads it as the
/// integer 0, which is what it means, so the oracle does too.
fn id_of(message: &serde_json::Map<String, Value>) -> Option<i64> {
    let id = message.get("id")?;
    id.as_i64()
        .or_else(|| (id.as_f64() == Some(0.0) && id.to_string() == "-0.0").then_some(0))
}
