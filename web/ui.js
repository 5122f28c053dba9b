// Small DOM helpers shared by the Yoom web client: element builder, inline SVG icons,
// toasts, avatar initials/colours and time formatting. No framework, no dependencies.

/** Builds an element: el('button', { class: 'x', onclick: fn, 'aria-label': 'y' }, child, 'text'). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Stroke icons in the style of Lucide (ISC licence), 24x24 viewBox. Static strings only.
const ICONS = {
  mic: '<path d="M12 2a3 3 0 0 0-3 3v7a3 3 0 0 0 6 0V5a3 3 0 0 0-3-3Z"/><path d="M19 10v2a7 7 0 0 1-14 0v-2"/><path d="M12 19v3"/>',
  micOff: '<path d="m2 2 20 20"/><path d="M18.89 13.23A7.12 7.12 0 0 0 19 12v-2"/><path d="M5 10v2a7 7 0 0 0 12 5"/><path d="M15 9.34V5a3 3 0 0 0-5.68-1.33"/><path d="M9 9v3a3 3 0 0 0 5.12 2.12"/><path d="M12 19v3"/>',
  video: '<path d="m16 13 5.22 3.48a.5.5 0 0 0 .78-.42V7.87a.5.5 0 0 0-.75-.43L16 10.5"/><rect x="2" y="6" width="14" height="12" rx="2"/>',
  videoOff: '<path d="M10.66 6H14a2 2 0 0 1 2 2v2.5l5.25-3.06a.5.5 0 0 1 .75.43v8.2"/><path d="M16 16a2 2 0 0 1-2 2H4a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2h2"/><path d="m2 2 20 20"/>',
  hangup: '<path transform="rotate(135 12 12)" d="M22 16.92v3a2 2 0 0 1-2.18 2 19.79 19.79 0 0 1-8.63-3.07 19.5 19.5 0 0 1-6-6 19.79 19.79 0 0 1-3.07-8.67A2 2 0 0 1 4.11 2h3a2 2 0 0 1 2 1.72c.13.96.36 1.9.7 2.81a2 2 0 0 1-.45 2.11L8.09 9.91a16 16 0 0 0 6 6l1.27-1.27a2 2 0 0 1 2.11-.45c.91.34 1.85.57 2.81.7A2 2 0 0 1 22 16.92Z"/>',
  chat: '<path d="M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z"/>',
  users: '<path d="M16 21v-2a4 4 0 0 0-4-4H6a4 4 0 0 0-4 4v2"/><circle cx="9" cy="7" r="4"/><path d="M22 21v-2a4 4 0 0 0-3-3.87"/><path d="M16 3.13a4 4 0 0 1 0 7.75"/>',
  user: '<circle cx="12" cy="8" r="4"/><path d="M20 21a8 8 0 0 0-16 0"/>',
  link: '<path d="M10 13a5 5 0 0 0 7.54.54l3-3a5 5 0 0 0-7.07-7.07l-1.72 1.71"/><path d="M14 11a5 5 0 0 0-7.54-.54l-3 3a5 5 0 0 0 7.07 7.07l1.71-1.71"/>',
  settings: '<path d="M20 7h-9"/><path d="M14 17H5"/><circle cx="17" cy="17" r="3"/><circle cx="7" cy="7" r="3"/>',
  send: '<path d="m22 2-7 20-4-9-9-4Z"/><path d="M22 2 11 13"/>',
  close: '<path d="M18 6 6 18"/><path d="m6 6 12 12"/>',
  check: '<path d="M20 6 9 17l-5-5"/>',
  alert: '<circle cx="12" cy="12" r="10"/><path d="M12 8v4"/><path d="M12 16h.01"/>',
  info: '<circle cx="12" cy="12" r="10"/><path d="M12 16v-4"/><path d="M12 8h.01"/>',
  arrowRight: '<path d="M5 12h14"/><path d="m12 5 7 7-7 7"/>',
  arrowDown: '<path d="M12 5v14"/><path d="m19 12-7 7-7-7"/>',
  volume: '<path d="M11 5 6 9H2v6h4l5 4V5z"/><path d="M15.54 8.46a5 5 0 0 1 0 7.07"/><path d="M19.07 4.93a10 10 0 0 1 0 14.14"/>',
  wifiOff: '<path d="M12 20h.01"/><path d="M8.5 16.43a5 5 0 0 1 7 0"/><path d="M5 12.86a10 10 0 0 1 5.17-2.69"/><path d="M19 12.86a10 10 0 0 0-2-1.5"/><path d="M2 8.82a15 15 0 0 1 4.18-2.65"/><path d="M22 8.82a15 15 0 0 0-11.29-3.76"/><path d="m2 2 20 20"/>',
  plus: '<path d="M5 12h14"/><path d="M12 5v14"/>',
};

/** An inline SVG icon. Decorative (aria-hidden) unless a label is given. */
export function icon(name, { size = 20, label, className = '' } = {}) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('width', size);
  svg.setAttribute('height', size);
  svg.setAttribute('fill', 'none');
  svg.setAttribute('stroke', 'currentColor');
  svg.setAttribute('stroke-width', '2');
  svg.setAttribute('stroke-linecap', 'round');
  svg.setAttribute('stroke-linejoin', 'round');
  svg.setAttribute('class', `icon icon-${name} ${className}`.trim());
  if (label) {
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', label);
    const title = document.createElementNS(ns, 'title');
    title.textContent = label;
    svg.append(title);
  } else {
    svg.setAttribute('aria-hidden', 'true');
  }
  svg.insertAdjacentHTML('beforeend', ICONS[name] ?? ICONS.info);
  return svg;
}

