// The printable counter sign: the store's name, how to ask for a stamp, and a QR code of the
// customer page's link to this store (/app#store=<id>), which opens the store ready to ask.
//
// The QR code comes from qrcode-generator.js, Kazuhiko Arase's QR Code Generator (MIT), as
// Debian ships it in node-qrcode-generator 1.4.4, unmodified. It is a classic script that
// defines `qrcode`; it is loaded the first time the sign is drawn. The modules it computes are
// drawn here as one SVG path (no inline styles, which the page's Content-Security-Policy forbids).
import { $, el } from '/assets/common.js';

const SVG = 'http://www.w3.org/2000/svg';
const QUIET = 4; // the quiet zone the standard asks for, in modules

let loading = null;
function encoder() {
  if (window.qrcode) return Promise.resolve(window.qrcode);
  loading ??= new Promise((resolve, reject) => {
    const script = el('script', { src: '/assets/qrcode-generator.js' });
    script.addEventListener('load', () => resolve(window.qrcode));
    script.addEventListener('error', () => { loading = null; reject(new Error('the QR code encoder did not load')); });
    document.head.append(script);
  });
  return loading;
}

/** The customer page's link to a store. */
export const storeLink = (store) => `${location.origin}/app#store=${encodeURIComponent(store.id)}`;

/** An SVG of `text` as a QR code (error correction M: still read with a fold or a smudge). */
export async function qrSvg(text) {
  const qrcode = await encoder();
  const code = qrcode(0, 'M');
  code.addData(text, 'Byte');
  code.make();
  const size = code.getModuleCount();
  let path = '';
  for (let row = 0; row < size; row += 1) {
    for (let column = 0; column < size; column += 1) {
      if (code.isDark(row, column)) path += `M${column + QUIET},${row + QUIET}h1v1h-1z`;
    }
  }
  const svg = document.createElementNS(SVG, 'svg');
  const total = size + 2 * QUIET;
  for (const [name, value] of Object.entries({
    viewBox: `0 0 ${total} ${total}`, role: 'img', 'aria-label': `QR code of ${text}`, class: 'qr', 'shape-rendering': 'crispEdges',
  })) svg.setAttribute(name, value);
  const background = document.createElementNS(SVG, 'rect');
  for (const [name, value] of Object.entries({ width: total, height: total, class: 'qr-light' })) background.setAttribute(name, value);
  const modules = document.createElementNS(SVG, 'path');
  modules.setAttribute('d', path);
  modules.setAttribute('class', 'qr-dark');
  svg.append(background, modules);
  return svg;
}

/** Fills the sign for `store`. */
export async function drawSign(store) {
  const link = storeLink(store);
  $('sign-store').textContent = store.name;
  $('sign-link').textContent = link;
  $('sign-reward').textContent = `${store.stampsPerReward} stamps: a free ${store.rewardItem}`;
  $('sign-qr').replaceChildren(await qrSvg(link));
}
