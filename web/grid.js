// The video grid: one tile per member (self first), each showing the member's video when there is
// live, unmuted video and their initials otherwise, a name label with mic state, and a speaking
// ring driven by a WebAudio analyser. Tiles are laid out to the largest size that fits the stage.
//
// Tracks are kept per member id independently of tiles, because a member's tracks may arrive on the
// subscribe connection a moment before (or after) the `member_joined` that creates the tile.

import { el, icon, initials, avatarColor } from './ui.js';

const SPEAKING_THRESHOLD = 0.015; // RMS of the time-domain signal; quiet rooms sit below ~0.005
const SPEAKING_HOLD_MS = 450; // keep the ring on briefly so it does not flicker between words
const LEVEL_POLL_MS = 120;
const MIN_TILE_WIDTH_PX = 150; // below this the grid scrolls instead of shrinking further
const GAP_PX = 10;
// [aspect ratio, preference weight]: 16:9 wins unless another shape gives >15% more area.
const TILE_SHAPES = [[16 / 9, 1.15], [4 / 3, 1], [1, 1], [3 / 4, 1]];

export class VideoGrid {
  /** @param {HTMLElement} container  @param {{ onAudioBlocked: () => void }} opts */
  constructor(container, opts = {}) {
    this.container = container;
    this.opts = opts;
    this.tiles = new Map(); // member id → tile record
    this.tracks = new Map(); // member id → Set<MediaStreamTrack>
    this.selfId = null;
    this.localStream = null;
    this.localVideoOn = false;
    this.audioCtx = null;
    this.levelTimer = null;
    this.resizeObserver = new ResizeObserver(() => this.layout());
    this.resizeObserver.observe(container);
  }

  // ---- members --------------------------------------------------------------------------------

  /** Creates or updates the tile of `member` ({id, name, audio_muted, video_muted}). */
  upsertMember(member, { self = false } = {}) {
    let tile = this.tiles.get(member.id);
    if (!tile) {
      tile = this.createTile(member, self);
      this.tiles.set(member.id, tile);
      if (self) {
        this.selfId = member.id;
        this.container.prepend(tile.root);
      } else {
        this.container.append(tile.root);
      }
      for (const track of this.tracks.get(member.id) ?? []) this.attachTrack(tile, track);
      if (self && this.localStream) this.attachLocal(tile);
      this.layout();
    }
    tile.member = { ...tile.member, ...member };
    tile.name.textContent = self ? `${member.name} (you)` : member.name;
    tile.root.setAttribute('aria-label', `${member.name}${self ? ' (you)' : ''}`);
    tile.initials.textContent = initials(member.name);
    tile.initials.style.background = avatarColor(member.name);
    tile.root.classList.toggle('audio-muted', !!tile.member.audio_muted);
    // The member's announced state (member_updated), for styling and tests; whether video is
    // actually shown is the `has-video` class.
    tile.root.dataset.audioMuted = String(!!tile.member.audio_muted);
    tile.root.dataset.videoMuted = String(!!tile.member.video_muted);
    tile.micState.replaceChildren(tile.member.audio_muted ? icon('micOff', { size: 16, label: 'Microphone muted' }) : '');
    this.refreshVideo(tile);
  }

  removeMember(id) {
    const tile = this.tiles.get(id);
    this.tracks.delete(id);
    if (!tile) return;
    this.stopLevel(tile);
    tile.video.srcObject = null;
    if (tile.audio) tile.audio.srcObject = null;
    tile.root.remove();
    this.tiles.delete(id);
    this.layout();
  }

  clear() {
    for (const id of [...this.tiles.keys()]) this.removeMember(id);
    this.tracks.clear();
    this.selfId = null;
    this.localStream = null;
    this.localVideoOn = false;
  }

