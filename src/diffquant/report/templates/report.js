/* Click-to-zoom for images and sortable tables. Plain JS, no library, works from file://. */
(function () {
  "use strict";
  var box = document.getElementById("lightbox");
  var big = box.querySelector("img");
  var caption = box.querySelector(".caption");

  function open(img) {
    big.src = img.currentSrc || img.src;
    big.alt = img.alt;
    caption.textContent = img.alt;
    var small = Math.max(img.naturalWidth, img.naturalHeight) < 512;
    var scale = small && img.naturalWidth ? Math.max(1, Math.floor(512 / Math.max(img.naturalWidth, img.naturalHeight))) : 1;
    big.style.width = img.naturalWidth ? (img.naturalWidth * scale) + "px" : "";
    box.hidden = false;
  }
  function close() { box.hidden = true; big.removeAttribute("src"); }

  document.querySelectorAll("img.zoomable").forEach(function (img) {
    img.addEventListener("click", function () { open(img); });
  });
  box.addEventListener("click", close);
  document.addEventListener("keydown", function (event) { if (event.key === "Escape") { close(); } });

  function cellValue(row, index, numeric) {
    var cell = row.children[index];
    if (!cell) { return numeric ? NaN : ""; }
    if (numeric) {
      var raw = cell.getAttribute("data-value");
      return raw === null || raw === "" ? NaN : parseFloat(raw);
    }
    return cell.textContent.trim().toLowerCase();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.querySelectorAll("thead th");
    headers.forEach(function (th, index) {
      th.addEventListener("click", function () {
        var numeric = th.getAttribute("data-sort") === "num";
        var ascending = th.getAttribute("data-dir") !== "asc";
        headers.forEach(function (h) { h.removeAttribute("data-dir"); });
        th.setAttribute("data-dir", ascending ? "asc" : "desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
          if (numeric) {
            if (isNaN(x) && isNaN(y)) { return 0; }
            if (isNaN(x)) { return 1; }
            if (isNaN(y)) { return -1; }
            return ascending ? x - y : y - x;
          }
          return ascending ? (x < y ? -1 : x > y ? 1 : 0) : (x < y ? 1 : x > y ? -1 : 0);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });

  function ready() {
    var broken = Array.prototype.filter.call(document.images, function (img) {
      return img.getAttribute("src") && img.complete && img.naturalWidth === 0 && !img.closest("#lightbox");
    });
    broken.forEach(function (img) { window.__dqRecord("image did not load: " + img.getAttribute("src")); });
    var status = document.getElementById("js-status");
    status.textContent = "scripts ran";
    document.documentElement.setAttribute("data-report-ready", "yes");
  }
  if (document.readyState === "complete") { ready(); } else { window.addEventListener("load", ready); }
})();
