// Building the DOM. Every value from the API goes in as a text node or an attribute
// value, never as HTML: nothing in the dashboard parses data as markup, so a
// "<script>" in a task name or payload shows as those characters.

const SVG_NS = 'http://www.w3.org/2000/svg';
const SAFE_HREF = /^(#|\/(?!\/))/; // in-app links only: "#/..." or a path on this origin

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.setAttribute('class', value);
    else if (key === 'text') el.textContent = String(value);
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key.startsWith('on') || key === 'style' || key === 'srcdoc') {
      throw new Error(`refusing to set ${key} from data`);
    } else if (key === 'href' && !SAFE_HREF.test(String(value))) {
      throw new Error('refusing a link that leaves the dashboard');
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

let lastId = 0;
export function uid(prefix) {
  lastId += 1;
  return `${prefix}-${lastId}`;
}

// Replace a container's content; the element that had focus inside it (marked
// with data-focus) gets it back, so a refresh never throws a keyboard user out.
export function replaceKeepingFocus(container, ...children) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? active.dataset.focus : undefined;
  container.replaceChildren(...children.flat(Infinity).filter((c) => c));
  if (key) {
    const again = container.querySelector(`[data-focus="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

// -- formatting ------------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat('en');
export const fmtNumber = (n) => (n === null || n === undefined ? '–' : numberFormat.format(n));

export function fmtRate(n) {
  if (n === null || n === undefined) return '–';
  return n >= 100 ? numberFormat.format(Math.round(n)) : n.toFixed(n >= 10 ? 1 : 2);
}

function pad(n, width = 2) {
  return String(n).padStart(width, '0');
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined) return '–';
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtAgo(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return '';
  const s = Math.round((now - ms) / 1000);
  if (Math.abs(s) < 60) return s >= 0 ? `${s} s ago` : `in ${-s} s`;
  const m = Math.round(s / 60);
  if (Math.abs(m) < 120) return m >= 0 ? `${m} min ago` : `in ${-m} min`;
  const hours = Math.round(m / 60);
  return hours >= 0 ? `${hours} h ago` : `in ${-hours} h`;
}

export function time(ms) {
  if (ms === null || ms === undefined) return '–';
  return h('time', { datetime: new Date(ms).toISOString(), title: fmtAgo(ms) }, fmtTime(ms));
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  return `${(ms / 60000).toFixed(1)} min`;
}

export const STATES = ['SCHEDULED', 'WAITING', 'READY', 'RUNNING', 'RETRYING', 'SUCCEEDED',
  'DEAD', 'CANCELLED', 'EXPIRED'];
export const TERMINAL = new Set(['SUCCEEDED', 'DEAD', 'CANCELLED', 'EXPIRED']);

export function badge(status) {
  const known = STATES.includes(status) ? status.toLowerCase() : 'unknown';
  return h('span', { class: `badge badge-${known}` }, status || '?');
}

export function taskLink(taskId, focusKey) {
  return h('a', { href: `#/tasks/${encodeURIComponent(taskId)}`, class: 'mono',
    dataset: focusKey ? { focus: focusKey } : undefined }, taskId);
}

// A JSON value as indented text in a <pre> (never parsed as HTML).
export function jsonBlock(value, label) {
  return h('pre', { class: 'json', tabindex: '0', 'aria-label': label },
    JSON.stringify(value, null, 2));
}

// A table: columns [{label, cell(row) -> node|string, class?}], one <tr> per row.
export function table(caption, columns, rows, { empty = 'Nothing to show.', rowClass } = {}) {
  const head = h('thead', null, h('tr', null,
    columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label))));
  const body = h('tbody', null, rows.length === 0
    ? h('tr', null, h('td', { colspan: String(columns.length), class: 'empty' }, empty))
    : rows.map((row) => h('tr', { class: rowClass ? rowClass(row) : undefined },
      columns.map((c) => h('td', { class: c.class }, c.cell(row))))));
  return h('div', { class: 'table-wrap' },
    h('table', null, h('caption', null, caption), head, body));
}

export function errorBox(err) {
  const text = err && err.message ? err.message : String(err);
  const code = err && err.status ? ` (HTTP ${err.status})` : '';
  return h('p', { class: 'error', role: 'alert' }, `${text}${code}`);
}

export function announce(text) {
  const region = document.getElementById('announce');
  if (!region) return;
  region.textContent = '';
  // a separate task, so screen readers notice the same text twice in a row
  window.setTimeout(() => { region.textContent = text; }, 50);
}
