// WebRTC for one room session: a publish connection (we offer, send our camera + microphone) and
// a subscribe connection (the server offers, sends everyone else's tracks), as in
// docs/protocol.md "Media". Two connections with fixed offerers means no offer glare.
//
// Invariants:
// - Work on each connection is serialized through its own promise queue, so a re-offer, an answer
//   and trickled candidates are applied in arrival order even though each step is async.
// - Remote candidates that arrive before the remote description are held and applied right after it.
// - Local tracks live on two fixed sendonly transceivers (audio, video). Switching devices or
//   turning a missing camera on uses `replaceTrack`, never renegotiation.
// - Nothing here throws into the caller: failures are reported through `onError`/`onNotice`
//   (and connection states and TURN servers' error answers through `onConnectionState`/`onTurnError`)
//   so chat keeps working whatever happens to media.

/** Why getUserMedia failed, in words a person understands. */
export function describeMediaError(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'permission was denied';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'no device was found';
    case 'NotReadableError':
    case 'AbortError':
      return 'the device is in use by another application';
    case 'Unsupported':
      return 'this page is not a secure context (use HTTPS or localhost)';
    default:
      return err?.message || 'unknown error';
  }
}

/** A TURN server's error answer (RTCPeerConnectionIceErrorEvent), in words a person understands:
 * `{ title, detail }`. Codes are STUN's (RFC 8489) plus 701, which browsers use for "no answer". */
export function describeTurnError({ code, text, url }) {
  const server = String(url ?? '').replace(/^turns?:/i, '').replace(/\?.*$/, '') || 'the TURN server';
  switch (code) {
    case 401:
      return {
        title: 'TURN server refused the credentials (401).',
        detail: 'Audio and video cannot go through the relay. Re-join to get fresh credentials; if that does not help, '
          + "this server's TURN secret does not match the TURN server's.",
      };
    case 701:
      return { title: 'Cannot reach the TURN server.', detail: `No answer from ${server}, so audio and video cannot go through the relay.` };
    default:
      return {
        title: `TURN server refused the relay (${code}${text ? ` ${String(text).replace(/\.$/, '')}` : ''}).`,
        detail: `${server} answered with an error, so audio and video cannot go through the relay.`,
      };
  }
}

