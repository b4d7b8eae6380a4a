// Admin pages: a "Copy key" button beside a new key. Without script the field can still be
// selected and copied, so the button exists only when it can work.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const field = document.getElementById("new-key-value");
  const said = document.getElementById("new-key-copied");
  if (!field || !said) return;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary";
  button.textContent = "Copy key";
  button.addEventListener("click", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(field.value);
      said.textContent = "Copied to the clipboard.";
    } catch {
      said.textContent = "The browser did not allow copying: the key is selected, press Ctrl+C or ⌘C.";
    }
  });
  field.insertAdjacentElement("afterend", button);
});
