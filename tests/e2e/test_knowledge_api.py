"""The knowledge base over the admin API and on the agents' page: upload, list, remove and the
last report, against a real server whose live reload serves each change at once."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.browser import chromium_page, require_browser
from tests.e2e.chat_client import run
from tests.e2e.servers import Site

ARTICLE = """---
title: Engraving your kettle
---
# Engraving

Brewlo engraves up to 20 characters on the lid of any kettle for 9 EUR. Engraved kettles
cannot be returned.
"""
QUESTION = "Can you engrave my kettle?"


def put(site: Site, name: str, data: bytes, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or site.admin}", "Content-Type": "application/octet-stream"}
    return httpx.put(f"{site.base}/v1/admin/kb/files/{name}", headers=headers, content=data, timeout=60)


def delete(site: Site, document_id: str) -> httpx.Response:
    return httpx.delete(
        f"{site.base}/v1/admin/kb/documents/{document_id}", headers={"Authorization": f"Bearer {site.admin}"}, timeout=60
    )


def top_document(site: Site) -> tuple[str, str]:
    found = httpx.get(f"{site.base}/v1/search", params={"q": QUESTION, "k": 1}, timeout=30).json()
    return found["passages"][0]["document_id"], found["index_version"]


def documents(site: Site) -> dict[str, Any]:
    return dict(site.get("/v1/admin/kb/documents", site.admin).json())


def test_upload_list_remove_and_report(extractive_site: Site) -> None:
    site = extractive_site
    added = put(site, "engraving.md", ARTICLE.encode())
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["added"] == ["engraving"] and body["errors"] == {}
    # This worker serves the new version at once; the next search finds the article.
    assert top_document(site) == ("engraving", body["version"])
    listing = documents(site)
    assert listing["version"] == listing["served_version"] == body["version"]
    entry = next(d for d in listing["documents"] if d["id"] == "engraving")
    assert entry["chunk_count"] == 1 and entry["title"] == "Engraving your kettle" and entry["source"] == "engraving.md"
    assert put(site, "engraving.md", ARTICLE.encode()).json()["unchanged"] == ["engraving"]
    updated = put(site, "engraving.md", ARTICLE.replace("9 EUR", "12 EUR").encode())
    assert updated.status_code == 200 and updated.json()["updated"] == ["engraving"]

    # Refused uploads name the problem, and change nothing.
    version = documents(site)["version"]
    too_big = put(site, "big.txt", b"x" * (10 * 1024 * 1024 + 1))
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]["message"]
    exe = put(site, "setup.exe", b"MZ\x90\x00")
    assert exe.status_code == 415 and "'.exe'" in exe.json()["detail"]["message"]
    fake_pdf = put(site, "manual.pdf", b"<html>not a pdf</html>")
    assert fake_pdf.status_code == 415 and "not a PDF" in fake_pdf.json()["detail"]["message"]
    word_as_text = put(site, "notes.txt", b"PK\x03\x04" + b"\x00" * 40)
    assert word_as_text.status_code == 415 and "binary content" in word_as_text.json()["detail"]["message"]
    latin1 = put(site, "old.md", "# Caf\u00e9\n\nOuvert le dimanche.".encode("latin-1"))
    assert latin1.status_code == 422 and "not valid UTF-8" in latin1.json()["detail"]["message"]  # the loader's own words
    assert latin1.json()["detail"]["report"]["errors"] == {"old.md": latin1.json()["detail"]["report"]["errors"]["old.md"]}
    bad_name = put(site, "..%2Fescape.md", ARTICLE.encode())
    assert bad_name.status_code in (404, 422)
    assert documents(site)["version"] == version and not (site.data / "kb-uploads" / "old.md").exists()
    # Admins only.
    assert put(site, "engraving.md", ARTICLE.encode(), key=site.agent).status_code == 403
    assert httpx.get(f"{site.base}/v1/admin/kb/documents", timeout=30).status_code == 401

    # The last report is the last ingest's, whoever ran it (here: the refused old.md).
    report = site.get("/v1/admin/kb/reports/last", site.admin).json()
    assert report["action"] == "ingest" and list(report["errors"]) == [str((site.data / "kb-uploads" / "old.md").resolve())]

    removed = delete(site, "engraving")
    assert removed.status_code == 200 and removed.json()["removed"] == ["engraving"]
    assert removed.json()["files_deleted"] == ["engraving.md"] and not (site.data / "kb-uploads" / "engraving.md").exists()
    assert top_document(site)[0] != "engraving"
    assert delete(site, "engraving").status_code == 404
    assert delete(site, "billing/refunds").json()["removed"] == ["billing/refunds"]  # ids with a folder
    entries = site.get("/v1/admin/audit", site.admin).json()["entries"]
    actions = [e["action"] for e in entries if e["target"] in ("engraving.md", "engraving", "billing/refunds")]
    assert actions.count("kb.upload") == 3 and actions.count("kb.remove") == 2


def test_the_knowledge_base_section_in_a_real_browser(extractive_site: Site, tmp_path: Any) -> None:
    """An admin lists, uploads and removes on the agents' page; an agent does not see the section."""
    require_browser()
    site = extractive_site
    article = tmp_path / "gift-cards-by-post.md"
    article.write_text("# Gift cards by post\n\nWe post printed gift cards within two working days, free of charge.\n")

    async def scenario() -> None:
        async with chromium_page() as page:
            await page.goto(f"{site.base}/agent")
            await page.fill("#api-key", site.admin)
            await page.click("#login-form button")
            await page.wait_for_selector("#kb:not([hidden])")
            await page.wait_for_selector("#kb-documents tr[data-id='accounts/reset-password']")
            assert "documents" in await page.inner_text("#kb-summary")
            await page.set_input_files("#kb-file", str(article))
            await page.click("#kb-upload button[type=submit]")
            await page.wait_for_selector("#kb-results li:has-text('gift-cards-by-post.md: added')")
            row = page.locator("#kb-documents tr[data-id='gift-cards-by-post']")
            await row.wait_for()
            assert "Gift cards by post" in await row.inner_text()
            await row.locator("button.kb-remove").click()
            await row.locator("button.kb-remove:text('Click again')").wait_for()
            await row.locator("button.kb-remove").click()
            await page.wait_for_selector("#kb-documents tr[data-id='gift-cards-by-post']", state="detached")
            await page.wait_for_selector("#kb-report:has-text('Last remove')")
            assert page.errors == []
        async with chromium_page() as page:
            await page.goto(f"{site.base}/agent")
            await page.fill("#api-key", site.agent)
            await page.click("#login-form button")
            await page.wait_for_selector("#who:text('Alice (agent)')")
            assert await page.locator("#kb").is_hidden()
            assert page.errors == []

    run(scenario())
