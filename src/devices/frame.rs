//! Device frames: newline-delimited JSON on TCP, one JSON message per `/device` websocket
//! message, at most [`MAX_DEVICE_FRAME`] bytes either way.
//!
//! Invariant: every frame a device sends goes through [`decode_frame`] (size, UTF-8, JSON) and
//! then [`DeviceFrame::parse`] (its type); a frame that fails the first ends the connection,
//! one that fails the second gets a `bad_frame` error and the connection goes on.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// Largest frame a device may send, in bytes (including the newline).
pub const MAX_DEVICE_FRAME: usize = 4096;
/// Most bytes of call `params` or sent `data` (as JSON), so that every frame a device is sent
/// fits in `MAX_DEVICE_FRAME` too, envelope included.
pub const MAX_DEVICE_PAYLOAD: usize = MAX_DEVICE_FRAME - 512;

/// A frame a device sends.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceFrame {
    Hello {
        device_id: String,
        token: String,
    },
    Ping,
    Reply {
        id: String,
        result: Option<Value>,
        error: Option<Value>,
    },
    Event {
        name: Option<String>,
        data: Option<Value>,
    },
}

impl DeviceFrame {
    /// The frame a decoded JSON value is, by its `type`; `None` for an unknown type or a
    /// missing field. Taken apart by hand rather than by serde's internally tagged enums, which
    /// copy the whole frame into a buffer first: this moves the fields out (a reply's result
    /// is the device's answer, passed on as it is).
    pub fn parse(value: Value) -> Option<Self> {
        let Value::Object(mut map) = value else {
            return None;
        };
        let mut string = |key: &str| match map.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let kind = string("type")?;
        match kind.as_str() {
            "ping" => Some(DeviceFrame::Ping),
            "hello" => Some(DeviceFrame::Hello {
                device_id: string("device_id")?,
                token: string("token")?,
            }),
            "reply" => Some(DeviceFrame::Reply {
                id: string("id")?,
                result: map.remove("result"),
                error: map.remove("error"),
            }),
            "event" => Some(DeviceFrame::Event {
                name: string("name"),
                data: map.remove("data"),
            }),
            _ => None,
        }
    }
}

/// Reads one newline-terminated JSON frame. `Ok(None)` at end of stream; `Err(code)` for an
/// oversized, non-UTF-8 or non-JSON frame. Cancel-safe: bytes of a frame read so far stay in
/// `buf` until the frame is complete.
pub(super) async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<Option<Value>, &'static str> {
    loop {
        let room = (MAX_DEVICE_FRAME + 1).saturating_sub(buf.len()) as u64;
        let n = (&mut *reader)
            .take(room)
            .read_until(b'\n', buf)
            .await
            .map_err(|_| "read_error")?;
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_DEVICE_FRAME {
                buf.clear();
                return Err("frame_too_large");
            }
            if n != 0 {
                continue;
            }
            if buf.is_empty() {
                return Ok(None);
            }
            // End of stream after an unterminated frame: take it as the last one.
        }
        let parsed = decode_frame(buf);
        buf.clear();
        match parsed {
            Ok(None) if n == 0 => return Ok(None),
            Ok(None) => continue,
            other => return other,
        }
    }
}

/// Decodes one device frame (a TCP line without its newline, or a `/device` websocket
/// message): `Ok(None)` for a blank frame, `Err(code)` for one over [`MAX_DEVICE_FRAME`],
/// not UTF-8, or not JSON. Every frame a device sends goes through here.
pub fn decode_frame(bytes: &[u8]) -> Result<Option<Value>, &'static str> {
    if bytes.len() > MAX_DEVICE_FRAME {
        return Err("frame_too_large");
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "bad_frame")?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text.trim())
        .map(Some)
        .map_err(|_| "bad_frame")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_parse_by_type_and_refuse_what_they_lack() {
        let parse = |v: Value| DeviceFrame::parse(v);
        assert_eq!(parse(json!({"type": "ping"})), Some(DeviceFrame::Ping));
        assert_eq!(
            parse(json!({"type": "hello", "device_id": "g", "token": "t", "extra": 1})),
            Some(DeviceFrame::Hello {
                device_id: "g".into(),
                token: "t".into()
            })
        );
        assert_eq!(
            parse(json!({"type": "reply", "id": "c", "result": {"ok": true}})),
            Some(DeviceFrame::Reply {
                id: "c".into(),
                result: Some(json!({"ok": true})),
                error: None
            })
        );
        assert_eq!(
            parse(json!({"type": "event", "data": 1})),
            Some(DeviceFrame::Event {
                name: None,
                data: Some(json!(1))
            })
        );
        for bad in [
            json!({"type": "hello", "device_id": "g"}),
            json!({"type": "reply", "id": 5}),
            json!({"type": "dance"}),
            json!({"id": "c"}),
            json!([1, 2]),
            json!("ping"),
        ] {
            assert_eq!(parse(bad.clone()), None, "{bad}");
        }
    }
}
