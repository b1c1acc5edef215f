//! The read half: client frames in, engine commands out.

use std::future::Future;
use std::sync::Arc;

use super::frames::{FrameError, FrameReader, OpCode, ReadSocket};
use super::message_rate::{self, MessageBudget, Verdict};
use super::outbox::Outbox;
use super::protocol::{self, ClientOp};
use super::{SessionLimits, Shared};
use crate::auth::{Grant, TokenError};
use crate::deflate::{self, InflateError};
use crate::engine::{Command, SessionId};
use crate::wire::{self, CloseCode, ErrorCode};

/// Reads frames until the client closes, the connection fails, or a frame
/// breaks a limit or the protocol (then the close frame is queued here).
///
/// Owns what it uses, and keeps little across its waits: an idle
/// connection holds this future for its whole life (docs/benchmarks.md).
///
/// A function returning an `async move` block rather than an `async fn`:
/// an `async fn` would keep its arguments twice (as passed, and as moved
/// into its body).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn read_loop<S: ReadSocket + Send + Sync>(
    mut frames: FrameReader<S>,
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
    session: SessionId,
) -> impl Future<Output = ()> + Send {
    async move {
        // Nothing borrowed from `shared` or `outbox` is kept in a local:
        // each would be one more pointer in every idle reader's state.
        // limits.messages_per_sec: a few bytes of allowance, no timer.
        let mut budget = MessageBudget::default();
        // Text split over continuation frames, bounded like a single frame.
        // Boxed: fragmented messages are rare, and the box is 16 bytes less
        // in every idle reader than the vector.
        let mut partial: Option<Box<Partial>> = None;
        loop {
            let deflate = outbox.deflate().is_some();
            let frame = match frames
                .read_frame(outbox.activity(), shared.limits.max_message_bytes, deflate)
                .await
            {
                Ok(frame) => frame,
                Err(e) => return close_on_error(e, &outbox, &shared.limits),
            };
            // Handled by a plain function: nothing of a frame's handling
            // stays in the reader's state across its two waits.
            let state = Reading {
                partial: &mut partial,
                budget: &mut budget,
                session,
                limits: &shared.limits,
                outbox: &outbox,
                metrics: &shared.metrics,
            };
            match state.on_frame(frame) {
                Step::Next => {}
                Step::End => return,
                // Boxed: the send future (with the command) is large and
                // brief, and would otherwise sit in every idle reader.
                Step::Send(command) => {
                    if Box::pin(shared.engine.send(command)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// What a frame leads to.
enum Step {
    /// Read the next frame.
    Next,
    /// The session is over (the close frame, if any, is queued).
    End,
    /// Send this to the engine, then read the next frame.
    Send(Command),
}

/// A text message split over frames, so far.
struct Partial {
    bytes: Vec<u8>,
    /// Its first frame had RSV1 set: inflate it once whole.
    compressed: bool,
}

/// The reader's state while it handles one frame.
struct Reading<'a> {
    partial: &'a mut Option<Box<Partial>>,
    budget: &'a mut MessageBudget,
    session: SessionId,
    limits: &'a SessionLimits,
    outbox: &'a Outbox,
    metrics: &'a crate::metrics::Metrics,
}

impl Reading<'_> {
    fn on_frame(self, frame: super::frames::Frame) -> Step {
        let Reading {
            partial,
            budget,
            session,
            limits,
            outbox,
            metrics,
        } = self;
        if partial.is_none() {
            // A whole frame is in; the frame timeout runs on only to the
            // end of a fragmented message.
            outbox.activity().frame_done();
        }
        // limits.messages_per_sec: a refused message is answered and dropped.
        if message_rate::completes_a_message(frame.opcode, frame.fin, partial.is_some()) {
            match message_rate::check(budget, &limits.messages, outbox, metrics) {
                Verdict::Act => {}
                Verdict::Close => return Step::End,
                Verdict::Refuse => {
                    if frame.opcode == OpCode::Continuation {
                        // The end of a fragmented message: drop all of it.
                        *partial = None;
                        outbox.activity().frame_done();
                    }
                    return Step::Send(message_rate::refusal(session, &limits.messages));
                }
            }
        }
        let (message, compressed) = match (frame.opcode, frame.fin) {
            (OpCode::Text, true) if partial.is_none() => (frame.payload.to_vec(), frame.compressed),
            (OpCode::Text, false) if partial.is_none() => {
                outbox.activity().frame_begun();
                *partial = Some(Box::new(Partial {
                    bytes: frame.payload.to_vec(),
                    compressed: frame.compressed,
                }));
                return Step::Next;
            }
            (OpCode::Continuation, fin) if partial.is_some() => {
                let buf = &mut partial.as_mut().expect("checked above").bytes;
                if buf.len() + frame.payload.len() > limits.max_message_bytes {
                    close_too_big(outbox, limits);
                    return Step::End;
                }
                buf.extend_from_slice(&frame.payload);
                if !fin {
                    return Step::Next;
                }
                outbox.activity().frame_done();
                let whole = *partial.take().expect("checked above");
                (whole.bytes, whole.compressed)
            }
            (OpCode::Ping, _) => {
                outbox.push(wire::pong_frame(&frame.payload));
                return Step::Next;
            }
            (OpCode::Pong, _) => return Step::Next,
            (OpCode::Close, _) => {
                answer_close(&frame.payload, outbox);
                return Step::End;
            }
            (OpCode::Binary, true) if partial.is_none() => {
                let frame = wire::error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not accepted: send JSON text frames",
                );
                return Step::Send(Command::Reply { session, frame });
            }
            _ => {
                close_protocol(outbox, "unexpected frame order");
                return Step::End;
            }
        };
        let message = if compressed {
            // Bounded like any message: a bomb stops at the limit (1009).
            match deflate::inflate(&message, limits.max_message_bytes) {
                Ok(message) => message,
                Err(InflateError::TooLarge) => {
                    close_too_big(outbox, limits);
                    return Step::End;
                }
                Err(InflateError::Corrupt) => {
                    let close =
                        wire::close_with_code(1007, "compressed message is not valid deflate data");
                    outbox.close(close, false);
                    return Step::End;
                }
            }
        } else {
            message
        };
        if std::str::from_utf8(&message).is_err() {
            // 1007: invalid frame payload data (RFC 6455 section 7.4.1).
            let close = wire::close_with_code(1007, "text message is not valid UTF-8");
            outbox.close(close, false);
            return Step::End;
        }
        Step::Send(command_for(message, session, limits, outbox))
    }
}

/// What one client message asks of the engine (a reply, for an error).
/// Not async: nothing of it stays in the connection's task.
fn command_for(
    mut message: Vec<u8>,
    session: SessionId,
    limits: &SessionLimits,
    outbox: &Outbox,
) -> Command {
    match protocol::parse(&mut message, &limits.requests) {
        Ok(ClientOp::Subscribe {
            id,
            targets,
            options,
        }) => match limits
            .auth
            .check_subscribe(grant_of(outbox, limits).as_deref(), &targets)
        {
            // Refused whole, like any error: nothing is subscribed.
            Err(why) => Command::Reply {
                session,
                frame: wire::error(id, ErrorCode::Forbidden, &why),
            },
            Ok(()) => {
                for target in &targets {
                    crate::fault::inject(target.as_str(), "a session");
                }
                Command::Subscribe {
                    session,
                    id,
                    targets,
                    options,
                }
            }
        },
        Ok(ClientOp::Auth { id, token }) => refresh(id, &token, session, limits, outbox),
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
    }
}

/// The connection's grant, where grants exist (a server with a token key).
fn grant_of(outbox: &Outbox, limits: &SessionLimits) -> Option<Arc<Grant>> {
    limits.auth.tokens.as_ref()?;
    outbox.grant()
}

/// `{"op":"auth"}`: a valid token's grant replaces the connection's and its
/// `exp` becomes the connection's deadline, and what the connection had
/// subscribed beyond the new grant is unsubscribed (a narrower token
/// revokes); a bad one changes nothing (the connection keeps its grant and
/// deadline) and is answered `forbidden`.
fn refresh(
    id: Option<i64>,
    token: &str,
    session: SessionId,
    limits: &SessionLimits,
    outbox: &Outbox,
) -> Command {
    let frame = match limits.auth.refresh(token) {
        Ok(fresh) => {
            let reply = crate::auth::authed_reply(id, &fresh);
            let grant = Arc::new(fresh);
            outbox.set_grant(grant.clone());
            let auth = limits.auth.clone();
            return Command::Regrant {
                session,
                reply,
                allows: Box::new(move |target| auth.may_subscribe(Some(&grant), target)),
            };
        }
        Err(TokenError::NotConfigured) => wire::error(
            id,
            ErrorCode::Unsupported,
            &TokenError::NotConfigured.to_string(),
        ),
        Err(e) => wire::error(id, ErrorCode::Forbidden, &e.to_string()),
    };
    Command::Reply { session, frame }
}

/// Echoes a valid client close (RFC 6455 section 5.5.1; the writer sends it
/// after what is queued and ends the session); fails the connection on an
/// invalid one.
fn answer_close(payload: &[u8], outbox: &Outbox) {
    if payload.len() == 1 {
        return close_protocol(outbox, "close frame with a one-byte payload");
    }
    if let [high, low, reason @ ..] = payload {
        let code = u16::from_be_bytes([*high, *low]);
        if !is_valid_close_code(code) {
            return close_protocol(outbox, "invalid close code");
        }
        if std::str::from_utf8(reason).is_err() {
            let close = wire::close_with_code(1007, "close reason is not valid UTF-8");
            return outbox.close(close, false);
        }
    }
    outbox.close(wire::close_raw(payload), false);
}

/// Codes a peer may send in a close frame (RFC 6455 section 7.4 and the
/// IANA registry): the defined 1000-1003 and 1007-1014, and 3000-4999 for
/// libraries and applications. 1004 is reserved, 1005, 1006 and 1015 must
/// never be sent, and the rest of 0-2999 is unassigned.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_checked_as_rfc_6455_says() {
        for valid in [1000, 1001, 1002, 1003, 1007, 1011, 1013, 1014, 3000, 4999] {
            assert!(is_valid_close_code(valid), "{valid}");
        }
        for invalid in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(invalid), "{invalid}");
        }
    }
}
