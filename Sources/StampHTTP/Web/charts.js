// Bar charts drawn by the page itself as SVG (no library, nothing from a CDN), from the
// summary endpoint's days. Readable without colour: every series has a pattern of its own as
// well as a colour, the legend shows both, each bar says its day and value in its tooltip, and
// a table of the same numbers follows each chart.
//
// The drawing is plain geometry a test can read back: each bar is a <rect> with its series and
// day, and the chart carries the value its full height stands for (`data-axis-max`) and that
// height (`data-plot-height`), so value = bar height × axis max / plot height.
import { el } from '/assets/common.js';

const SVG = 'http://www.w3.org/2000/svg';
// In the viewBox's units; the chart scales to its column (about 370 to 700 px wide), which
// keeps 12-unit labels between 11 and 20 px on screen.
const WIDTH = 420;
const HEIGHT = 190;
const PLOT = { left: 34, right: 6, top: 10, bottom: 26 };

/** The patterns, in the order series take them: the first is plain. */
const PATTERNS = ['solid', 'hatch', 'dots', 'cross', 'rows', 'columns'];

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) if (child !== null && child !== undefined && child !== false) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

/** The smallest of 1, 2, 4, 6, 8 × 10ⁿ at or above `value`: counts, so the middle gridline
 * falls on a whole number too (but for 1). */
export function niceMax(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 4, 6, 8, 10].map((step) => step * power).find((candidate) => candidate >= value);
}

const dayLabel = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
export const formatDay = (day) => dayLabel.format(new Date(`${day}T00:00:00Z`));

/** The <defs> of one chart's patterns, with ids of its own (several charts share the page). */
function patternDefs(prefix) {
  const lines = (d) => svg('path', { d, class: 'pattern-ink' });
  const make = (name, size, ...marks) => svg('pattern', { id: `${prefix}-${name}`, width: size, height: size, patternUnits: 'userSpaceOnUse' }, ...marks);
  return svg('defs', {},
    make('hatch', 6, lines('M-1,1 l2,-2 M0,6 l6,-6 M5,7 l2,-2')),
    make('dots', 6, svg('circle', { cx: 3, cy: 3, r: 1.3, class: 'pattern-dot' })),
    make('cross', 6, lines('M0,3 h6 M3,0 v6')),
    make('rows', 5, lines('M0,2.5 h5')),
    make('columns', 5, lines('M2.5,0 v5')));
}

/** A rectangle of one series: its colour, and on top of it the series' pattern. */
function patterned(prefix, pattern, seriesClass, attributes) {
  const group = svg('g', { class: `series ${seriesClass}` }, svg('rect', { ...attributes, class: 'bar-fill' }));
  if (pattern !== 'solid') group.append(svg('rect', { ...attributes, class: 'bar-pattern', fill: `url(#${prefix}-${pattern})` }));
  return group;
}

let charts = 0;

/**
 * A bar chart of `days` (oldest first). `series` is [{key, label, value: (day) => number}];
 * more than one series are stacked, the first at the bottom. Answers a <figure>.
 */
export function barChart({ title, unit, days, series, testid }) {
  const prefix = `chart${(charts += 1)}`;
  const totals = days.map((day) => series.reduce((sum, s) => sum + Math.max(0, s.value(day)), 0));
  const axisMax = niceMax(Math.max(0, ...totals));
  const plotWidth = WIDTH - PLOT.left - PLOT.right;
  const plotHeight = HEIGHT - PLOT.top - PLOT.bottom;
  const slot = plotWidth / days.length;
  const barWidth = Math.max(2, slot * 0.7);
  const y = (value) => PLOT.top + plotHeight - (value / axisMax) * plotHeight;

  const grid = svg('g', { class: 'grid' });
  for (const value of axisMax > 1 ? [0, axisMax / 2, axisMax] : [0, axisMax]) {
    grid.append(svg('line', { x1: PLOT.left, x2: WIDTH - PLOT.right, y1: y(value), y2: y(value) }),
      svg('text', { x: PLOT.left - 5, y: y(value) + 4, 'text-anchor': 'end', class: 'axis-label' }, value));
  }
  const bars = svg('g', { class: 'bars' });
  const labels = svg('g', { class: 'days' });
  days.forEach((day, index) => {
    const x = PLOT.left + index * slot + (slot - barWidth) / 2;
    let base = 0;
    const stack = svg('g', { class: 'day', 'data-day': day.day },
      svg('title', {}, `${formatDay(day.day)}: ${series.map((s) => `${s.value(day)} ${s.label.toLowerCase()}`).join(', ')}`));
    series.forEach((s, position) => {
      const value = Math.max(0, s.value(day));
      if (value === 0) return;
      const top = y(base + value);
      const height = y(base) - top;
      const bar = patterned(prefix, PATTERNS[position % PATTERNS.length], `series-${position}`,
        { x: x.toFixed(2), y: top.toFixed(2), width: barWidth.toFixed(2), height: height.toFixed(2) });
      bar.dataset.series = s.key;
      bar.dataset.value = String(value);
      stack.append(bar);
      base += value;
    });
    bars.append(stack);
    // A date under the first day, every seventh day after it (not so close to the end that it
    // runs into today's), and today.
    if ((index % 7 === 0 && index < days.length - 4) || index === days.length - 1) {
      const anchor = index === days.length - 1 ? 'end' : index === 0 ? 'start' : 'middle';
      const at = anchor === 'end' ? x + barWidth : anchor === 'start' ? x : x + barWidth / 2;
      labels.append(svg('text', { x: at.toFixed(2), y: HEIGHT - 8, 'text-anchor': anchor, class: 'axis-label' },
        formatDay(day.day)));
    }
  });

  const total = (s) => days.reduce((sum, day) => sum + s.value(day), 0);
  const said = series.map((s) => `${total(s)} ${s.label.toLowerCase()}`).join(', ');
  const chart = svg('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', class: 'chart-svg',
    'aria-label': `${title} per day, ${formatDay(days[0].day)} to ${formatDay(days.at(-1).day)}: ${said} in all.`,
    'data-axis-max': axisMax, 'data-plot-height': plotHeight,
  }, patternDefs(prefix), grid, bars, labels,
  svg('line', { x1: PLOT.left, x2: WIDTH - PLOT.right, y1: y(0), y2: y(0), class: 'baseline' }));

  const legend = el('ul', { class: 'legend' }, ...series.map((s, position) => {
    const swatch = svg('svg', { viewBox: '0 0 16 16', width: 16, height: 16, 'aria-hidden': 'true' },
      patternDefs(`${prefix}-legend${position}`),
      patterned(`${prefix}-legend${position}`, PATTERNS[position % PATTERNS.length], `series-${position}`, { x: 0, y: 0, width: 16, height: 16 }));
    return el('li', {}, swatch, el('span', {}, `${s.label}: `, el('strong', { text: String(total(s)) })));
  }));

  const table = el('details', { class: 'chart-table' }, el('summary', { text: 'The numbers as a table' }),
    el('table', {},
      el('thead', {}, el('tr', {}, el('th', { scope: 'col', text: 'Day' }), ...series.map((s) => el('th', { scope: 'col', text: s.label })))),
      el('tbody', {}, ...[...days].reverse().map((day) => el('tr', {},
        el('th', { scope: 'row', text: formatDay(day.day) }), ...series.map((s) => el('td', { text: String(s.value(day)) })))))));

  return el('figure', { class: 'chart', dataset: { testid } },
    el('figcaption', {}, el('strong', { text: title }), unit ? el('span', { class: 'hint', text: ` (${unit})` }) : null),
    legend, chart, table);
}
