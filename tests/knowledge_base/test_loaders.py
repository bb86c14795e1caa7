from __future__ import annotations

import json
from pathlib import Path

import pytest
from reportlab.pdfgen import canvas

from knowledge_base.loaders import LoadError, SourceFile, discover, load_file
from retrieval.types import Visibility


def write(path: Path, content: str | bytes) -> SourceFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return SourceFile(path, path.stem)


def make_pdf(path: Path, pages: list[list[str]], title: str = "") -> SourceFile:
    pdf = canvas.Canvas(str(path), invariant=1)
    if title:
        pdf.setTitle(title)
    for lines in pages:
        for i, line in enumerate(lines):
            pdf.drawString(72, 760 - 16 * i, line)
        pdf.showPage()
    pdf.save()
    return SourceFile(path, path.stem)


def test_markdown_front_matter_and_heading_paths(tmp_path: Path) -> None:
    source = write(
        tmp_path / "a.md",
        "---\nid: billing/refunds\ntitle: Refunds\nurl: https://x/refunds\nvisibility: internal\ntags: [Billing, money]\n---\n"
        "# Ignored because front matter names the title\nIntro text.\n\n## Cards\nCard refunds take **5** days, see [our policy](https://x).\n"
        "### Amex\nAmex is slower.\n## PayPal\n```\n# not a heading inside a fence\n```\nPayPal is fast.\n",
    )
    [doc] = load_file(source)
    assert (doc.id, doc.title, doc.url, doc.visibility, doc.tags) == (
        "billing/refunds",
        "Refunds",
        "https://x/refunds",
        Visibility.INTERNAL,
        ("billing", "money"),
    )
    assert [s.headings for s in doc.sections] == [(), ("Cards",), ("Cards", "Amex"), ("PayPal",)]
    assert doc.sections[1].text == "Card refunds take 5 days, see our policy."
    assert "# not a heading inside a fence" in doc.sections[3].text


def test_markdown_title_from_h1_without_front_matter(tmp_path: Path) -> None:
    [doc] = load_file(write(tmp_path / "setup-guide.md", "# Set up\n\nPlug it in.\n"))
    assert (doc.id, doc.title, doc.visibility) == ("setup-guide", "Set up", Visibility.PUBLIC)


def test_html_keeps_visible_text_only(tmp_path: Path) -> None:
    source = write(
        tmp_path / "page.html",
        "<html><head><title>Voice control</title><link rel='canonical' href='https://x/voice'>"
        "<meta name='supportbot:visibility' content='internal'><script>var secret=1;</script></head>"
        "<body><nav>Home | Menu</nav><h1>Voice control</h1><p>Say <b>hello</b>.</p>"
        "<h2>Alexa</h2><ul><li>Enable the skill</li><li><p>Sign in</p></li></ul><div hidden>hidden text</div>"
        "<footer>Copyright</footer></body></html>",
    )
    [doc] = load_file(source)
    text = " ".join(s.text for s in doc.sections)
    assert (doc.title, doc.url, doc.visibility) == ("Voice control", "https://x/voice", Visibility.INTERNAL)
    assert doc.sections[1].headings == ("Alexa",)
    assert "- Enable the skill" in text and "- Sign in" in text
    for invisible in ("secret", "Home | Menu", "Copyright", "hidden text"):
        assert invisible not in text


def test_text_file_title_from_first_line(tmp_path: Path) -> None:
    [doc] = load_file(write(tmp_path / "w.txt", "Warranty terms\nTwo years from delivery.\n"))
    assert (doc.title, doc.sections[0].text) == ("Warranty terms", "Two years from delivery.")


def test_pdf_pages_become_sections(tmp_path: Path) -> None:
    [doc] = load_file(
        make_pdf(tmp_path / "guide.pdf", [["Safety", "Never immerse the base."], ["Page two text."]], title="Guide")
    )
    assert doc.title == "Guide"
    assert [s.headings for s in doc.sections] == [("Page 1",), ("Page 2",)]
    assert "Never immerse the base." in doc.sections[0].text


