// The job composer: choosing another kind of pass shows that pass's options (the page comes
// back with everything typed so far); without script a button does the same.
//
// A pick with the mouse does so at once. Arrow keys change a closed <select> on every press,
// and reloading the page on each would drop the presses that come while it loads, so a
// choice made by keyboard waits: Enter in the list shows the options, and the button
// "Show this pass's options", shown again from the first such change, does too.
"use strict";

(function () {
  const form = document.getElementById("composer");
  if (!form) return;
  form.querySelectorAll("select.pass-variant").forEach((select) => {
    const button = select.closest("fieldset").querySelector("button.retype");
    if (!button) return;
    button.hidden = true;
    let byKeyboard = false;
    let pending = false;
    select.addEventListener("pointerdown", () => {
      byKeyboard = false;
    });
    select.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && pending) {
        event.preventDefault();
        form.requestSubmit(button);
      } else if (event.key !== "Tab" && event.key !== "Shift") {
        byKeyboard = true;
      }
    });
    select.addEventListener("change", () => {
      if (!byKeyboard) {
        form.requestSubmit(button);
        return;
      }
      pending = true;
      button.hidden = false;
    });
  });
  const summary = document.getElementById("error-summary");
  if (summary && !document.querySelector("[autofocus]")) summary.focus();
})();
