// Upload forms of the models and datasets pages: the file goes with XMLHttpRequest, whose
// upload progress events fetch() does not give, so the <progress> bar follows the bytes sent.
// Without this script the form is a plain multipart POST and works the same, without a bar.
"use strict";

(function () {
  function sizeText(bytes) {
    const units = ["B", "KB", "MB", "GB"];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function enhance(form) {
    const bar = form.querySelector("progress");
    const barBox = form.querySelector(".upload-progress");
    const status = form.querySelector(".upload-status");
    const error = form.querySelector("#upload-error");
    const button = form.querySelector('button[type="submit"]');
    const fileInput = form.querySelector('input[type="file"]');
    const maxBytes = Number(form.dataset.maxBytes || 0);

    function showError(message) {
      error.textContent = `The upload was refused: ${message}. Nothing was stored.`;
      error.hidden = false;
      status.textContent = "";
      button.disabled = false;
    }

    form.addEventListener("submit", (event) => {
      event.preventDefault();
      error.hidden = true;
      const file = fileInput.files[0];
      if (!file) {
        showError("choose a file first");
        return;
      }
      if (maxBytes && file.size > maxBytes) {
        showError(`the file is ${sizeText(file.size)}, larger than the limit of ${sizeText(maxBytes)}`);
        return;
      }
      const body = new FormData(form);
      const request = new XMLHttpRequest();
      // The action URL carries the token for the script-less post; the header is enough here.
      request.open("POST", form.action.split("?")[0]);
      request.setRequestHeader("X-CSRF-Token", window.modelpress.csrfToken());
      request.setRequestHeader("Accept", "application/json");
      request.responseType = "json";
      button.disabled = true;
      barBox.hidden = false;
      bar.value = 0;
      bar.textContent = "0%";
      status.textContent = `Uploading ${file.name} (${sizeText(file.size)})…`;

      let announced = 0;
      request.upload.addEventListener("progress", (progress) => {
        if (!progress.lengthComputable) return;
        const percent = Math.floor((progress.loaded / progress.total) * 100);
        bar.value = percent;
        bar.textContent = `${percent}%`;
        // Screen readers hear every quarter, not every event.
        if (percent >= announced + 25 || percent === 100) {
          announced = percent - (percent % 25);
          status.textContent = `Uploaded ${percent}% of ${file.name}.`;
        }
      });
      request.upload.addEventListener("load", () => {
        bar.value = 100;
        bar.textContent = "100%";
        status.textContent = `Uploaded 100% of ${file.name}; checking it…`;
      });
      request.addEventListener("load", () => {
        const answer = request.response || {};
        if (request.status === 201 && answer.url) {
          status.textContent = "Stored. Opening its page…";
          window.location.assign(answer.url);
        } else if (request.status === 403 && !answer.error) {
          showError("the page's security token is stale or your key may not upload; reload the page and try again");
        } else if (request.status === 401) {
          window.location.assign(`/signin?next=${encodeURIComponent(window.location.pathname)}`);
        } else {
          showError(answer.error || answer.detail || `the server answered ${request.status}`);
        }
      });
      request.addEventListener("error", () => {
        showError(
          "the connection closed before the server answered (is the file larger than the " +
            `limit of ${sizeText(maxBytes)}, or is the server down?)`,
        );
      });
      request.send(body);
    });
  }

  document.querySelectorAll("form.upload-form").forEach(enhance);
})();
