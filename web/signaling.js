// WebSocket signaling client for the Yoom protocol (docs/protocol.md).
//
// - `request(msg)` tags the message with a fresh `ref` and resolves with the server's reply carrying
//   the same `ref` (`ack`, `joined`, `rooms`, `answer`, …) or rejects with a `SignalingError` on
//   `{"type":"error","ref":…}`, on timeout, or when the socket drops first.
// - Every pushed message (no `ref`, or a `ref` nobody waits for) is emitted by its `type`; `error`
//   messages that answer no pending request are emitted as `error` so the UI can show them.
// - The socket reconnects with capped exponential backoff plus jitter. When a room session is set
//   (`setSession`), each reconnection re-joins that room and emits `rejoined` with the new `joined`
//   message (member ids change per connection) or `rejoin_failed` with the error.

const REQUEST_TIMEOUT_MS = 10_000;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10_000;

/** WebSocket close code of a member an administrator removed (docs/api.md). */
const CLOSE_KICKED = 4001;

export class SignalingError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'SignalingError';
    this.code = code;
  }
}

export class Signaling {
  /** @param {string} url ws(s)://host/ws */
  constructor(url) {
    this.url = url;
    this.ws = null;
    /** 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed' */
    this.state = 'idle';
    this.memberId = null;
    this.session = null; // { room, name, token } to re-join after a reconnection
    this.nextRef = 1;
    this.pending = new Map(); // ref → { resolve, reject, timer }
    this.listeners = new Map(); // type → Set<fn>
    this.attempt = 0;
    this.retryAt = 0;
    this.retryTimer = null;
    this.everOpened = false;
    this.stopped = false;
  }

  /** Default endpoint: same host as the page, `/ws`, ws or wss to match http or https. */
  static defaultUrl(loc = window.location) {
    const scheme = loc.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${loc.host}/ws`;
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.listeners.get(type)?.delete(fn);
  }

  emit(type, payload) {
    for (const fn of [...(this.listeners.get(type) ?? [])]) {
      try {
        fn(payload);
      } catch (err) {
        console.error(`yoom: listener for "${type}" failed`, err);
      }
    }
  }

  setState(state, detail = {}) {
    this.state = state;
    this.emit('state', { state, ...detail });
  }

  connect() {
    this.stopped = false;
    clearTimeout(this.retryTimer);
    this.setState(this.everOpened ? 'reconnecting' : 'connecting', { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error('yoom: cannot open WebSocket', err);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.addEventListener('message', (ev) => this.onMessage(ev));
    ws.addEventListener('close', (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.failPending('disconnected', 'Connection to the server was lost');
      if (ev.code === CLOSE_KICKED) {
        // Removed by an administrator: coming straight back would undo the kick.
        this.stopped = true;
        this.session = null;
        this.setState('closed');
        this.emit('kicked', { code: ev.code, reason: ev.reason });
      } else if (this.stopped) {
        this.setState('closed');
      } else {
        console.warn(`yoom: signaling closed (code ${ev.code}), reconnecting`);
        this.scheduleReconnect();
      }
    });
    // 'error' is always followed by 'close'; nothing to do here beyond logging.
    ws.addEventListener('error', () => console.warn('yoom: signaling socket error'));
  }

  /** Reconnect now instead of waiting for the backoff timer (e.g. a "Retry now" button). */
  retryNow() {
    if (this.ws || this.stopped) return;
    this.connect();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000, 'bye');
  }

  scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setState('reconnecting', { attempt: this.attempt, retryAt: this.retryAt });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  onMessage(ev) {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.warn('yoom: ignoring non-JSON frame', ev.data);
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;

    if (msg.type === 'hello') {
      const reconnected = this.everOpened;
      this.everOpened = true;
      this.attempt = 0;
      this.memberId = msg.id;
      this.setState('open', { reconnected });
      this.emit('hello', { ...msg, reconnected });
      if (reconnected && this.session) this.rejoin();
      return;
    }

    if (msg.ref !== undefined && this.pending.has(msg.ref)) {
      const waiter = this.pending.get(msg.ref);
      this.pending.delete(msg.ref);
      clearTimeout(waiter.timer);
      if (msg.type === 'error') waiter.reject(new SignalingError(msg.code ?? 'error', msg.message));
      else waiter.resolve(msg);
      return;
    }
    this.emit(msg.type, msg);
  }

  async rejoin() {
    const { room, name } = this.session;
    try {
      const { token } = this.session;
      const joined = await this.request({ type: 'join', room, ...(name ? { name } : {}), ...(token ? { token } : {}) });
      this.emit('rejoined', joined);
    } catch (err) {
      this.emit('rejoin_failed', err);
    }
  }

  /** Remember (or forget, with null) the room to re-join after a reconnection. */
  setSession(session) {
    this.session = session;
  }

  get isOpen() {
    return this.ws?.readyState === WebSocket.OPEN && this.state === 'open';
  }

  /** Fire-and-forget send. Returns false when the socket is not open. */
  send(msg) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Sends `msg` with a fresh ref; resolves with the reply carrying that ref. */
  request(msg, { timeout = REQUEST_TIMEOUT_MS } = {}) {
    if (!this.isOpen) {
      return Promise.reject(new SignalingError('disconnected', 'Not connected to the server'));
    }
    const ref = this.nextRef++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new SignalingError('timeout', `The server did not answer "${msg.type}" in time`));
      }, timeout);
      this.pending.set(ref, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...msg, ref }));
    });
  }

  failPending(code, message) {
    for (const [, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(new SignalingError(code, message));
    }
    this.pending.clear();
  }
}