function candidateJson(c) {
  return { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
}

export class MediaSession {
  /**
   * @param {object} opts
   * @param {import('./signaling.js').Signaling} opts.signaling
   * @param {(memberId: string, track: MediaStreamTrack) => void} opts.onRemoteTrack
   * @param {(memberId: string, track: MediaStreamTrack) => void} opts.onRemoteTrackRemoved
   * @param {(stream: MediaStream) => void} opts.onLocalStream  local preview changed
   * @param {(text: string) => void} opts.onError   something the user should know went wrong
   * @param {(text: string) => void} opts.onNotice  informational (e.g. joined without camera)
   * @param {(role: string, state: string) => void} [opts.onConnectionState]  RTCPeerConnection
   *   connectionState of 'publish' or 'subscribe' (the caller shows 'failed' to the user)
   * @param {(problem: {role: string, url: string, code: number, text: string}) => void} [opts.onTurnError]
   *   a TURN server answered a request with an error (e.g. 401: bad or expired credentials)
   */
  constructor(opts) {
    this.sig = opts.signaling;
    this.cb = opts;
    // A reconnection hands over the previous session's devices so nobody is prompted again.
    this.localStream = opts.localStream ?? new MediaStream();
    this.reuseLocal = !!opts.localStream;
    this.pcs = {}; // 'publish' | 'subscribe' → { pc, queue, pending: [] , remoteSet }
    this.transceivers = {}; // 'audio' | 'video' → RTCRtpTransceiver on the publish pc
    this.muted = { audio: false, video: false, ...(opts.muted ?? {}) };
    this.devices = { audio: null, video: null, ...(opts.devices ?? {}) }; // chosen deviceId per kind
    this.trackOwner = new Map(); // remote track → member id currently holding it
    this.watchedStreams = new WeakSet();
    this.closed = false;
    this.unsubscribe = [
      this.sig.on('offer', (m) => this.onRemoteOffer(m)),
      this.sig.on('answer', (m) => this.onRemoteAnswer(m)),
      this.sig.on('candidate', (m) => this.onRemoteCandidate(m)),
    ];
  }

  // ---- local devices --------------------------------------------------------------------------

  static supported() {
    return typeof RTCPeerConnection === 'function';
  }

  constraintsFor(kind) {
    const id = this.devices[kind];
    if (kind === 'video') {
      return { ...(id ? { deviceId: { exact: id } } : {}), width: { ideal: 1280 }, height: { ideal: 720 }, frameRate: { ideal: 30 } };
    }
    return id ? { deviceId: { exact: id }, echoCancellation: true, noiseSuppression: true } : { echoCancellation: true, noiseSuppression: true };
  }

  async getUserMedia(kinds) {
    if (!navigator.mediaDevices?.getUserMedia) {
      const err = new Error('Unsupported');
      err.name = 'Unsupported';
      throw err;
    }
    const constraints = {};
    for (const kind of kinds) constraints[kind] = this.constraintsFor(kind);
    return navigator.mediaDevices.getUserMedia(constraints);
  }

  /**
   * Gets camera and microphone, degrading to microphone only, then camera only, then nothing.
   * Never rejects; reports what is missing through onNotice.
   */
  async acquireLocal() {
    let stream = null;
    let firstError = null;
    try {
      stream = await this.getUserMedia(['audio', 'video']);
    } catch (err) {
      firstError = err;
      console.warn('yoom: camera+microphone unavailable', err);
    }
    if (!stream) {
      try {
        stream = await this.getUserMedia(['audio']);
        this.cb.onNotice(`Camera unavailable: ${describeMediaError(firstError)}. You joined with your microphone only.`);
      } catch {
        try {
          stream = await this.getUserMedia(['video']);
          this.cb.onNotice(`Microphone unavailable: ${describeMediaError(firstError)}. You joined with your camera only.`);
        } catch {
          this.cb.onNotice(`Camera and microphone unavailable: ${describeMediaError(firstError)}. You can still see, hear and chat with everyone.`);
        }
      }
    }
    if (this.closed) {
      stream?.getTracks().forEach((t) => t.stop());
      return;
    }
    if (stream) for (const track of stream.getTracks()) this.localStream.addTrack(track);
    for (const track of this.localStream.getTracks()) {
      track.enabled = !this.muted[track.kind];
      this.devices[track.kind] = track.getSettings?.().deviceId ?? null;
      this.watchLocalTrack(track);
    }
    this.cb.onLocalStream(this.localStream);
  }

  watchLocalTrack(track) {
    track.addEventListener('ended', () => {
      // Unplugged device or revoked permission.
      if (this.closed || this.localTrack(track.kind) !== track) return;
      this.cb.onError(`Your ${track.kind === 'video' ? 'camera' : 'microphone'} stopped working.`);
    });
  }

  localTrack(kind) {
    return this.localStream.getTracks().find((t) => t.kind === kind) ?? null;
  }

  hasLocal(kind) {
    const track = this.localTrack(kind);
    return !!track && track.readyState === 'live';
  }

  /** Lists cameras and microphones (labels are empty until permission was granted once). */
  async listDevices() {
    if (!navigator.mediaDevices?.enumerateDevices) return { audio: [], video: [] };
    const all = await navigator.mediaDevices.enumerateDevices();
    return {
      audio: all.filter((d) => d.kind === 'audioinput'),
      video: all.filter((d) => d.kind === 'videoinput'),
    };
  }

  /** Replaces the local track of `kind` with one from `deviceId` (or the default), no renegotiation. */
  async useDevice(kind, deviceId) {
    const previous = this.devices[kind];
    this.devices[kind] = deviceId || null;
    let fresh;
    try {
      fresh = (await this.getUserMedia([kind])).getTracks().find((t) => t.kind === kind);
    } catch (err) {
      this.devices[kind] = previous;
      throw new Error(`Could not open the ${kind === 'video' ? 'camera' : 'microphone'}: ${describeMediaError(err)}`);
    }
    if (this.closed) {
      fresh.stop();
      return;
    }
    fresh.enabled = !this.muted[kind];
    this.devices[kind] = fresh.getSettings?.().deviceId ?? deviceId ?? null;
    this.watchLocalTrack(fresh);
    const old = this.localTrack(kind);
    const transceiver = this.transceivers[kind];
    if (transceiver) await transceiver.sender.replaceTrack(fresh);
    if (old) {
      this.localStream.removeTrack(old);
      old.stop();
    }
    this.localStream.addTrack(fresh);
    this.cb.onLocalStream(this.localStream);
  }

  /**
   * Mutes or unmutes our microphone or camera. Unmuting a kind we never got tries to open the
   * device now (the user may have granted permission meanwhile). Resolves to the new muted state.
   */
  async setMuted(kind, muted) {
    if (!muted && !this.hasLocal(kind)) {
      this.muted[kind] = false;
      try {
        await this.useDevice(kind, this.devices[kind]);
      } catch (err) {
        this.muted[kind] = true;
        throw err;
      }
    }
    this.muted[kind] = muted;
    const track = this.localTrack(kind);
    if (track) track.enabled = !muted;
    return muted;
  }

  // ---- peer connections ---------------------------------------------------------------------

  /** Opens both connections. Synchronously creates the subscribe connection so that a server offer
   * arriving right after `joined` always finds it; then acquires devices and publishes.
   * `iceServers` come from the server's `joined`; `relay` (the page's `?relay=1`) sets
   * iceTransportPolicy 'relay', so media must go through a TURN server (how the tests prove it does). */
  async start({ iceServers = [], relay = false } = {}) {
    this.config = { iceServers, ...(relay ? { iceTransportPolicy: 'relay' } : {}) };
    this.createConnection('subscribe');
    if (this.reuseLocal) this.cb.onLocalStream(this.localStream);
    else await this.acquireLocal();
    if (this.closed) return;
    // Report the real device state to the room: a member without a camera shows as camera-off.
    for (const kind of ['audio', 'video']) {
      const off = !this.hasLocal(kind) || this.muted[kind];
      if (off) this.muted[kind] = true;
      this.sig.request({ type: 'mute', kind, muted: this.muted[kind] }).catch((err) => console.warn('yoom: mute report failed', err));
    }
    await this.publish();
  }

  createConnection(role) {
    let pc;
    try {
      pc = new RTCPeerConnection(this.config);
    } catch (err) {
      this.cb.onError(`Cannot start media: ${err.message}`);
      throw err;
    }
    const entry = { pc, queue: Promise.resolve(), pending: [], remoteSet: false };
    this.pcs[role] = entry;
    pc.addEventListener('icecandidate', (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return; // end-of-candidates needs no message
      this.sig.send({ type: 'candidate', pc: role, candidate: candidateJson(ev.candidate) });
    });
    pc.addEventListener('icecandidateerror', (ev) => {
      // Only TURN answers are worth a person's attention: an unreachable STUN server costs one
      // candidate type, while a refused TURN allocation can leave a relay-only client with nothing.
      if (this.closed || !/^turns?:/i.test(ev.url ?? '')) return;
      console.warn(`yoom: ${role} ICE server error ${ev.errorCode} ${ev.errorText} from ${ev.url}`);
      this.cb.onTurnError?.({ role, url: ev.url, code: ev.errorCode, text: ev.errorText ?? '' });
    });
    pc.addEventListener('connectionstatechange', () => {
      if (!this.closed) this.cb.onConnectionState?.(role, pc.connectionState);
    });
    if (role === 'subscribe') pc.addEventListener('track', (ev) => this.onTrack(ev));
    return entry;
  }

  enqueue(role, job) {
    const entry = this.pcs[role];
    if (!entry) return Promise.resolve();
    entry.queue = entry.queue.then(job).catch((err) => {
      if (this.closed) return;
      console.error(`yoom: ${role} connection error`, err);
      this.cb.onError(`Media error (${role}): ${err.message || err}`);
    });
    return entry.queue;
  }

  async publish() {
    const entry = this.createConnection('publish');
    const { pc } = entry;
    for (const kind of ['audio', 'video']) {
      const track = this.localTrack(kind);
      this.transceivers[kind] = pc.addTransceiver(track ?? kind, { direction: 'sendonly', streams: [this.localStream] });
    }
    await this.enqueue('publish', async () => {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const reply = await this.sig.request({ type: 'offer', pc: 'publish', sdp: pc.localDescription.sdp });
      // The answer normally comes back as the direct reply; an `ack` means it follows as a push.
      if (reply.type === 'answer') await this.applyAnswer(reply.sdp);
    });
  }

  async applyAnswer(sdp) {
    const entry = this.pcs.publish;
    if (!entry || entry.pc.signalingState !== 'have-local-offer') return;
    await entry.pc.setRemoteDescription({ type: 'answer', sdp });
    await this.flushCandidates(entry);
  }

  onRemoteAnswer(msg) {
    if (msg.pc !== 'publish' || typeof msg.sdp !== 'string') return;
    // Runs outside the queue on purpose: the queued publish job may be waiting for this answer.
    this.applyAnswer(msg.sdp).catch((err) => this.cb.onError(`Media error (publish): ${err.message}`));
  }

  onRemoteOffer(msg) {
    if (msg.pc !== 'subscribe' || typeof msg.sdp !== 'string' || this.closed) return;
    if (!this.pcs.subscribe) this.createConnection('subscribe');
    this.enqueue('subscribe', async () => {
      const entry = this.pcs.subscribe;
      const { pc } = entry;
      await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
      await this.flushCandidates(entry);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await this.sig.request({ type: 'answer', pc: 'subscribe', sdp: pc.localDescription.sdp });
    });
  }

  onRemoteCandidate(msg) {
    const entry = this.pcs[msg.pc];
    if (!entry || this.closed) return;
    const cand = msg.candidate;
    if (!cand || !cand.candidate) return; // end-of-candidates
    if (!entry.remoteSet && !entry.pc.remoteDescription) {
      entry.pending.push(cand);
      return;
    }
    entry.pc.addIceCandidate(cand).catch((err) => console.warn(`yoom: bad ${msg.pc} candidate`, err, cand));
  }

  async flushCandidates(entry) {
    entry.remoteSet = true;
    const pending = entry.pending.splice(0);
    for (const cand of pending) {
      try {
        await entry.pc.addIceCandidate(cand);
      } catch (err) {
        console.warn('yoom: bad early candidate', err, cand);
      }
    }
  }

  onTrack(ev) {
    const stream = ev.streams[0];
    const track = ev.track;
    if (!stream) {
      console.warn('yoom: remote track without a stream id; cannot map it to a member', track.id);
      return;
    }
    const memberId = stream.id;
    const previous = this.trackOwner.get(track);
    if (previous && previous !== memberId) this.cb.onRemoteTrackRemoved(previous, track);
    this.trackOwner.set(track, memberId);
    this.cb.onRemoteTrack(memberId, track);

    if (!this.watchedStreams.has(stream)) {
      this.watchedStreams.add(stream);
      stream.addEventListener('removetrack', (e) => this.dropTrack(e.track, stream.id));
    }
    track.addEventListener('ended', () => this.dropTrack(track, this.trackOwner.get(track)));
  }

  dropTrack(track, memberId) {
    if (!memberId || this.trackOwner.get(track) !== memberId) return;
    this.trackOwner.delete(track);
    this.cb.onRemoteTrackRemoved(memberId, track);
  }

  /** Closes both connections and stops local devices (unless keepLocal, used across reconnects). */
  stop({ keepLocal = false } = {}) {
    this.closed = true;
    this.unsubscribe.forEach((fn) => fn());
    for (const entry of Object.values(this.pcs)) {
      try {
        entry.pc.close();
      } catch { /* already closed */ }
    }
    this.pcs = {};
    this.transceivers = {};
    this.trackOwner.clear();
    if (!keepLocal) for (const track of this.localStream.getTracks()) track.stop();
  }
}
