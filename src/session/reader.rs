//! The read half: client frames in, engine commands out.

use super::frames::{FrameError, FrameReader, OpCode, ReadSocket};
use super::outbox::Outbox;
use super::protocol::{self, ClientOp};
use super::SessionLimits;
use crate::engine::{Command, EngineHandle, SessionId};
use crate::wire::{self, CloseCode, ErrorCode};

/// Reads frames until the client closes, the connection fails, or a frame
/// breaks a limit or the protocol (then the close frame is queued here).
pub async fn read_loop<S: ReadSocket>(
    mut frames: FrameReader<S>,
    session: SessionId,
    engine: &EngineHandle,
    outbox: &Outbox,
    limits: &SessionLimits,
) {
    // Text split over continuation frames, bounded like a single frame.
    let mut partial: Option<Vec<u8>> = None;
    loop {
        let frame = match frames.read_frame().await {
            Ok(frame) => frame,
            Err(e) => return close_on_error(e, outbox, limits),
        };
        let message = match (frame.opcode, frame.fin) {
            (OpCode::Text, true) if partial.is_none() => frame.payload.to_vec(),
            (OpCode::Text, false) if partial.is_none() => {
                partial = Some(frame.payload.to_vec());
                continue;
            }
            (OpCode::Continuation, fin) if partial.is_some() => {
                let buf = partial.as_mut().expect("checked above");
                if buf.len() + frame.payload.len() > limits.max_message_bytes {
                    return close_too_big(outbox, limits);
                }
                buf.extend_from_slice(&frame.payload);
                if !fin {
                    continue;
                }
                partial.take().expect("checked above")
            }
            (OpCode::Ping, _) => {
                outbox.push(wire::pong_frame(&frame.payload));
                continue;
            }
            (OpCode::Pong, _) => continue,
            (OpCode::Close, _) => {
                if frame.payload.len() == 1 {
                    return close_protocol(outbox, "close frame with a one-byte payload");
                }
                // Echo the client's close (RFC 6455 section 5.5.1); the
                // writer sends it after what is queued and ends the session.
                outbox.close(wire::close_raw(&frame.payload), false);
                return;
            }
            (OpCode::Binary, true) if partial.is_none() => {
                let frame = wire::error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not accepted: send JSON text frames",
                );
                let reply = Command::Reply { session, frame };
                if Box::pin(engine.send(reply)).await.is_err() {
                    return;
                }
                continue;
            }
            _ => return close_protocol(outbox, "unexpected frame order"),
        };
        if std::str::from_utf8(&message).is_err() {
            // 1007: invalid frame payload data (RFC 6455 section 7.4.1).
            let close = wire::close_with_code(1007, "text message is not valid UTF-8");
            outbox.close(close, false);
            return;
        }
        if handle_message(message, session, engine, limits)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn handle_message(
    mut message: Vec<u8>,
    session: SessionId,
    engine: &EngineHandle,
    limits: &SessionLimits,
) -> Result<(), crate::engine::EngineGone> {
    let command = match protocol::parse(
        &mut message,
        limits.max_channels_per_request,
        limits.max_json_depth,
    ) {
        Ok(ClientOp::Subscribe {
            id,
            targets,
            options,
        }) => Command::Subscribe {
            session,
            id,
            targets,
            options,
        },
        Ok(ClientOp::Unsubscribe { id, targets }) => Command::Unsubscribe {
            session,
            id,
            targets,
        },
        Ok(ClientOp::Ping { id }) => Command::Reply {
            session,
            frame: wire::pong(id),
        },
        Err(e) => Command::Reply {
            session,
            frame: wire::error(e.id, e.code, &e.message),
        },
    };
    // Boxed: the send future (with the command) is large and rare, and a
    // state of this future lives in every idle connection's task.
    Box::pin(engine.send(command)).await
}

fn close_on_error(error: FrameError, outbox: &Outbox, limits: &SessionLimits) {
    match error {
        FrameError::TooLarge(_) => close_too_big(outbox, limits),
        FrameError::Eof | FrameError::Io(_) => {}
        FrameError::Protocol(why) => close_protocol(outbox, why),
    }
}

fn close_too_big(outbox: &Outbox, limits: &SessionLimits) {
    let reason = format!(
        "message too large (limit {} bytes)",
        limits.max_message_bytes
    );
    outbox.close(wire::close(CloseCode::TooBig, &reason), false);
}

fn close_protocol(outbox: &Outbox, reason: &str) {
    // 1002: protocol error (RFC 6455 section 7.4.1).
    outbox.close(wire::close_with_code(1002, reason), false);
}
