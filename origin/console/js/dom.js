// Building the DOM. Everything that comes from the API goes in as text nodes or attribute
// values, never as markup, so no stored string can inject script into the page that holds
// the API key.

const SVG_NS = 'http://www.w3.org/2000/svg';

function apply(element, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'style' && typeof value === 'object') {
      Object.assign(element.style, value);
    } else if (name === 'value' && 'value' in element && element.namespaceURI !== SVG_NS) {
      element.value = value;
    } else if (name === 'checked' || name === 'selected') {
      element[name] = Boolean(value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** `h('a', {href: '#/x'}, 'text', child)` */
export function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  apply(element, attrs);
  append(element, children);
  return element;
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  apply(element, attrs);
  append(element, children);
  return element;
}

/**
 * Replaces an element's children. Unlike `replaceChildren`, it skips null and false and
 * flattens arrays, like `h`.
 */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

let ids = 0;
/** A document-unique id for label/aria wiring. */
export function uid(prefix = 'id') {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A status badge: words first, colour second. */
export function badge(text, tone = 'neutral', attrs = {}) {
  return h('span', { class: `badge ${tone}`, ...attrs }, text);
}

export function statusBadge(status) {
  return h('span', { class: `badge status-${status}`, 'data-status': status }, status);
}

/** An error box for a failed request, read out at once by screen readers. */
export function errorBox(error, prefix = '') {
  const fields = error && error.fields ? error.fields : [];
  return h(
    'div',
    { class: 'message error', role: 'alert' },
    h('strong', {}, prefix, error.message || String(error)),
    error.code === 'layer_full' && error.details && error.details.free_percent !== undefined
      ? h('p', {}, `Free space in the layer: ${error.details.free_percent}%.`)
      : null,
    fields.length ? h('ul', {}, fields.map((f) => h('li', {}, `${f.field}: ${f.message}`))) : null,
  );
}

/** Tells screen readers about an outcome that does not move focus. */
export function announce(text) {
  const region = document.getElementById('announcer');
  if (!region) return;
  region.textContent = '';
  // A fresh text node after a tick is announced even when the text repeats.
  setTimeout(() => {
    region.textContent = text;
  }, 30);
}

/** A labelled form field: returns {wrap, input, error}. */
export function field({ label, name, input, hint, fieldName }) {
  const id = input.id || uid(name || 'field');
  input.id = id;
  if (name && !input.name) input.name = name;
  const hintId = hint ? `${id}-hint` : null;
  const errorId = `${id}-error`;
  const error = h('p', { class: 'field-error', id: errorId, hidden: true });
  const described = [hintId].filter(Boolean).join(' ');
  if (described) input.setAttribute('aria-describedby', described);
  const wrap = h(
    'div',
    { class: 'field', dataset: { field: fieldName || name || '' } },
    h('label', { for: id }, label),
    input,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    error,
  );
  return { wrap, input, error };
}
