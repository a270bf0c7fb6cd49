// Progressive enhancement: every page works without this file.
(function () {
  "use strict";

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });

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
    input.addEventListener("change", function () {
      var title = dropzone.querySelector(".dropzone-title");
      var n = input.files.length;
      if (title) title.textContent = n ? (n === 1 ? input.files[0].name : n + " files chosen") : "Drop images here";
      if (dropzone.hasAttribute("data-autosubmit") && n) input.form.requestSubmit();
    });
  }

  // Searching takes a moment while the picture is embedded: say so, and stop double submits.
  var searchForm = document.querySelector("[data-search-form]");
  if (searchForm) {
    searchForm.addEventListener("submit", function () {
      searchForm.classList.add("busy");
      var button = searchForm.querySelector("button[type=submit]");
      button.disabled = true;
      button.textContent = "Searching…";
    });
  }

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
            li.querySelector("[data-message]").textContent = image.error || "";
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
          if (!reply.ok) {
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