/** Replaces the icon inside a button (keeps other children such as badges). */
export function setIcon(button, name, size = 22) {
  const old = button.querySelector('svg.icon');
  const fresh = icon(name, { size });
  if (old) old.replaceWith(fresh);
  else button.prepend(fresh);
}

/** Upgrades every `<span data-icon="name">` placeholder in static HTML to an SVG. */
export function hydrateIcons(root = document) {
  for (const slot of root.querySelectorAll('[data-icon]')) {
    const size = Number(slot.dataset.size || 20);
    slot.replaceWith(icon(slot.dataset.icon, { size }));
  }
}

// ---- toasts ---------------------------------------------------------------------------------

const TOAST_MS = { error: 7000, info: 4000, success: 2500 };

/** Shows a transient message. kind: 'info' | 'success' | 'error'. Errors are announced assertively. */
export function toast(message, kind = 'info', { timeout } = {}) {
  const host = document.getElementById('toasts');
  if (!host) return;
  // Collapse repeats of the same text so a flapping connection does not stack a wall of toasts.
  for (const existing of host.children) {
    if (existing.dataset.text === message) existing.remove();
  }
  const node = el('div', {
    class: `toast toast-${kind}`,
    role: kind === 'error' ? 'alert' : 'status',
    'data-testid': kind === 'error' ? 'error-toast' : 'toast',
    dataset: { text: message },
  },
  icon(kind === 'error' ? 'alert' : kind === 'success' ? 'check' : 'info', { size: 18 }),
  el('span', { class: 'toast-text', text: message }),
  el('button', { class: 'toast-close', type: 'button', 'aria-label': 'Dismiss', onclick: () => dismiss() }, icon('close', { size: 16 })));
  host.append(node);
  while (host.children.length > 4) host.firstElementChild.remove();
  const timer = setTimeout(() => dismiss(), timeout ?? TOAST_MS[kind] ?? 4000);
  function dismiss() {
    clearTimeout(timer);
    node.classList.add('leaving');
    setTimeout(() => node.remove(), 200);
  }
}

// ---- people ---------------------------------------------------------------------------------

/** Up to two initials from a display name ("Ada Lovelace" → "AL", "bob" → "B"). */
export function initials(name) {
  const words = String(name || '?').trim().split(/[\s._-]+/u).filter(Boolean);
  const first = (w) => Array.from(w)[0] ?? '';
  const letters = words.length >= 2 ? first(words[0]) + first(words[words.length - 1]) : first(words[0] ?? '?');
  return letters.toUpperCase() || '?';
}

const AVATAR_HUES = [262, 200, 150, 20, 330, 45, 180, 290, 0, 100];

/** A stable, pleasant background colour for a name. */
export function avatarColor(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  const hue = AVATAR_HUES[hash % AVATAR_HUES.length];
  return `hsl(${hue} 55% 45%)`;
}

// ---- time -----------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, '0');

/** Local wall-clock time as HH:MM. */
export function hhmm(ts) {
  const d = new Date(ts);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