def test_faq_csv_one_document_per_pair(tmp_path: Path) -> None:
    source = write(
        tmp_path / "faq.csv",
        'question,answer,tags,visibility\n"Do you ship, ever?","Yes, daily.",shipping,\nWhy?,Because.,,internal\n',
    )
    docs = load_file(source)
    assert [d.id for d in docs] == ["faq#do-you-ship-ever", "faq#why"]
    assert docs[0].kind == "faq" and docs[0].sections[0].text == "Q: Do you ship, ever?\nA: Yes, daily."
    assert docs[1].visibility is Visibility.INTERNAL


def test_faq_jsonl(tmp_path: Path) -> None:
    lines = [
        json.dumps({"question": "Q1?", "answer": "A1", "id": "first", "url": "https://x/1"}),
        "",
        json.dumps({"question": "Q2?", "answer": "A2"}),
    ]
    docs = load_file(write(tmp_path / "more.jsonl", "\n".join(lines)))
    assert [(d.id, d.url) for d in docs] == [("more#first", "https://x/1"), ("more#q2", None)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", "", "file is empty"),
        ("blank.txt", "   \n\n", "file is empty"),
        ("garbage.md", bytes(range(256)) * 8, "binary content"),
        ("latin1.txt", "caf\xe9 au lait".encode("latin-1"), "not valid UTF-8: byte 0xe9 at offset 3"),
        ("report.docx", "PK\x03\x04", "unsupported file type '.docx'"),
        ("noext", "hello", "unsupported file type '(no extension)'"),
        ("faq.csv", "question,reply\nQ?,A\n", "CSV is missing column(s) answer; header has: question, reply"),
        ("header-only.csv", "question,answer\n", "no FAQ entries"),
        ("empty-answer.csv", "question,answer\nQ?,\n", "row 2: empty answer"),
        ("dupes.csv", "question,answer\nSame?,A\nSame?,B\n", "row 3: duplicate entry id 'same'"),
        ("bad.jsonl", '{"question": "Q", "answer": "A"}\n{"question": \n', "line 2: invalid JSON"),
        ("keys.jsonl", '{"question": "Q"}\n', "line 1: missing key(s) answer"),
        ("front.md", "---\n: [unclosed\n---\nbody\n", "invalid YAML front matter"),
        ("headings-only.md", "# Title\n## Section\n", "no text besides headings"),
        ("vis.md", "---\nvisibility: secret\n---\nbody\n", "visibility must be 'public' or 'internal'"),
        ("fake.pdf", "not a pdf at all", "not a PDF file"),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj garbage\n%%EOF", "broken PDF"),
    ],
)
def test_bad_files_get_precise_errors(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    with pytest.raises(LoadError) as error:
        load_file(write(tmp_path / name, content))
    assert message in str(error.value)


def test_pdf_without_text_layer(tmp_path: Path) -> None:
    source = make_pdf(tmp_path / "scan.pdf", [[]])
    with pytest.raises(LoadError, match="no extractable text"):
        load_file(source)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write(tmp_path / "secret.md", "text")
    real_read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # root ignores permission bits, so inject the fault
        if self == source.path:
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(LoadError, match="permission denied: the file is not readable"):
        load_file(source)


def test_discover_ids_are_relative_paths_and_skips_hidden(tmp_path: Path) -> None:
    write(tmp_path / "kb" / "billing" / "refunds.md", "x")
    write(tmp_path / "kb" / ".git" / "config.md", "x")
    write(tmp_path / "kb" / "logo.png", b"\x89PNG")
    single = write(tmp_path / "other.txt", "x")
    found = discover([tmp_path / "kb", single.path, tmp_path / "missing"])
    assert [(f.document_id) for f in found.files] == ["billing/refunds", "other"]
    assert found.errors[str(tmp_path / "kb" / "logo.png")].startswith("unsupported file type '.png'")
    assert found.errors[str(tmp_path / "missing")] == "no such file or folder"
    assert found.roots == [(tmp_path / "kb").resolve()]