  createTile(member, self) {
    const video = el('video', { class: 'tile-video', autoplay: true, playsinline: true });
    video.muted = true; // audio goes through a separate <audio>, so video can always autoplay
    const initialsEl = el('span', { class: 'tile-initials', 'aria-hidden': 'true' });
    const name = el('span', { class: 'tile-name', 'data-testid': 'tile-name' });
    const micState = el('span', { class: 'tile-mic' });
    const root = el('div', {
      class: `tile${self ? ' self' : ''}`,
      role: 'group',
      'data-testid': 'video-tile',
      'data-member-id': member.id,
      ...(self ? { 'data-self': 'true' } : {}),
    },
    video,
    el('div', { class: 'tile-avatar' }, initialsEl),
    el('div', { class: 'tile-label' }, micState, name));
    let audio = null;
    if (!self) {
      audio = el('audio', { autoplay: true });
      root.append(audio);
    }
    return { root, video, audio, name, micState, initials: initialsEl, member: { ...member }, self, level: null };
  }

  // ---- local preview --------------------------------------------------------------------------

  setLocalStream(stream) {
    this.localStream = stream;
    const tile = this.selfId && this.tiles.get(this.selfId);
    if (tile) this.attachLocal(tile);
  }

  attachLocal(tile) {
    const videoTracks = this.localStream.getVideoTracks();
    tile.video.srcObject = videoTracks.length ? new MediaStream(videoTracks) : null;
    tile.video.play?.().catch(() => {});
    this.stopLevel(tile);
    const audioTrack = this.localStream.getAudioTracks()[0];
    if (audioTrack) this.startLevel(tile, audioTrack);
    this.refreshVideo(tile);
  }

  /** Local camera on/off as the user set it (the self member's `video_muted` may lag behind). */
  setLocalVideoOn(on) {
    this.localVideoOn = on;
    const tile = this.selfId && this.tiles.get(this.selfId);
    if (tile) this.refreshVideo(tile);
  }

  // ---- remote tracks --------------------------------------------------------------------------

  addTrack(memberId, track) {
    if (!this.tracks.has(memberId)) this.tracks.set(memberId, new Set());
    const set = this.tracks.get(memberId);
    if (set.has(track)) return;
    set.add(track);
    const tile = this.tiles.get(memberId);
    if (tile) this.attachTrack(tile, track);
  }

  removeTrack(memberId, track) {
    this.tracks.get(memberId)?.delete(track);
    const tile = this.tiles.get(memberId);
    if (tile) this.attachAll(tile);
  }

  attachTrack(tile, track) {
    if (!tile.watched) tile.watched = new WeakSet();
    if (!tile.watched.has(track)) {
      tile.watched.add(track);
      // Remote tracks are "muted" while no packets flow (e.g. before the first frame).
      const refresh = () => this.refreshVideo(tile);
      track.addEventListener('mute', refresh);
      track.addEventListener('unmute', refresh);
      track.addEventListener('ended', refresh);
    }
    this.attachAll(tile);
  }

  attachAll(tile) {
    const tracks = [...(this.tracks.get(tile.member.id) ?? [])].filter((t) => t.readyState === 'live');
    const video = tracks.filter((t) => t.kind === 'video').slice(-1);
    const audio = tracks.filter((t) => t.kind === 'audio');
    const currentVideo = tile.video.srcObject?.getVideoTracks?.()[0];
    if (currentVideo !== video[0]) {
      tile.video.srcObject = video.length ? new MediaStream(video) : null;
      if (video.length) tile.video.play().catch(() => {});
    }
    if (tile.audio) {
      const current = tile.audio.srcObject?.getAudioTracks?.() ?? [];
      if (current.length !== audio.length || current.some((t, i) => t !== audio[i])) {
        tile.audio.srcObject = audio.length ? new MediaStream(audio) : null;
        this.stopLevel(tile);
        if (audio.length) {
          tile.audio.play().catch((err) => {
            if (err.name === 'NotAllowedError') this.opts.onAudioBlocked?.();
          });
          this.startLevel(tile, audio[0]);
        }
      }
    }
    this.refreshVideo(tile);
  }

  refreshVideo(tile) {
    let showVideo;
    if (tile.self) {
      const track = tile.video.srcObject?.getVideoTracks?.()[0];
      showVideo = !!track && track.readyState === 'live' && this.localVideoOn;
    } else {
      const track = tile.video.srcObject?.getVideoTracks?.()[0];
      showVideo = !!track && track.readyState === 'live' && !track.muted && !tile.member.video_muted;
    }
    tile.root.classList.toggle('has-video', showVideo);
  }

