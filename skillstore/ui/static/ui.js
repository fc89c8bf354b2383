// skillstore console: refresh the rows of a live table (the job list) in place every 2 s.
"use strict";
(function () {
  const body = document.querySelector("tbody[data-refresh]");
  if (!body) return;
  const stamp = document.getElementById("refreshed");
  async function refresh() {
    try {
      const answer = await fetch(body.dataset.refresh, {credentials: "same-origin"});
      if (answer.ok) {
        body.innerHTML = await answer.text();
        if (stamp) stamp.textContent = "Last refreshed " + new Date().toLocaleTimeString() + ".";
      } else if (stamp) {
        stamp.textContent = "Refresh failed (" + answer.status + "); retrying.";
      }
    } catch (err) {
      if (stamp) stamp.textContent = "Server unreachable; retrying.";
    }
  }
  setInterval(refresh, 2000);
})();
