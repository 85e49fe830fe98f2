// The console's live parts: polls the JSON endpoints and renders with textContent only (no HTML injection).
"use strict";
(() => {
  const body = document.body;
  const base = body.dataset.base;
  const csrf = body.dataset.csrf;
  const pollMs = Number(body.dataset.pollMs) || 1000;
  const $ = (selector) => document.querySelector(selector);

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function pairs(counts) {
    return Object.keys(counts).sort().map((key) => `${key} ${counts[key]}`).join(", ");
  }

  function byType(push) {
    const sent = pairs(push.sent_per_type);
    const failed = pairs(push.failed_per_type);
    return [sent && `sent: ${sent}`, failed && `failed: ${failed}`].filter(Boolean).join("; ");
  }

  function progress(push) {
    const done = push.sent + push.failed;
    const share = push.final ? 1 : push.audience ? done / push.audience : 0;
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = share;
    return [bar, `${done}/${push.audience === null ? "?" : push.audience}`];
  }

  function renderPushes(pushes) {
    const tbody = $("#pushes tbody");
    const rows = pushes.map((push) => {
      const row = document.createElement("tr");
      row.dataset.pushId = push.id;
      row.dataset.status = push.status;
      cell(row, push.id, "id");
      cell(row, push.status, `status status-${push.status}`);
      cell(row, (push.created || "").replace("T", " ").slice(0, 19), "created");
      const audience = cell(row, push.target, "audience");
      if (push.alert) audience.title = push.alert;
      cell(row, String(push.sent), "sent");
      cell(row, String(push.failed), "failed");
      const [bar, label] = progress(push);
      const td = cell(row, "", "progress");
      td.append(bar, " ", label);
      cell(row, byType(push), "per-type");
      cell(row, pairs(push.failed_per_reason) + (push.error ? ` (${push.error})` : ""), "per-reason");
      return row;
    });
    tbody.replaceChildren(...rows);
    $("#no-pushes").hidden = pushes.length > 0;
  }

  function renderOverview(overview) {
    const queues = overview.queues;
    const rows = Object.entries(queues.depths || {}).map(([name, depth]) => {
      const row = document.createElement("tr");
      row.dataset.queue = name;
      cell(row, name);
      cell(row, depth === null ? "missing" : String(depth), "depth");
      return row;
    });
    $("#queues tbody").replaceChildren(...rows);
    $("#queues-note").textContent = queues.available ? "" : queues.note;
    const ppns = overview.ppns;
    $("#ppns-connected").textContent = ppns.connected === null ? "n/a" : String(ppns.connected);
    $("#ppns-known").textContent =
      ppns.known_installations === null ? "" : `${ppns.known_installations} installations with a PPNS backlog`;
    $("#ppns-note").textContent = ppns.note || "";
    const items = overview.credentials.map((check) => {
      const item = document.createElement("li");
      item.className = check.ok ? (check.warning ? "warn" : "ok") : "fail";
      item.dataset.name = check.name;
      const mark = check.ok ? (check.warning ? "WARN" : "OK") : "FAIL";
      item.textContent = `${mark} ${check.name}: ${check.detail}` + (check.ok && !check.warning ? "" : ` (fix: ${check.fix})`);
      return item;
    });
    for (const pause of overview.provider_pauses) {
      const item = document.createElement("li");
      item.className = "fail paused";
      item.dataset.name = `${pause.provider}:${pause.credential}`;
      item.textContent = `PAUSED ${pause.provider} ${pause.credential}: refused by the provider ` +
        `(${pause.reason}), ${pause.pauses} pause(s) (worker metrics)`;
      items.push(item);
    }
    if (items.length === 0) {
      const item = document.createElement("li");
      item.textContent = "No provider credentials configured for this app.";
      items.push(item);
    }
    $("#credentials").replaceChildren(...items);
  }

  async function getJson(path) {
    const response = await fetch(base + path, { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) {
      window.location.assign(base);
      throw new Error("session ended");
    }
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  function every(intervalMs, work) {
    const run = async () => {
      try {
        await work();
      } catch (error) {
        $("#updated").textContent = `update failed: ${error.message}`;
      }
      window.setTimeout(run, intervalMs);
    };
    run();
  }

  every(pollMs, async () => {
    renderPushes((await getJson("/api/pushes")).pushes);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  });
  every(Math.max(pollMs * 5, 5000), async () => renderOverview(await getJson("/api/overview")));

  const form = $("#test-push");
  form.addEventListener("change", () => {
    const where = form.elements.audience.value === "where";
    $("#test-where").hidden = !where;
    $("#test-channels").hidden = where;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = $("#test-push-result");
    result.textContent = "sending…";
    const payload = {
      audience: form.elements.audience.value,
      channels: $("#test-channels").value,
      where: $("#test-where").value,
      alert: $("#test-alert").value,
    };
    try {
      const response = await fetch(`${base}/api/test-push`, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-Pushgw-Csrf": csrf },
        body: JSON.stringify(payload),
      });
      const answer = await response.json();
      if (response.ok) {
        result.textContent = `accepted: push ${answer.push_id}`;
        result.dataset.pushId = answer.push_id;
      } else {
        const error = answer.error;
        result.textContent = `rejected (HTTP ${response.status}): ` +
          (typeof error === "object" ? `${error.code ?? ""} ${error.error ?? JSON.stringify(error)}` : error);
      }
    } catch (error) {
      result.textContent = `failed: ${error.message}`;
    }
  });
})();
