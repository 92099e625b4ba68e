// Charts. The daily cumulative lift is a time series with interval bands, drawn by uPlot
// (vendored, see vendor/); the forest plot is a handful of labelled intervals on one axis,
// simplest as SVG; the layer slot map is HTML so its ranges can be links.
// Every chart has a text alternative next to it (tables with the same numbers).

import uPlot from '../vendor/uPlot.esm.js';
import { enc } from './api.js';
import { h, s, uid } from './dom.js';
import { signedPercent } from './format.js';

const PALETTE = ['#1f4e8c', '#b45309', '#6d28d9', '#0f766e', '#be185d', '#4d7c0f'];

/** Round tick positions covering [lo, hi]. */
function ticks(lo, hi, target = 6) {
  const raw = (hi - lo) / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((c) => c >= raw) ?? 10 * power;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return out;
}

/**
 * A forest plot: one row per {label, estimate, lo, hi, tone ('good'|'bad'|'plain')}, values
 * as fractions drawn as percentages, with a dashed line at zero effect.
 */
export function forestPlot(rows, { title, description }) {
  const width = 900;
  const labelWidth = 230;
  const valueWidth = 230;
  const rowHeight = 30;
  const top = 8;
  const axisHeight = 46;
  const plotLeft = labelWidth;
  const plotRight = width - valueWidth;
  const height = top + rows.length * rowHeight + axisHeight;
  let lo = Math.min(0, ...rows.map((r) => r.lo));
  let hi = Math.max(0, ...rows.map((r) => r.hi));
  if (!(hi > lo)) {
    lo -= 0.01;
    hi += 0.01;
  }
  const pad = (hi - lo) * 0.06;
  lo -= pad;
  hi += pad;
  const x = (v) => plotLeft + ((v - lo) / (hi - lo)) * (plotRight - plotLeft);
  const titleId = uid('forest-title');
  const descId = uid('forest-desc');
  const axisY = top + rows.length * rowHeight + 6;
  const tickValues = ticks(lo, hi);
  return s(
    'svg',
    { class: 'chart forest', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${titleId} ${descId}` },
    s('title', { id: titleId }, title),
    s('desc', { id: descId }, description),
    s(
      'g',
      { class: 'axis' },
      tickValues.map((t) => [
        s('line', { class: 'grid', x1: x(t), x2: x(t), y1: top, y2: axisY }),
        s('text', { x: x(t), y: axisY + 16, 'text-anchor': 'middle' }, signedPercent(t, Math.abs(hi - lo) < 0.05 ? 1 : 0)),
      ]),
      s('text', { x: (plotLeft + plotRight) / 2, y: axisY + 30, 'text-anchor': 'middle' }, 'relative effect vs control'),
    ),
    s('line', { class: 'zero', x1: x(0), x2: x(0), y1: top, y2: axisY }),
    rows.map((r, i) => {
      const y = top + i * rowHeight + rowHeight / 2;
      return s(
        'g',
        { class: r.tone, dataset: { row: r.label } },
        s('text', { x: 4, y: y + 4, class: 'label', stroke: 'none' }, r.label),
        s('line', { x1: x(r.lo), x2: x(r.hi), y1: y, y2: y, 'stroke-width': 2.5 }),
        s('line', { x1: x(r.lo), x2: x(r.lo), y1: y - 6, y2: y + 6, 'stroke-width': 2 }),
        s('line', { x1: x(r.hi), x2: x(r.hi), y1: y - 6, y2: y + 6, 'stroke-width': 2 }),
        s('rect', { x: x(r.estimate) - 5, y: y - 5, width: 10, height: 10 }),
        s('text', { x: plotRight + 10, y: y + 4, stroke: 'none' }, `${signedPercent(r.estimate)} [${signedPercent(r.lo)}, ${signedPercent(r.hi)}]`),
      );
    }),
  );
}

/**
 * The cumulative relative lift of each treatment by day, with its interval as a band.
 * `lines` is [{label, points: [{t (unix seconds), estimate, lo, hi}]}] with fractions.
 * Returns the element; uPlot draws once it is in the document and follows its width.
 */
export function liftChart(lines, { title }) {
  const wrap = h('div', { class: 'chart lift-chart', role: 'img', 'aria-label': title });
  const times = [...new Set(lines.flatMap((l) => l.points.map((p) => p.t)))].sort((a, b) => a - b);
  const data = [times];
  const series = [{}];
  const bands = [];
  lines.forEach((line, i) => {
    const colour = PALETTE[i % PALETTE.length];
    const at = new Map(line.points.map((p) => [p.t, p]));
    const pick = (key) => times.map((t) => (at.has(t) && Number.isFinite(at.get(t)[key]) ? at.get(t)[key] * 100 : null));
    const base = data.length;
    data.push(pick('estimate'), pick('lo'), pick('hi'));
    series.push(
      { label: `${line.label} lift`, stroke: colour, width: 2, points: { show: true, size: 6 }, value: (u, v) => (v === null ? '—' : `${v >= 0 ? '+' : ''}${v.toFixed(2)}%`) },
      { label: `${line.label} lower`, stroke: colour, width: 1, dash: [4, 4], points: { show: false }, value: (u, v) => (v === null ? '—' : `${v.toFixed(2)}%`) },
      { label: `${line.label} upper`, stroke: colour, width: 1, dash: [4, 4], points: { show: false }, value: (u, v) => (v === null ? '—' : `${v.toFixed(2)}%`) },
    );
    bands.push({ series: [base + 2, base + 1], fill: `${colour}22` });
  });
  const options = {
    width: 700,
    height: 280,
    series,
    bands,
    scales: { x: { time: true } },
    axes: [
      // Points are days (UTC): ticks on whole days, labelled by date.
      { stroke: '#4d5661', grid: { stroke: '#e3e8ee' }, incrs: [86_400, 2 * 86_400, 7 * 86_400, 30 * 86_400], values: (u, vals) => vals.map((v) => new Date(v * 1000).toISOString().slice(0, 10)) },
      { stroke: '#4d5661', grid: { stroke: '#e3e8ee' }, values: (u, vals) => vals.map((v) => `${v}%`), size: 60 },
    ],
    legend: { live: true },
    hooks: {
      draw: [
        (u) => {
          // uPlot has no reference lines; zero effect matters here, so draw it.
          const y = u.valToPos(0, 'y', true);
          if (!Number.isFinite(y) || y < u.bbox.top || y > u.bbox.top + u.bbox.height) return;
          const c = u.ctx;
          c.save();
          c.strokeStyle = '#57606a';
          c.setLineDash([5, 4]);
          c.lineWidth = 1;
          c.beginPath();
          c.moveTo(u.bbox.left, y);
          c.lineTo(u.bbox.left + u.bbox.width, y);
          c.stroke();
          c.restore();
        },
      ],
    },
  };
  let plot = null;
  const draw = () => {
    const width = Math.max(320, Math.floor(wrap.clientWidth || 700));
    if (plot) {
      if (Math.abs(plot.width - width) > 1) plot.setSize({ width, height: 280 });
      return;
    }
    plot = new uPlot({ ...options, width }, data, wrap);
  };
  const observer = new ResizeObserver(() => {
    if (!wrap.isConnected) {
      observer.disconnect();
      if (plot) plot.destroy();
      return;
    }
    draw();
  });
  observer.observe(wrap);
  return wrap;
}

/** A layer's 0–100 % slot map: each allocated range links to its experiment. */
export function slotMap(layer) {
  const ranges = layer.allocations.map((a) => {
    const width = a.end_percent - a.start_percent;
    return h(
      'a',
      {
        class: `slot status-${a.status}`,
        href: `#/experiments/${enc(a.experiment_id)}`,
        style: { left: `${a.start_percent}%`, width: `${width}%` },
        'aria-label': `${a.experiment_key}: ${a.start_percent}% to ${a.end_percent}% (${a.status})`,
        title: `${a.experiment_key}: ${a.start_percent}–${a.end_percent}% (${a.status})`,
        dataset: { experiment: a.experiment_key },
      },
      width >= 6 ? a.experiment_key : '',
    );
  });
  return h(
    'div',
    {},
    h('div', { class: 'slotmap', role: 'group', 'aria-label': `Slots of layer ${layer.key}: ${layer.free_percent}% free` }, ranges),
    h('div', { class: 'slot-scale', 'aria-hidden': 'true' }, ['0%', '25%', '50%', '75%', '100%'].map((t) => h('span', {}, t))),
  );
}
