// Form fields that name their API field, and the display of the origin's 422 field errors
// next to them (and all of them in a summary at the top), shared by the console's forms so
// that validation stays the origin's alone.

import { ApiError } from './api.js';
import { fill, h, uid } from './dom.js';

/** A labelled control inside a box that names its API field (for 422 details). */
export function box(fieldName, label, control, hint) {
  const id = control.id || uid('f');
  control.id = id;
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h(
    'div',
    { class: 'field', dataset: { field: fieldName } },
    h('label', { for: id }, label),
    control,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    h('p', { class: 'field-error', id: errorId, hidden: true }),
  );
}

/** A fieldset that names its API field; errors show under its legend. */
export function group(fieldName, legend, children, hint) {
  const errorId = uid('group-error');
  return h(
    'fieldset',
    { dataset: { field: fieldName }, 'aria-describedby': errorId },
    h('legend', {}, legend),
    hint ? h('p', { class: 'hint' }, hint) : null,
    h('p', { class: 'field-error', id: errorId, hidden: true }),
    children,
  );
}

export function input(attrs) {
  return h('input', { type: 'text', autocomplete: 'off', ...attrs });
}

export function select(options, value, attrs = {}) {
  return h(
    'select',
    attrs,
    options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)),
  );
}

export function parseJson(text, field, errors, fallback) {
  if (!text.trim()) return fallback;
  try {
    return JSON.parse(text);
  } catch (error) {
    errors.push({ field, message: `not valid JSON: ${error.message}` });
    return fallback;
  }
}

export function number(control) {
  const text = control.value.trim();
  if (text === '') return null;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;
}

/**
 * Shows and clears errors in `form`: `showErrors(heading, [{field, message}])` puts each message
 * at the box whose `data-field` names its field (or the nearest enclosing one: variants[1].name,
 * forced.u1 → forced) and lists them all in `summary`, linked to their controls.
 */
export function errorDisplay(form, summary) {
  const clearErrors = () => {
    fill(summary);
    summary.className = '';
    for (const error of form.querySelectorAll('.field-error[id]')) {
      if (error.dataset.warning) continue;
      error.hidden = true;
      error.textContent = '';
    }
    for (const control of form.querySelectorAll('[aria-invalid]')) {
      control.removeAttribute('aria-invalid');
      const described = (control.getAttribute('aria-describedby') || '').split(' ').filter((x) => x && !x.endsWith('-error'));
      if (described.length) control.setAttribute('aria-describedby', described.join(' '));
      else control.removeAttribute('aria-describedby');
    }
  };

  /** The box of an API field name, trying shorter names: variants[1].name, forced.u1 → forced. */
  const boxOf = (field) => {
    let name = field;
    for (;;) {
      const found = form.querySelector(`[data-field="${CSS.escape(name)}"]`);
      if (found) return found;
      const shorter = name.replace(/(\.[^.[\]]*|\[\d+\])$/, '');
      if (shorter === name || !shorter) return null;
      name = shorter;
    }
  };

  const showErrors = (heading, errors) => {
    const items = [];
    for (const { field, message } of errors) {
      const target = field ? boxOf(field) : null;
      let control = null;
      if (target) {
        const error = target.querySelector(':scope > .field-error');
        error.hidden = false;
        error.textContent = error.textContent ? `${error.textContent} ${message}` : message;
        control = target.matches('fieldset') ? target.querySelector('input, select, textarea') : target.querySelector(':scope > input, :scope > select, :scope > textarea');
        if (control && !target.matches('fieldset')) {
          control.setAttribute('aria-invalid', 'true');
          const described = (control.getAttribute('aria-describedby') || '').split(' ').filter(Boolean);
          if (!described.includes(error.id)) control.setAttribute('aria-describedby', [error.id, ...described].join(' '));
        }
      }
      const text = field ? `${field}: ${message}` : message;
      items.push(
        h(
          'li',
          {},
          control
            ? h(
                'a',
                {
                  href: `#${control.id}`,
                  onclick: (event) => {
                    event.preventDefault();
                    control.focus();
                  },
                },
                text,
              )
            : text,
        ),
      );
    }
    summary.className = 'message error';
    summary.setAttribute('role', 'alert');
    fill(summary, h('strong', {}, heading), items.length ? h('ul', {}, items) : null);
    summary.focus();
  };

  return { clearErrors, showErrors };
}

/**
 * Sends a form's `request` with its `submit` button disabled, and shows what the origin
 * refused: a 422's field errors at their fields, a 412 as somebody else's change since the
 * page loaded, anything else as its message (with the fields `fieldsOf(error)` names, for
 * refusals such as a full layer that concern one field). Resolves to what was saved, or null
 * when it was refused.
 */
export async function save({ submit, showErrors, what, request, fieldsOf = () => [] }) {
  submit.disabled = true;
  try {
    return await request();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status === 422) {
      showErrors(`The origin refused the ${what}:`, error.fields || []);
    } else if (error.status === 412) {
      showErrors(`Someone changed this ${what} since it was loaded. Reload the page to see their change, then edit again.`, []);
    } else {
      showErrors(error.message, fieldsOf(error));
    }
    return null;
  } finally {
    submit.disabled = false;
  }
}
