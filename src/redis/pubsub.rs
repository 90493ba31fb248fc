//! Sharded pub/sub connections: the command side ([`Subscriptions`]) and the message side
//! ([`Messages`]) of one subscriber.
//!
//! Invariant: every subscription is `SSUBSCRIBE` and every message a shard message; when the
//! connection is lost, [`Messages::next`] ends and the owner rebuilds and catches up.

use redis::{RedisResult, Value};
use tokio::sync::mpsc;

use super::target::Conn;

/// The command side of a subscriber: (un)subscribe and probe. Cheap to clone.
#[derive(Clone)]
pub struct Subscriptions {
    conn: Conn,
}

impl Subscriptions {
    pub(super) fn new(conn: Conn) -> Self {
        Self { conn }
    }
}

impl Subscriptions {
    /// `SSUBSCRIBE` to each channel (one command per channel, so that every confirmation
    /// answers its own command; they are pipelined on the connection).
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        self.each(true, channels).await
    }

    /// `SUNSUBSCRIBE` from each channel.
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        self.each(false, channels).await
    }

    async fn each(&mut self, subscribe: bool, channels: &[String]) -> RedisResult<()> {
        let calls = channels.iter().map(|channel| {
            let mut conn = self.conn.clone();
            async move {
                match (&mut conn, subscribe) {
                    // The cluster connection routes each channel to its shard and subscribes
                    // again by itself after a node reconnects.
                    (Conn::Cluster(c), true) => c.ssubscribe(channel).await,
                    (Conn::Cluster(c), false) => c.sunsubscribe(channel).await,
                    (_, true) => {
                        redis::cmd("SSUBSCRIBE")
                            .arg(channel)
                            .exec_async(&mut conn)
                            .await
                    }
                    (_, false) => {
                        redis::cmd("SUNSUBSCRIBE")
                            .arg(channel)
                            .exec_async(&mut conn)
                            .await
                    }
                }
            }
        });
        for result in futures::future::join_all(calls).await {
            result?;
        }
        Ok(())
    }

    /// A round trip on the subscriber connection (every node of a Cluster).
    pub async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING").exec_async(&mut self.conn).await
    }
}

/// A message on a subscribed channel.
pub struct Message {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// The message side of a subscriber.
pub struct Messages {
    rx: mpsc::UnboundedReceiver<redis::PushInfo>,
}

impl Messages {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<redis::PushInfo>) -> Self {
        Self { rx }
    }
}

/// What a subscriber hears.
pub enum Event {
    Message(Message),
    /// The server ended the subscription to this channel: the answer to our own `SUNSUBSCRIBE`,
    /// or, unasked, because the channel's Cluster slot moved to another master.
    Unsubscribed(String),
}

impl Messages {
    /// The next message; `None` once the connection is lost (or any node's, on a Cluster).
    pub async fn next(&mut self) -> Option<Message> {
        loop {
            if let Event::Message(m) = self.next_event().await? {
                return Some(m);
            }
        }
    }

    /// The next message or unsubscription; `None` once the connection is lost.
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            let push = self.rx.recv().await?;
            match push.kind {
                redis::PushKind::SUnsubscribe => {
                    if let Some(Value::BulkString(b)) = push.data.into_iter().next() {
                        return Some(Event::Unsubscribed(
                            String::from_utf8_lossy(&b).into_owned(),
                        ));
                    }
                }
                redis::PushKind::SMessage | redis::PushKind::Message => {
                    let mut data = push.data.into_iter();
                    let channel = match data.next() {
                        Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
                        _ => continue,
                    };
                    let payload = match data.next() {
                        Some(Value::BulkString(b)) => b,
                        _ => continue,
                    };
                    return Some(Event::Message(Message { channel, payload }));
                }
                redis::PushKind::Disconnection => return None,
                _ => continue,
            }
        }
    }
}
