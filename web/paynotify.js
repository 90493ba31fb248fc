/*
 * paynotify.js: follow payment results over a websocket. No build step, no dependencies.
 *
 *   var pn = new PayNotify();                       // ws(s)://<this host>/ws
 *   var pn = new PayNotify({urls: ["wss://a.example/ws", "wss://b.example/ws"]});
 *   pn.follow(orderId, token, function (err, result) { ... });   // called once
 *
 * The client reconnects with exponential backoff (and jitter), moving to the next URL on each
 * failure, and subscribes again to every order it still waits for; the server sends the stored
 * result on subscribe, so a result that landed while the browser was disconnected still arrives.
 * The callback runs exactly once per follow(): with the result frame
 * {type, order_id, seq, status, data, published_at}, or with an error frame {type, code, message}
 * when the token is refused.
 */
(function (global) {
  "use strict";

  function defaultUrl() {
    var l = global.location;
    return (l.protocol === "https:" ? "wss://" : "ws://") + l.host + "/ws";
  }

  function PayNotify(options) {
    options = options || {};
    this.urls = options.urls && options.urls.length ? options.urls.slice() : [defaultUrl()];
    this.onStatus = options.onStatus || function () {};
    this.maxDelay = options.maxDelayMs || 10000;
    this.subs = {};
    this.index = 0;
    this.failures = 0;
    this.closed = false;
    this.ws = null;
    this._connect();
  }

  PayNotify.prototype.follow = function (orderId, token, callback) {
    this.subs[orderId] = { token: token, callback: callback, done: false, seq: 0 };
    this._send({ type: "subscribe", order_id: orderId, token: token });
  };

  PayNotify.prototype.unfollow = function (orderId) {
    if (this.subs[orderId]) {
      this.subs[orderId].done = true;
      delete this.subs[orderId];
      this._send({ type: "unsubscribe", order_id: orderId });
    }
  };

  PayNotify.prototype.close = function () {
    this.closed = true;
    if (this.ws) this.ws.close(1000);
  };

  PayNotify.prototype._send = function (frame) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(frame));
  };

  PayNotify.prototype._finish = function (orderId, err, result) {
    var sub = this.subs[orderId];
    if (!sub || sub.done) return;
    sub.done = true;
    delete this.subs[orderId];
    this._send({ type: "unsubscribe", order_id: orderId });
    try {
      sub.callback(err, result);
    } catch (e) {
      setTimeout(function () { throw e; });
    }
  };

  PayNotify.prototype._connect = function () {
    var self = this;
    var url = this.urls[this.index % this.urls.length];
    var ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      return this._retry();
    }
    this.ws = ws;
    ws.onopen = function () {
      self.failures = 0;
      self.onStatus("connected", url);
      for (var id in self.subs) {
        if (Object.prototype.hasOwnProperty.call(self.subs, id) && !self.subs[id].done) {
          self._send({ type: "subscribe", order_id: id, token: self.subs[id].token });
        }
      }
    };
    ws.onmessage = function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      if (frame.type === "result") {
        var sub = self.subs[frame.order_id];
        if (sub && frame.seq > sub.seq) {
          sub.seq = frame.seq;
          self._finish(frame.order_id, null, frame);
        }
      } else if (frame.type === "subscribed") {
        self.onStatus("subscribed", frame.order_id);
      } else if (frame.type === "error" && frame.order_id &&
                 (frame.code === "bad_token" || frame.code === "expired_token" || frame.code === "bad_order_id")) {
        self._finish(frame.order_id, frame, null);
      }
    };
    ws.onclose = function () {
      if (self.ws === ws) self.ws = null;
      if (!self.closed) self._retry();
    };
  };

  PayNotify.prototype._retry = function () {
    var self = this;
    this.onStatus("disconnected");
    this.index += 1;
    var delay = Math.min(this.maxDelay, 200 * Math.pow(2, this.failures));
    this.failures += 1;
    delay = delay / 2 + Math.random() * delay / 2;
    setTimeout(function () {
      if (!self.closed) self._connect();
    }, delay);
  };

  global.PayNotify = PayNotify;
})(typeof window !== "undefined" ? window : this);
