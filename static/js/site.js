// Progressive enhancement: every page works without this file.
(function () {
  "use strict";

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

  // A refusal in the page's own words: where the server's refusal of the same request would show.
  var refuse = function (message) {
    var refusal = document.querySelector("[data-refusal]");
    var results = document.querySelector("[data-results]");
    if (!refusal && results) {
      refusal = document.createElement("p");
      refusal.className = "error";
      refusal.setAttribute("role", "alert");
      results.replaceChildren(refusal);
    }
    if (refusal) refusal.textContent = message;
  };

  // Drag and drop onto a drop zone fills its file input; files dropped anywhere on the page
  // go to the page's drop zone, so a near miss does not make the browser open the file.
  var dropzone = document.querySelector("[data-dropzone]");
  if (dropzone) {
    var input = dropzone.querySelector("input[type=file]");
    var depth = 0;
    document.addEventListener("dragenter", function (e) { e.preventDefault(); depth++; dropzone.classList.add("dragging"); });
    document.addEventListener("dragleave", function () { if (--depth <= 0) { depth = 0; dropzone.classList.remove("dragging"); } });
    document.addEventListener("dragover", function (e) { e.preventDefault(); });
    document.addEventListener("drop", function (e) {
      e.preventDefault();
      depth = 0;
      dropzone.classList.remove("dragging");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      var transfer = new DataTransfer();
      Array.prototype.forEach.call(e.dataTransfer.files, function (f) { if (input.multiple || !transfer.files.length) transfer.items.add(f); });
      input.files = transfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
    var title = dropzone.querySelector(".dropzone-title");
    var emptyTitle = title ? title.textContent : "";
    // A file over the limit is refused before a byte of it is sent, with the server's message
    // ("{name}" stands for the file's name where the server names it).
    var limits = input.form.dataset;
    var tooLarge = function () {
      return Array.prototype.find.call(input.files, function (f) { return f.size > Number(limits.maxBytes); });
    };
    input.addEventListener("change", function () {
      var oversized = limits.maxBytes ? tooLarge() : null;
      if (oversized) {
        refuse(limits.tooLarge.replace("{name}", oversized.name));
        input.value = "";
      } else if (input.files.length) {
        var refusal = document.querySelector("[data-refusal]");
        if (refusal) refusal.textContent = "";
      }
      var n = input.files.length;
      if (title) title.textContent = n ? (n === 1 ? input.files[0].name : n + " files chosen") : emptyTitle;
      // After every other change listener, so that the form knows which query is current.
      if (dropzone.hasAttribute("data-autosubmit") && n) window.setTimeout(function () { input.form.requestSubmit(); });
    });
  }

  // Search: the results come in place, so that the picture stays chosen for "load more" and for
  // searching a region of it; progress shows while the server embeds the query.
  var searchForm = document.querySelector("[data-search-form]");
  var resultsBox = document.querySelector("[data-results]");
  if (searchForm && resultsBox && window.fetch && window.FormData) {
    var progress = searchForm.querySelector("[data-search-progress]");
    var elapsed = searchForm.querySelector("[data-search-elapsed]");
    var fileInput = searchForm.querySelector("[data-file-input]");
    var urlField = searchForm.querySelector("input[name=url]");
    var wordsField = searchForm.querySelector("[data-words-field]");
    var boxField = searchForm.querySelector("[data-box-field]");
    var offsetField = searchForm.querySelector("[data-offset-field]");
    var lastSource = null;
    var inFlight = null;

    var hasQuery = function () {
      return (fileInput && fileInput.files.length) || (urlField && urlField.value.trim()) ||
        searchForm.querySelector("input[name=image_id]") || (wordsField && wordsField.value.trim());
    };

    var setBusy = function (busy) {
      searchForm.classList.toggle("busy", busy);
      resultsBox.setAttribute("aria-busy", busy ? "true" : "false");
      searchForm.querySelectorAll("button[type=submit]").forEach(function (b) { b.disabled = busy; });
    };

    var run = function (append) {
      if (!hasQuery()) {
        progress.textContent = "Choose a picture, paste one, give its URL, or type words to search with.";
        return;
      }
      if (lastSource === "url" && fileInput) fileInput.value = "";
      if (lastSource === "file" && urlField) urlField.value = "";
      if (!append) offsetField.value = "0";
      var started = Date.now();
      // Said once; the seconds tick beside it, outside the status region.
      progress.textContent = "Searching…";
      var ticker = window.setInterval(function () {
        elapsed.textContent = ((Date.now() - started) / 1000).toFixed(1) + " s";
      }, 200);
      setBusy(true);
      var request = fetch(searchForm.action, {
        method: "POST", body: new FormData(searchForm), credentials: "same-origin",
        headers: { "X-Requested-With": "fetch" }
      });
      inFlight = request;
      request.then(function (r) { return r.text(); })
        .then(function (html) {
          if (request !== inFlight) return;
          if (append) appendPage(html); else showResults(html);
          bindResults();
        })
        .catch(function () {
          progress.textContent = "The search failed; check your connection and try again.";
        })
        .finally(function () {
          window.clearInterval(ticker);
          elapsed.textContent = "";
          if (request === inFlight) setBusy(false);
        });
    };

    // The status line says what came ("24 matches, best 100%"), and focus moves to the results'
    // heading, which scrolls them into view; an error speaks for itself as an alert.
    var showResults = function (html) {
      resultsBox.innerHTML = html;
      var heading = resultsBox.querySelector("[data-results-heading]");
      progress.textContent = heading ? heading.textContent : "";
      if (heading) {
        heading.focus({ preventScroll: true });
        heading.scrollIntoView({ block: "start" });
      }
    };

    var appendPage = function (html) {
      var page = new DOMParser().parseFromString(html, "text/html");
      var grid = resultsBox.querySelector("[data-result-grid]");
      var tiles = page.querySelectorAll("[data-result-grid] > *");
      tiles.forEach(function (tile) { grid.append(document.adoptNode(tile)); });
      var oldMore = resultsBox.querySelector("[data-load-more-row]");
      var newMore = page.querySelector("[data-load-more-row]");
      if (newMore) oldMore.replaceWith(document.adoptNode(newMore)); else if (oldMore) oldMore.remove();
      var error = page.querySelector(".error");
      var heading = page.querySelector("[data-results-heading]");
      progress.textContent = error ? error.textContent : (heading ? heading.textContent : "");
      if (tiles.length) tiles[0].querySelector("a").focus();
    };

    // Each element is bound once: a page of results appended later brings only its new ones.
    var unbound = function (selector) {
      var element = resultsBox.querySelector(selector);
      if (!element || element.dataset.bound) return null;
      element.dataset.bound = "true";
      return element;
    };

    var bindResults = function () {
      var more = unbound("[data-load-more]");
      if (more) {
        more.hidden = false;
        more.addEventListener("click", function (event) {
          event.preventDefault();
          offsetField.value = more.dataset.nextOffset;
          run(true);
        });
      }
      var clear = unbound("[data-clear-box]");
      if (clear) clear.addEventListener("click", function () { boxField.value = ""; run(false); });
      var cropper = unbound("[data-cropper]");
      if (cropper) bindCropper(cropper);
    };

    // Drag a rectangle on the query picture to search that region; the box is sent in the
    // picture's own pixels, whatever size it is shown at.
    var bindCropper = function (cropper) {
      var img = cropper.querySelector("img");
      var frame = cropper.querySelector("[data-crop-box]");
      var scale = function () { return Number(cropper.dataset.width) / img.clientWidth; };
      var draw = function (x, y, w, h) {
        frame.hidden = false;
        frame.style.left = x + "px"; frame.style.top = y + "px";
        frame.style.width = w + "px"; frame.style.height = h + "px";
      };
      var showBox = function () {
        if (!cropper.dataset.box || !img.clientWidth) return;
        var b = cropper.dataset.box.split(",").map(Number), s = scale();
        draw(b[0] / s, b[1] / s, b[2] / s, b[3] / s);
      };
      if (img.complete) showBox(); else img.addEventListener("load", showBox);
      var start = null;
      var point = function (event) {
        var r = img.getBoundingClientRect();
        return { x: Math.min(Math.max(event.clientX - r.left, 0), r.width),
                 y: Math.min(Math.max(event.clientY - r.top, 0), r.height) };
      };
      cropper.addEventListener("pointerdown", function (event) {
        event.preventDefault();
        start = point(event);
        cropper.setPointerCapture(event.pointerId);
        draw(start.x, start.y, 0, 0);
      });
      cropper.addEventListener("pointermove", function (event) {
        if (!start) return;
        var p = point(event);
        draw(Math.min(start.x, p.x), Math.min(start.y, p.y), Math.abs(p.x - start.x), Math.abs(p.y - start.y));
      });
      cropper.addEventListener("pointerup", function (event) {
        if (!start) return;
        var p = point(event), s = scale();
        var x = Math.min(start.x, p.x), y = Math.min(start.y, p.y);
        var w = Math.abs(p.x - start.x), h = Math.abs(p.y - start.y);
        start = null;
        if (w < 6 || h < 6) { frame.hidden = true; return; }
        var box = [x * s, y * s, w * s, h * s].map(Math.round);
        box[2] = Math.min(box[2], Number(cropper.dataset.width) - box[0]);
        box[3] = Math.min(box[3], Number(cropper.dataset.height) - box[1]);
        boxField.value = box.join(",");
        run(false);
      });
    };

    if (fileInput) fileInput.addEventListener("change", function () {
      lastSource = "file";
      boxField.value = "";
    });
    if (urlField) urlField.addEventListener("input", function () { lastSource = "url"; boxField.value = ""; });
    searchForm.addEventListener("submit", function (event) {
      event.preventDefault();
      run(false);
    });

    // Paste a picture (or the address of one) anywhere on the page.
    document.addEventListener("paste", function (event) {
      var data = event.clipboardData;
      if (!data) return;
      var picture = Array.prototype.find.call(data.files || [], function (f) { return /^image\//.test(f.type); });
      if (picture && fileInput) {
        event.preventDefault();
        var transfer = new DataTransfer();
        transfer.items.add(picture);
        fileInput.files = transfer.files;
        // As if chosen with the picker: the drop zone names it and the search starts.
        fileInput.dispatchEvent(new Event("change", { bubbles: true }));
        return;
      }
      var text = (data.getData("text") || "").trim();
      var typing = document.activeElement && /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
      if (!typing && urlField && /^https?:\/\/\S+$/.test(text)) {
        event.preventDefault();
        urlField.value = text;
        lastSource = "url";
        boxField.value = "";
        run(false);
      }
    });
    bindResults();
  }

  // A tile is one tab stop; its "Similar" link is the arrow keys' reach from it, and back.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
    var tile = event.target.closest && event.target.closest("[data-tile]");
    if (!tile) return;
    var target = event.key === "ArrowRight" ? tile.querySelector("[data-similar]") : tile.querySelector(".tile-link");
    if (target && target !== event.target) {
      event.preventDefault();
      target.focus();
    }
  });

  var pasteKeys = document.querySelector("[data-paste-keys]");
  if (pasteKeys && /Mac|iPhone|iPad/.test(navigator.platform)) pasteKeys.textContent = "⌘V";

  // Uploads: send with fetch, list each file's outcome, then follow the states until settled.
  var form = document.querySelector("[data-upload-form]");
  var list = document.querySelector("[data-upload-list]");
  if (form && list) {
    var statesUrl = list.dataset.statesUrl;
    var badge = function (state, label) {
      var span = document.createElement("span");
      span.className = "badge badge-" + state;
      span.setAttribute("data-state", "");
      span.textContent = label;
      return span;
    };
    var row = function (name) {
      var li = document.createElement("li");
      li.className = "upload-row";
      var thumb = document.createElement("span");
      thumb.className = "upload-thumb";
      var label = document.createElement("span");
      label.className = "upload-name break";
      label.textContent = name;
      var message = document.createElement("span");
      message.className = "upload-message";
      message.setAttribute("data-message", "");
      li.append(thumb, label, badge("uploading", "Uploading…"), message);
      return li;
    };
    var show = function (li, result) {
      var image = result.image;
      if (image) {
        var img = document.createElement("img");
        img.src = image.thumbnail_url; img.alt = ""; img.className = "upload-thumb";
        li.querySelector(".upload-thumb").replaceWith(img);
        var link = document.createElement("a");
        link.href = image.url; link.textContent = result.name;
        var name = li.querySelector(".upload-name");
        name.textContent = ""; name.append(link);
      }
      var state = result.status === "accepted" ? image.state : (result.status === "duplicate" ? "duplicate" : "failed");
      var label = result.status === "accepted" ? image.state_label : (result.status === "duplicate" ? "Duplicate" : "Refused");
      li.querySelector("[data-state]").replaceWith(badge(state, label));
      li.querySelector("[data-message]").textContent = result.message || "";
      if (result.status === "accepted") li.dataset.imageId = image.id;
    };
    var poll = function () {
      var pending = list.querySelectorAll("[data-image-id]:not([data-settled])");
      if (!pending.length) return;
      var ids = Array.prototype.map.call(pending, function (li) { return li.dataset.imageId; });
      fetch(statesUrl + "?ids=" + ids.join(","), { headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          data.images.forEach(function (image) {
            var li = list.querySelector('[data-image-id="' + image.id + '"]');
            if (!li) return;
            li.querySelector("[data-state]").replaceWith(badge(image.state, image.state_label));
            var message = li.querySelector("[data-message]");
            message.textContent = image.error || "";
            if (image.copy_of) {
              var copyLink = document.createElement("a");
              copyLink.href = image.copy_of.url;
              copyLink.textContent = "#" + image.copy_of.id;
              message.append("Looks like an edited copy of ", copyLink);
              message.classList.add("copy-notice");
            }
            // A placeholder until the worker has made the thumbnail.
            var thumb = li.querySelector("img.upload-thumb");
            if (thumb && thumb.getAttribute("src") !== image.thumbnail_url) thumb.src = image.thumbnail_url;
            if (image.state === "indexed" || image.state === "failed") li.dataset.settled = "";
          });
        })
        .catch(function () {})
        .finally(function () { window.setTimeout(poll, 1000); });
    };
    form.addEventListener("submit", function (event) {
      var input = form.querySelector("[data-file-input]");
      if (!window.fetch || !input.files.length) return;
      event.preventDefault();
      var files = Array.prototype.slice.call(input.files);
      var rows = files.map(function (f) { return row(f.name); });
      var batch = document.createDocumentFragment();
      rows.forEach(function (li) { batch.append(li); });
      list.prepend(batch);
      var data = new FormData(form);
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      fetch(form.action, { method: "POST", body: data, headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (reply) {
          // A refusal of the whole request has a message; an upload the media store could not take
          // (503) still says, file by file, what became of each.
          if (!reply.ok && !reply.body.results) {
            rows.forEach(function (li) { show(li, { status: "refused", name: li.textContent, message: reply.body.message }); });
            return;
          }
          reply.body.results.forEach(function (result, i) { show(rows[i], result); });
          poll();
        })
        .catch(function () {
          rows.forEach(function (li) { show(li, { status: "refused", name: "", message: "The upload failed; check your connection and try again." }); });
        })
        .finally(function () {
          button.disabled = false;
          form.reset();
          input.dispatchEvent(new Event("change"));
        });
    });
    poll();
  }
})();
