// The job composer: choosing another kind of pass shows that pass's options at once (the
// page comes back with everything typed so far); without script a button does the same.
"use strict";

(function () {
  const form = document.getElementById("composer");
  if (!form) return;
  form.querySelectorAll("select.pass-variant").forEach((select) => {
    const button = select.closest("fieldset").querySelector("button.retype");
    if (!button) return;
    button.hidden = true;
    select.addEventListener("change", () => form.requestSubmit(button));
  });
  const summary = document.getElementById("error-summary");
  if (summary && !document.querySelector("[autofocus]")) summary.focus();
})();
