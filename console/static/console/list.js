/* The queue list refreshes itself (pausable): the same URL is fetched and the rows' cells replaced in place.
   It pauses while rows are selected (an action is being prepared) and reloads when other queues are listed. */
(function () {
  "use strict";
  var toggle = document.getElementById("sf-list-refresh"), note = document.getElementById("sf-list-note");
  var table = document.getElementById("result_list");
  if (!toggle || !note) { return; }
  var KEY = "sf-list-refresh";
  toggle.checked = localStorage.getItem(KEY) !== "off";
  toggle.addEventListener("change", function () {
    localStorage.setItem(KEY, toggle.checked ? "on" : "off");
    note.textContent = toggle.checked ? "" : "paused";
    if (toggle.checked) { schedule(); }
  });
  function ids(root) {
    return Array.from(root.querySelectorAll("#result_list tbody input.action-select")).map(function (b) { return b.value; });
  }
  function selected() { return document.querySelectorAll("#result_list tbody input.action-select:checked").length > 0; }
  var timer = null;
  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, 5000); }
  function refresh() {
    if (!toggle.checked) { return; }
    if (selected()) { note.textContent = "paused while queues are selected"; return schedule(); }
    fetch(location.href, {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("result_list");
        if (!table || !fresh) { return; }
        if (ids(doc).join() !== ids(document).join()) { location.reload(); return; }
        var rows = table.tBodies[0].rows, newRows = fresh.tBodies[0].rows;
        for (var i = 0; i < rows.length; i++) {
          for (var j = 1; j < rows[i].cells.length; j++) {  // cell 0 holds the checkbox: left alone
            if (newRows[i].cells[j] && rows[i].cells[j].innerHTML !== newRows[i].cells[j].innerHTML) {
              rows[i].cells[j].innerHTML = newRows[i].cells[j].innerHTML;
            }
          }
        }
        note.textContent = "updated " + new Date().toLocaleTimeString("en-GB", {hour12: false});
      })
      .catch(function (err) { note.textContent = "refresh failed (" + err.message + ")"; })
      .then(schedule);
  }
  if (toggle.checked) { schedule(); } else { note.textContent = "paused"; }
})();
