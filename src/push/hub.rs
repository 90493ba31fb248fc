//! The node's pub/sub hub: one Redis pub/sub connection, subscribed to exactly the order
//! channels this node has local subscribers for, fanning each result out to them.
//!
//! Invariant: the set of Redis subscriptions equals the set of orders in `subs` whenever the
//! connection is up, but for orders whose last follower has just left (queued in `unfollowed`,
//! unsubscribed by the hub's own task moments later). SUBSCRIBE/UNSUBSCRIBE and reconnects are
//! serialized by the `sink` lock, and the hub re-checks `subs` under it before it unsubscribes,
//! so an unsubscribe of the last follower can never undo a concurrent first subscribe. Leaving
//! is synchronous ([`Hub::release`], or dropping a [`Following`]), so a follower whose future is
//! dropped (a long-poll whose client went away) cannot stay registered. After a reconnect every
//! channel is subscribed again and every stored result re-read (subscribers drop what they
//! have seen), so nothing published during the outage is lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::store::Results;
use crate::redis::keys::Keys;
use crate::redis::pubsub::{Event, Message, Messages, Subscriptions};
use crate::util::lock;

/// How often the pub/sub connection is probed with PING.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a probe or a (un)subscribe may take before the connection is rebuilt.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// One result on its way to subscribers.
#[derive(Debug)]
pub struct Push {
    pub order_id: String,
    pub seq: u64,
    /// The complete websocket frame.
    pub frame: String,
}

/// A local follower of one or more orders (a websocket, or a long-poll request).
#[derive(Clone)]
pub struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<Push>>,
    /// Cancelled when the follower's queue is full: it is too slow and must be cut off.
    pub kicked: CancellationToken,
}

impl Subscriber {
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// One follower's registration for one order ([`Hub::follow`]); dropping it leaves.
pub struct Following {
    hub: Hub,
    order_id: String,
    id: u64,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.hub.release(&self.order_id, self.id);
    }
}

/// The registry's state, for metrics.
#[derive(Debug, Default, serde::Serialize)]
pub struct HubStats {
    pub subscriptions: u64,
    pub orders_followed: u64,
    pub pubsub_live: bool,
}

