// Hand-written SVG charts: no library, no canvas, colours from style.css classes.
// Each chart is an image with a name and a description that states the latest
// values, and its legend repeats them as text.

import { fmtRate, h, s, uid } from './dom.js';

const W = 640;
const H = 200;
const PAD = { left: 56, right: 12, top: 12, bottom: 26 };

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten.
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

function pathOf(values, x, y) {
  let d = '';
  let pen = false;
  values.forEach((v, i) => {
    if (v === null || v === undefined || Number.isNaN(v)) {
      pen = false;
      return;
    }
    d += `${pen ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
  });
  return d;
}

// Values with no neighbour to draw a line to (a lone step between gaps) get a dot.
function lonePoints(values, x, y, key) {
  const present = (i) => values[i] !== null && values[i] !== undefined && !Number.isNaN(values[i]);
  const dots = [];
  values.forEach((v, i) => {
    if (present(i) && !present(i - 1) && !present(i + 1)) {
      dots.push(s('circle', { class: `dot dot-${key}`, cx: x(i).toFixed(1), cy: y(v).toFixed(1),
        r: 2.5 }));
    }
  });
  return dots;
}

function latest(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return null;
}

// series: [{name, key (css class suffix), values: [number|null]}]; times: [ms];
// format(v) for axis and legend values; unit: text after the values.
export function lineChart({ title, series, times, unit, format = fmtRate }) {
  const titleId = uid('chart-title');
  const descId = uid('chart-desc');
  const all = series.flatMap((x) => x.values).filter((v) => v !== null && v !== undefined);
  const top = niceMax(Math.max(0, ...all));
  const n = Math.max(1, times.length - 1);
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const x = (i) => PAD.left + (innerW * i) / n;
  const y = (v) => PAD.top + innerH - (innerH * Math.min(v, top)) / top;

  const grid = [];
  for (let k = 0; k <= 4; k += 1) {
    const value = (top * k) / 4;
    const gy = y(value);
    grid.push(s('line', { class: 'grid', x1: PAD.left, x2: W - PAD.right, y1: gy, y2: gy }));
    grid.push(s('text', { class: 'axis', x: PAD.left - 6, y: gy + 4, 'text-anchor': 'end' },
      format(value)));
  }
  const span = times.length > 1 ? (times[times.length - 1] - times[0]) / 60000 : 0;
  const ticks = [[0, `−${Math.round(span)} min`], [n / 2, `−${Math.round(span / 2)} min`],
    [n, 'now']];
  for (const [i, label] of ticks) {
    grid.push(s('text', { class: 'axis', x: x(i), y: H - 6,
      'text-anchor': i === 0 ? 'start' : i === n ? 'end' : 'middle' }, label));
  }
  const lines = series.map((x0) => [s('path', { class: `line line-${x0.key}`,
    d: pathOf(x0.values, x, y) }), lonePoints(x0.values, x, y, x0.key)]);
  const summary = series.map((x0) => {
    const v = latest(x0.values);
    return `${x0.name}: ${v === null ? 'no data' : `${format(v)} ${unit}`}`;
  }).join('; ');

  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart',
    'aria-labelledby': `${titleId} ${descId}` },
  s('title', { id: titleId }, title),
  s('desc', { id: descId }, `Last ${Math.round(span)} minutes. Latest: ${summary}.`),
  grid, lines);
  const legend = h('ul', { class: 'legend' }, series.map((x0) => {
    const v = latest(x0.values);
    return h('li', null, h('span', { class: `swatch swatch-${x0.key}`, 'aria-hidden': 'true' }),
      `${x0.name} `, h('strong', null, v === null ? '–' : format(v)), ` ${unit}`);
  }));
  return h('figure', { class: 'chart-box' },
    h('figcaption', null, title), svg, legend);
}

// A horizontal bar (part of a whole) as a tiny SVG; decorative: the number is text beside it.
export function bar(value, max) {
  const width = max > 0 ? Math.max(value > 0 ? 2 : 0, (100 * value) / max) : 0;
  return s('svg', { class: 'bar', viewBox: '0 0 100 10', preserveAspectRatio: 'none',
    'aria-hidden': 'true', focusable: 'false' },
  s('rect', { class: 'bar-bg', x: 0, y: 0, width: 100, height: 10 }),
  s('rect', { class: 'bar-fg', x: 0, y: 0, width: width.toFixed(1), height: 10 }));
}
