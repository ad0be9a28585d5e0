// One post per form: a second press of a form's button (a double click, Enter pressed twice, an
// impatient click while the answer is slow) sent the form again, and the server took both: two
// login attempts against the address's limit, two recommendations logged, two feedback rows for
// one rating. A form is sent once until a page is shown again; the page that answers it, or this
// one again from the back/forward cache, takes posts as usual. Changing the form's fields (another
// star chosen) lets it be sent again. Without JavaScript the forms work as before.
(function () {
  "use strict";
  var SENT = "data-sent";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") { return; }
    if (form.hasAttribute(SENT)) {
      event.preventDefault();
      return;
    }
    if (!event.defaultPrevented) { form.setAttribute(SENT, ""); }
  });

  function allow(form) { if (form) { form.removeAttribute(SENT); } }
  document.addEventListener("input", function (event) { allow(event.target.form); });
  document.addEventListener("change", function (event) { allow(event.target.form); });
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    Array.prototype.forEach.call(document.querySelectorAll("form[" + SENT + "]"), allow);
  });
}());