  /** Resumes playback after a user gesture when the browser blocked autoplay with sound. */
  unlockAudio() {
    this.audioCtx?.resume?.().catch(() => {});
    for (const tile of this.tiles.values()) tile.audio?.play().catch(() => {});
  }

  // ---- speaking indicator ---------------------------------------------------------------------

  startLevel(tile, track) {
    try {
      if (!this.audioCtx) {
        const Ctx = window.AudioContext || window.webkitAudioContext;
        if (!Ctx) return;
        this.audioCtx = new Ctx();
      }
      const source = this.audioCtx.createMediaStreamSource(new MediaStream([track]));
      const analyser = this.audioCtx.createAnalyser();
      analyser.fftSize = 512;
      source.connect(analyser);
      tile.level = { source, analyser, buf: new Float32Array(analyser.fftSize), lastLoud: 0 };
      if (!this.levelTimer) this.levelTimer = setInterval(() => this.pollLevels(), LEVEL_POLL_MS);
    } catch (err) {
      console.warn('yoom: speaking indicator unavailable', err);
    }
  }

  stopLevel(tile) {
    if (!tile.level) return;
    try {
      tile.level.source.disconnect();
    } catch { /* already disconnected */ }
    tile.level = null;
    tile.root.classList.remove('speaking');
  }

  pollLevels() {
    const now = performance.now();
    let any = false;
    for (const tile of this.tiles.values()) {
      const level = tile.level;
      if (!level) continue;
      any = true;
      level.analyser.getFloatTimeDomainData(level.buf);
      let sum = 0;
      for (const v of level.buf) sum += v * v;
      const rms = Math.sqrt(sum / level.buf.length);
      if (rms > SPEAKING_THRESHOLD && !tile.member.audio_muted) level.lastLoud = now;
      tile.root.classList.toggle('speaking', now - level.lastLoud < SPEAKING_HOLD_MS);
    }
    if (!any) {
      clearInterval(this.levelTimer);
      this.levelTimer = null;
    }
  }

  // ---- layout ---------------------------------------------------------------------------------

  /** Sizes tiles to the largest that fits. Tiles crop video (object-fit: cover), so any shape
   * works; 16:9 is preferred unless another shape is clearly bigger (e.g. on portrait phones). */
  layout() {
    const n = this.tiles.size;
    const width = this.container.clientWidth;
    const height = this.container.clientHeight;
    if (!n || !width || !height) return;
    let best = { w: 0, h: 0, score: 0, aspect: 16 / 9 };
    // Tall shapes only on portrait stages (phones): on wide screens they would crop most of a
    // landscape camera picture.
    const shapes = height > width ? TILE_SHAPES : TILE_SHAPES.filter(([aspect]) => aspect >= 4 / 3);
    for (const [aspect, preference] of shapes) {
      for (let cols = 1; cols <= n; cols++) {
        const rows = Math.ceil(n / cols);
        let w = (width - GAP_PX * (cols - 1)) / cols;
        let h = w / aspect;
        if (h * rows + GAP_PX * (rows - 1) > height) {
          h = (height - GAP_PX * (rows - 1)) / rows;
          w = h * aspect;
        }
        const score = w * h * preference;
        if (score > best.score) best = { w, h, score, aspect };
      }
    }
    let scroll = false;
    if (best.w < MIN_TILE_WIDTH_PX) {
      const cols = Math.max(1, Math.floor((width + GAP_PX) / (MIN_TILE_WIDTH_PX + GAP_PX)));
      const w = (width - GAP_PX * (cols - 1)) / cols;
      best = { w, h: w / best.aspect };
      scroll = true;
    }
    this.container.style.setProperty('--tile-w', `${Math.floor(best.w)}px`);
    this.container.style.setProperty('--tile-h', `${Math.floor(best.h)}px`);
    this.container.classList.toggle('scrolling', scroll);
    this.container.dataset.count = String(n);
  }

  destroy() {
    this.clear();
    clearInterval(this.levelTimer);
    this.levelTimer = null;
    this.resizeObserver.disconnect();
    this.audioCtx?.close?.().catch(() => {});
    this.audioCtx = null;
  }
}
