// weightcast console: the only script. Live parts of a page are elements
// with data-events="URL": the server sends their new HTML (rendered as the
// page itself renders it) as server-sent events; an event named "done"
// is the last one. Without this script every page still works (reload).
"use strict";
function follow(el) {
  const source = new EventSource(el.dataset.events);
  const swap = (ev) => {
    // Keep keyboard focus where it was if the element is redrawn.
    const focused = document.activeElement && document.activeElement.id;
    el.innerHTML = ev.data;
    if (focused) {
      const again = document.getElementById(focused);
      if (again) again.focus();
    }
  };
  source.onmessage = swap;
  source.addEventListener("done", (ev) => {
    swap(ev);
    source.close();
  });
  source.onerror = () => {
    el.dataset.live = "reconnecting";
  };
  source.onopen = () => {
    el.dataset.live = "open";
  };
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-events]").forEach(follow);
});
