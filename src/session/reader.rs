//! The read half: client frames in, engine commands out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use tokio::io::{AsyncRead, ReadBuf};

use super::outbox::Outbox;
use super::protocol::{self, ClientOp};
use super::SessionLimits;
use crate::engine::{Command, EngineHandle, SessionId};
use crate::wire::{self, CloseCode, ErrorCode};

/// Reads frames until the client closes, the connection fails, or a frame
/// breaks a limit (then the close frame is queued here).
pub async fn read_loop<R: AsyncRead + Unpin>(
    read: R,
    session: SessionId,
    engine: &EngineHandle,
    outbox: &Outbox,
    limits: &SessionLimits,
) {
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws.set_max_message_size(limits.max_message_bytes);
    // Pongs and close echoes the protocol owes go to our writer.
    let mut obligated = |frame: Frame<'_>| {
        let bytes = match frame.opcode {
            OpCode::Pong => Some(wire::pong_frame(&frame.payload)),
            OpCode::Close => {
                outbox.close(wire::close_raw(&frame.payload), false);
                None
            }
            _ => None,
        };
        if let Some(bytes) = bytes {
            outbox.push(bytes);
        }
        std::future::ready(Ok::<(), std::convert::Infallible>(()))
    };
    // Text split over continuation frames, bounded like a single frame.
    let mut partial: Option<Vec<u8>> = None;
    loop {
        let frame = match ws.read_frame(&mut obligated).await {
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
                let message = partial.take().expect("checked above");
                if std::str::from_utf8(&message).is_err() {
                    return close_protocol(outbox, "text message is not valid UTF-8");
                }
                message
            }
            (OpCode::Close, _) => return,
            (OpCode::Ping | OpCode::Pong, _) => continue,
            (OpCode::Binary, _) if partial.is_none() => {
                let frame = wire::error(
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not accepted: send JSON text frames",
                );
                if engine
                    .send(Command::Reply { session, frame })
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            _ => return close_protocol(outbox, "unexpected frame order"),
        };
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
    let command = match protocol::parse(&mut message, limits.max_channels_per_request) {
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
    engine.send(command).await
}

fn close_on_error(error: WebSocketError, outbox: &Outbox, limits: &SessionLimits) {
    match error {
        WebSocketError::FrameTooLarge => close_too_big(outbox, limits),
        WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => {}
        WebSocketError::InvalidUTF8 => close_protocol(outbox, "text frame is not valid UTF-8"),
        other => close_protocol(outbox, &other.to_string()),
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
    let frame = wire::close_with_code(1002, reason);
    outbox.close(frame, false);
}

/// A reader that first yields bytes that were read ahead during the HTTP
/// upgrade, then reads from the socket.
pub struct Prefixed<R> {
    prefix: Bytes,
    inner: R,
}

impl<R> Prefixed<R> {
    pub fn new(prefix: Bytes, inner: R) -> Self {
        Self { prefix, inner }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
