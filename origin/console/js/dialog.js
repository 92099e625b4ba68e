// Confirmation dialogs on the native <dialog> element: modal, focus kept inside, Escape
// cancels, and focus goes back to the button that opened it.

import { h, uid } from './dom.js';

/**
 * Asks for confirmation. `content` is extra nodes (e.g. a select for the variant to ship);
 * resolves to the dialog's form data when confirmed, or null when cancelled.
 */
export function confirmDialog({ title, message, confirmLabel, danger = false, content = [] }) {
  const opener = document.activeElement;
  const titleId = uid('dialog-title');
  const textId = uid('dialog-text');
  const cancel = h('button', { type: 'button', class: 'secondary', value: 'cancel' }, 'Cancel');
  const confirm = h('button', { type: 'submit', class: danger ? 'danger' : '', value: 'confirm', dataset: { confirm: '' } }, confirmLabel);
  const form = h(
    'form',
    { method: 'dialog' },
    h('h2', { id: titleId }, title),
    h('p', { id: textId }, message),
    content,
    h('div', { class: 'actions' }, confirm, cancel),
  );
  const dialog = h('dialog', { 'aria-labelledby': titleId, 'aria-describedby': textId }, form);
  document.body.append(dialog);
  return new Promise((resolve) => {
    let result = null;
    cancel.addEventListener('click', () => dialog.close());
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      result = new FormData(form);
      dialog.close();
    });
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      resolve(result);
    });
    dialog.showModal();
    // The safe choice has focus unless the dialog asks for input first.
    const first = form.querySelector('select, input');
    (first || cancel).focus();
  });
}