struct Inner {
    keys: Keys,
    results: Results,
    subs: Mutex<HashMap<String, HashMap<u64, Subscriber>>>,
    sink: tokio::sync::Mutex<Option<Subscriptions>>,
    /// Orders whose last local follower left; the hub's task unsubscribes them.
    unfollowed: mpsc::UnboundedSender<String>,
    unfollowed_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    live: AtomicBool,
    next_id: AtomicU64,
    metrics: crate::metrics::Metrics,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    pub fn new(results: Results, metrics: crate::metrics::Metrics) -> Self {
        let (unfollowed, unfollowed_rx) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                keys: results.redis().keys().clone(),
                results,
                subs: Mutex::new(HashMap::new()),
                sink: tokio::sync::Mutex::new(None),
                unfollowed,
                unfollowed_rx: Mutex::new(Some(unfollowed_rx)),
                live: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
                metrics,
            }),
        }
    }

    /// A new follower identity sending into `tx`.
    pub fn subscriber(&self, tx: mpsc::Sender<Arc<Push>>) -> Subscriber {
        Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            kicked: CancellationToken::new(),
        }
    }

    /// True while the pub/sub connection is up and subscribed.
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Counts a websocket connection in or out.
    pub fn connection(&self, opened: bool) {
        if opened {
            self.inner.metrics.ws_connections.inc();
        } else {
            self.inner.metrics.ws_connections.dec();
        }
    }

    /// Registers `sub` as a follower of `order_id`, subscribing the node to the order's channel
    /// if it is the first local follower. Returns once Redis confirmed the subscription, or at
    /// once while Redis is unreachable (the reconnect subscribes and catches up).
    pub async fn subscribe(&self, order_id: &str, sub: Subscriber) {
        let mut sink = self.inner.sink.lock().await;
        let first = {
            let mut subs = lock(&self.inner.subs);
            let followers = subs.entry(order_id.to_string()).or_default();
            let first = followers.is_empty();
            followers.insert(sub.id, sub);
            first
        };
        if first {
            if let Some(s) = sink.as_mut() {
                let channel = self.inner.keys.order_channel(order_id);
                match tokio::time::timeout(REDIS_TIMEOUT, s.subscribe(&[channel])).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(error = %e, "pub/sub subscribe failed; reconnecting");
                        *sink = None;
                    }
                    Err(_) => {
                        warn!("pub/sub subscribe timed out; reconnecting");
                        *sink = None;
                    }
                }
            }
        }
    }

    /// Follows `order_id` as `sub` until the returned guard is dropped: [`subscribe`], with
    /// the registration owned by a value, so a caller whose future is dropped mid-wait (a client
    /// that disconnected) leaves nothing behind.
    ///
    /// [`subscribe`]: Self::subscribe
    pub async fn follow(&self, order_id: &str, sub: Subscriber) -> Following {
        // The guard exists before the first await: dropped during the subscribe, it still
        // removes whatever was registered.
        let guard = Following {
            hub: self.clone(),
            order_id: order_id.to_string(),
            id: sub.id,
        };
        self.subscribe(order_id, sub).await;
        guard
    }

    /// Removes a follower at once; when it was the last one, the hub's task unsubscribes the
    /// node from the order (unless someone follows it again by then). Never waits.
    pub fn release(&self, order_id: &str, id: u64) {
        let last = {
            let mut subs = lock(&self.inner.subs);
            match subs.get_mut(order_id) {
                Some(followers) => {
                    let removed = followers.remove(&id).is_some();
                    if removed && followers.is_empty() {
                        subs.remove(order_id);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            // Fails only when the hub is gone, and with it the subscription.
            let _ = self.inner.unfollowed.send(order_id.to_string());
        }
    }

    /// Unsubscribes the node from `order_id` if nobody follows it (any more). False when the
    /// connection failed and must be rebuilt.
    async fn unsubscribe_if_unfollowed(&self, order_id: &str) -> bool {
        let mut sink = self.inner.sink.lock().await;
        if lock(&self.inner.subs).contains_key(order_id) {
            return true;
        }
        let Some(s) = sink.as_mut() else {
            return true;
        };
        let channel = self.inner.keys.order_channel(order_id);
        if matches!(
            tokio::time::timeout(REDIS_TIMEOUT, s.unsubscribe(&[channel])).await,
            Ok(Ok(()))
        ) {
            true
        } else {
            warn!("pub/sub unsubscribe failed; reconnecting");
            *sink = None;
            false
        }
    }

    /// Hands a result to every local follower of its order; a follower whose queue is full is
    /// cut off (its `kicked` token is cancelled).
    pub fn dispatch(&self, push: Arc<Push>) {
        let subs = lock(&self.inner.subs);
        if let Some(followers) = subs.get(&push.order_id) {
            for sub in followers.values() {
                match sub.tx.try_send(push.clone()) {
                    Ok(()) => {
                        self.inner.metrics.results_pushed.inc();
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if !sub.kicked.is_cancelled() {
                            self.inner.metrics.slow_followers_cut.inc();
                            sub.kicked.cancel();
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> HubStats {
        let subs = lock(&self.inner.subs);
        HubStats {
            subscriptions: subs.values().map(|f| f.len() as u64).sum(),
            orders_followed: subs.len() as u64,
            pubsub_live: self.is_live(),
        }
    }

    /// Keeps the pub/sub connection up until `shutdown`: connects, subscribes every followed
    /// order, catches up on stored results, relays messages, probes, and rebuilds on failure.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(mut unfollowed) = lock(&self.inner.unfollowed_rx).take() else {
            warn!("the pub/sub hub is already running");
            return;
        };
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.connect(&mut unfollowed).await {
                Ok(stream) => {
                    failures = 0;
                    self.inner.live.store(true, Ordering::Release);
                    info!("pub/sub connected");
                    self.catch_up().await;
                    self.relay(stream, &mut unfollowed, &shutdown).await;
                    self.inner.live.store(false, Ordering::Release);
                    *self.inner.sink.lock().await = None;
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "pub/sub connect failed");
                }
            }
            let backoff = crate::util::backoff(failures);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {},
                _ = shutdown.cancelled() => break,
            }
        }
        info!("pub/sub hub stopped");
    }

    async fn connect(
        &self,
        unfollowed: &mut mpsc::UnboundedReceiver<String>,
    ) -> redis::RedisResult<Messages> {
        let (mut sink, stream) =
            tokio::time::timeout(REDIS_TIMEOUT, self.inner.results.redis().subscriber())
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
                })??;
        let mut guard = self.inner.sink.lock().await;
        // A new connection is subscribed to exactly what is followed now: orders left while
        // disconnected need no unsubscribe.
        while unfollowed.try_recv().is_ok() {}
        let channels: Vec<String> = lock(&self.inner.subs)
            .keys()
            .map(|o| self.inner.keys.order_channel(o))
            .collect();
        for chunk in channels.chunks(1000) {
            sink.subscribe(chunk).await?;
        }
        *guard = Some(sink);
        Ok(stream)
    }

    /// Re-reads the stored result of every followed order (results published while the
    /// connection was down); followers drop sequence numbers they have seen.
    async fn catch_up(&self) {
        let orders: Vec<String> = lock(&self.inner.subs).keys().cloned().collect();
        for order_id in orders {
            self.catch_up_order(&order_id).await;
        }
    }

    /// Re-reads one order's stored result and hands it to its followers.
    async fn catch_up_order(&self, order_id: &str) {
        if let Ok(Some((seq, payload))) = self.inner.results.read(order_id).await {
            let frame = super::result_frame(seq, &payload);
            self.dispatch(Arc::new(Push {
                order_id: order_id.to_string(),
                seq,
                frame,
            }));
        }
    }

    async fn relay(
        &self,
        mut stream: Messages,
        unfollowed: &mut mpsc::UnboundedReceiver<String>,
        shutdown: &CancellationToken,
    ) {
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.tick().await;
        loop {
            tokio::select! {
                event = stream.next_event() => match event {
                    Some(Event::Message(msg)) => self.on_message(&msg),
                    Some(Event::Unsubscribed(channel)) => {
                        if !self.resubscribe_if_followed(&channel).await {
                            return;
                        }
                    }
                    None => {
                        warn!("pub/sub connection lost; reconnecting");
                        return;
                    }
                },
                Some(order_id) = unfollowed.recv() => {
                    if !self.unsubscribe_if_unfollowed(&order_id).await {
                        return;
                    }
                }
                _ = probe.tick() => {
                    let mut guard = self.inner.sink.lock().await;
                    let Some(sink) = guard.as_mut() else { return };
                    let pong = tokio::time::timeout(REDIS_TIMEOUT, sink.ping()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        warn!("pub/sub probe failed; reconnecting");
                        return;
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// After the server ended the subscription to `channel`: if local followers still want
    /// that order (the Cluster moved its slot, nobody asked), subscribes again, where the slot
    /// now lives, and re-reads the stored result in case one landed in between. False when the
    /// subscribe failed (the caller rebuilds the connection, which subscribes everything).
    async fn resubscribe_if_followed(&self, channel: &str) -> bool {
        let Some(order_id) = self.inner.keys.order_of_channel(channel) else {
            return true;
        };
        let followed = lock(&self.inner.subs)
            .get(order_id)
            .is_some_and(|f| !f.is_empty());
        if !followed {
            return true;
        }
        warn!(%order_id, "the server ended a followed order's subscription (slot moved?); subscribing again");
        {
            let mut guard = self.inner.sink.lock().await;
            let Some(sink) = guard.as_mut() else {
                return false;
            };
            let again =
                tokio::time::timeout(REDIS_TIMEOUT, sink.subscribe(&[channel.to_string()])).await;
            if !matches!(again, Ok(Ok(()))) {
                return false;
            }
        }
        self.catch_up_order(order_id).await;
        true
    }

    fn on_message(&self, msg: &Message) {
        let Some(order_id) = self.inner.keys.order_of_channel(&msg.channel) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(&msg.payload) else {
            return;
        };
        let Some((seq, body)) = text.split_once(' ') else {
            return;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            return;
        };
        let frame = super::result_frame(seq, body);
        self.dispatch(Arc::new(Push {
            order_id: order_id.to_string(),
            seq,
            frame,
        }));
    }
}
