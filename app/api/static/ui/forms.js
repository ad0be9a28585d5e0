// One post per form: a second press of a form's button (a double click, Enter pressed twice, an
// impatient click while the answer is slow) sent the form again, and the server took both: two
// login attempts against the address's limit, two recommendations logged, two feedback rows for
// one rating. A form is sent once until a page is shown again; the page that answers it, or this
// one again from the back/forward cache, takes posts as usual. Changing the form's fields (another
// star chosen) lets it be sent again. Without JavaScript the forms work as before.
//
// A form not saved is given back: what a form marked data-draft held when it was sent is kept in
// this tab's sessionStorage (never the address, never the server; no hidden field, so no CSRF
// value, and no password) for the next page only. When that page says nothing was saved and leads
// back to the form (the login page after the session expired, a form refused as out of date, the
// database down: <body data-keeps-form>), it is kept until the next other page; if that one holds
// the same form, the form is filled in again as it was sent, and said so. Any other page drops it.
(function () {
  "use strict";
  var SENT = "data-sent";
  var KEPT = "movierec.unsent-form";

  function store() {
    try { return window.sessionStorage; } catch (error) { return null; }  // storage off: no draft
  }

  function readDraft() {
    var storage = store();
    if (!storage) { return null; }
    try { return JSON.parse(storage.getItem(KEPT) || "null"); } catch (error) { return null; }
  }

  function writeDraft(draft) {
    var storage = store();
    if (!storage) { return; }
    try {
      if (draft) { storage.setItem(KEPT, JSON.stringify(draft)); } else { storage.removeItem(KEPT); }
    } catch (error) { /* storage full or refused: the form is simply not given back */ }
  }

  function kept(element) {
    return element.name && !element.disabled &&
      ["hidden", "password", "submit", "button", "reset", "file"].indexOf(element.type) < 0;
  }

  function saveDraft(form) {
    var fields = [];
    Array.prototype.forEach.call(form.elements, function (element) {
      if (!kept(element) || ((element.type === "radio" || element.type === "checkbox") && !element.checked)) {
        return;
      }
      fields.push([element.name, element.value]);
    });
    writeDraft({form: form.getAttribute("data-draft"), fields: fields, unsaved: false});
  }

  function giveBack(form, fields) {
    Array.prototype.forEach.call(form.elements, function (element) {
      if (!kept(element)) { return; }
      var values = fields.filter(function (field) { return field[0] === element.name; })
        .map(function (field) { return field[1]; });
      if (element.type === "radio" || element.type === "checkbox") {
        element.checked = values.indexOf(element.value) >= 0;
      } else if (values.length) {
        element.value = values[0];
      }
    });
    var note = document.createElement("p");
    note.className = "notice notice-error";
    note.id = "form-restored";
    note.setAttribute("role", "status");
    note.tabIndex = -1;
    var rating = form.classList.contains("rating-form") && form.querySelector("fieldset");
    note.textContent = rating
      ? "Your rating was not saved when you sent it. It is chosen again below: save it once more."
      : "This form was not saved when you sent it. What you entered is filled in again below: " +
        "check it and send it once more.";
    if (rating) {
      form.insertBefore(note, rating);
    } else {
      form.parentNode.insertBefore(note, form);
    }
    note.focus();
  }

  function pageShown() {
    var draft = readDraft();
    if (!draft) { return; }
    if (document.body.hasAttribute("data-keeps-form")) {
      draft.unsaved = true;
      writeDraft(draft);
      return;
    }
    writeDraft(null);
    if (!draft.unsaved) { return; }
    var form = Array.prototype.filter.call(document.querySelectorAll("form[data-draft]"), function (f) {
      return f.getAttribute("data-draft") === draft.form;
    })[0];
    if (form && Array.isArray(draft.fields)) { giveBack(form, draft.fields); }
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") { return; }
    if (form.hasAttribute(SENT)) {
      event.preventDefault();
      return;
    }
    if (!event.defaultPrevented) {
      form.setAttribute(SENT, "");
      if (form.hasAttribute("data-draft")) { saveDraft(form); }
    }
  });

  function allow(form) { if (form) { form.removeAttribute(SENT); } }
  document.addEventListener("input", function (event) { allow(event.target.form); });
  document.addEventListener("change", function (event) { allow(event.target.form); });
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    Array.prototype.forEach.call(document.querySelectorAll("form[" + SENT + "]"), allow);
  });
  pageShown();  // a deferred script: the page is parsed
}());
