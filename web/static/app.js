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

// A table wider than the screen scrolls inside its .table-wrap. Keyboard users can scroll it
// only if it can take the focus, so a wrapper that scrolls becomes a focusable region named
// by its table's caption (and stops being one when the window is wide enough again).
function focusableScrollers() {
  for (const wrap of document.querySelectorAll(".table-wrap")) {
    const scrolls = wrap.scrollWidth > wrap.clientWidth;
    if (scrolls && !wrap.hasAttribute("tabindex")) {
      const caption = wrap.querySelector("caption");
      wrap.tabIndex = 0;
      wrap.setAttribute("role", "region");
      wrap.setAttribute("aria-label", (caption && caption.textContent.trim()) || "Table");
      wrap.dataset.scrollRegion = "1";
    } else if (!scrolls && wrap.dataset.scrollRegion) {
      for (const name of ["tabindex", "role", "aria-label", "data-scroll-region"]) {
        wrap.removeAttribute(name);
      }
    }
  }
}

focusableScrollers();
window.addEventListener("resize", focusableScrollers);
document.addEventListener("htmx:afterSettle", focusableScrollers);

window.modelpress = { csrfToken };
