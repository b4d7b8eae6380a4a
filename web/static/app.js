// modelpress dashboard: what every page shares. htmx requests carry the session's CSRF token
// in a header (forms carry it as a hidden field), so every state-changing request has it.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

document.addEventListener("htmx:configRequest", (event) => {
  event.detail.headers["X-CSRF-Token"] = csrfToken();
});

window.modelpress = { csrfToken };
