// Moves the progress bars of running jobs; reloads the list once one of them ends.
(function () {
  const url = document.currentScript.dataset.progressUrl;
  function activeIds() {
    return Array.from(document.querySelectorAll(".job-progress[data-active='1']")).map(e => e.dataset.job);
  }
  async function poll() {
    const ids = activeIds();
    if (!ids.length) return;
    try {
      const reply = await fetch(url + "?ids=" + ids.join(","), {headers: {"Accept": "application/json"}});
      const data = await reply.json();
      let ended = false;
      for (const job of data.jobs) {
        const bar = document.querySelector(".job-progress[data-job='" + job.id + "']");
        if (!bar) continue;
        bar.querySelector("progress").value = job.percent;
        bar.querySelector(".job-count").textContent = job.done + " / " + job.total;
        const eta = document.querySelector(".job-eta[data-job='" + job.id + "']");
        if (eta) eta.textContent = job.eta;
        if (!job.active) ended = true;
      }
      if (ended) { window.location.reload(); return; }
    } catch (error) { /* the next poll tries again */ }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
