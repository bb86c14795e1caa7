// The "Knowledge base" section of the agents' page, for admin keys: list the documents of
// the index, upload files (one PUT each, as the admin API takes them), remove a document.
// Like agent.js, everything from the server is put on the page with textContent only.
"use strict";

(() => {
  const call = window.SupportbotPage.api;
  const byId = (id) => document.getElementById(id);

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  async function refresh() {
    const listing = await call("/v1/admin/kb/documents");
    byId("kb-summary").textContent = listing.version
      ? `Index version ${listing.version} (this server answers from ${listing.served_version}): ` +
        `${listing.document_count} documents, ${listing.chunk_count} chunks.`
      : "No index yet.";
    const rows = listing.documents.map((doc) => {
      const row = document.createElement("tr");
      row.dataset.id = doc.id;
      row.append(cell(doc.id), cell(doc.title), cell(doc.kind), cell(doc.visibility), cell(String(doc.chunk_count)), cell(doc.source));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "kb-remove";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => removeDocument(doc.id, remove));
      const actions = document.createElement("td");
      actions.append(remove);
      row.append(actions);
      return row;
    });
    byId("kb-documents").tBodies[0].replaceChildren(...rows);
    await showReport();
  }

  async function showReport() {
    try {
      const r = await call("/v1/admin/kb/reports/last");
      const errors = Object.entries(r.errors || {}).map(([file, why]) => `${file}: ${why}`);
      byId("kb-report").textContent =
        `Last ${r.action} (${new Date(r.time * 1000).toLocaleString()}): added ${r.added.length}, updated ${r.updated.length}, ` +
        `unchanged ${r.unchanged.length}, removed ${r.removed.length}` + (errors.length ? `; failed: ${errors.join("; ")}` : ".");
    } catch {
      byId("kb-report").textContent = "";
    }
  }

  async function upload(files) {
    const results = byId("kb-results");
    results.replaceChildren();
    for (const file of files) {
      const line = document.createElement("li");
      try {
        const r = await call(`/v1/admin/kb/files/${encodeURIComponent(file.name)}`, {
          method: "PUT",
          headers: { "Content-Type": "application/octet-stream" },
          body: file,
        });
        const what = r.added.length ? "added" : r.updated.length ? "updated" : "unchanged";
        line.textContent = `${file.name}: ${what} (${[...r.added, ...r.updated, ...r.unchanged].join(", ")}), index version ${r.version}`;
      } catch (error) {
        line.className = "error";
        line.textContent = `${file.name}: ${error.message}`;
      }
      results.append(line);
    }
    await refresh();
  }

  async function removeDocument(id, button) {
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true"; // a second click removes: no dialog to miss
      button.textContent = "Click again to remove";
      return;
    }
    try {
      await call(`/v1/admin/kb/documents/${encodeURIComponent(id)}`, { method: "DELETE" });
      byId("kb-error").textContent = "";
    } catch (error) {
      byId("kb-error").textContent = `${id}: ${error.message}`;
    }
    await refresh();
  }

  document.addEventListener("supportbot:signed-in", (event) => {
    if (!event.detail || event.detail.role !== "admin") return;
    byId("kb").hidden = false;
    byId("kb-upload").addEventListener("submit", (submit) => {
      submit.preventDefault();
      const files = [...byId("kb-file").files];
      if (files.length) upload(files).then(() => (byId("kb-file").value = ""));
    });
    refresh().catch((error) => (byId("kb-error").textContent = error.message));
  });
})();
