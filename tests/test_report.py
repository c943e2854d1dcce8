"""The study report: built from a fake study folder, checked statically and in a real browser."""

from __future__ import annotations

import json
import queue
import re
import threading
import urllib.request
from pathlib import Path

import pytest

from sparsecircuits import cli, report
from sparsecircuits.cli_parser import build_parser
from sparsecircuits.config import ACT_SITES, OLD_NODE_SITES
from sparsecircuits.errors import UserError
from sparsecircuits.explain import is_explained
from sparsecircuits.nodes import SITE_KINDS
from sparsecircuits.study import add_legibility
from sparsecircuits.study_results import StudyResults
from study_fixture import BIG, CORRUPT, SMALL, TOKENS, UNREACHABLE, write_fake_study

CHROMIUM = Path("/usr/bin/chromium")
DATA_RE = re.compile(r'<script type="application/json" id="data">(.*?)</script>', re.S)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    study_dir = write_fake_study(tmp_path_factory.mktemp("study"))
    add_legibility(study_dir, progress=False)  # the fake circuits come explained
    report.build_report(study_dir)
    return study_dir


def page_data(html: str) -> dict:
    return json.loads(DATA_RE.search(html).group(1))


def circuit_row(data: dict, key: tuple[str, str]) -> tuple[int, dict]:
    return next((i, c) for i, c in enumerate(data["circuits"]) if (c["model"], c["task"]) == key)


def test_sites_match_nodes():
    assert report.SITES == SITE_KINDS
    assert set(SITE_KINDS) <= set(ACT_SITES)  # one name per site, the config's


def test_circuit_with_old_site_names_still_shows(tmp_path):
    """circuit.json files written before the rename spell attn_q/k/v as q/k/v."""
    study = write_fake_study(tmp_path / "s")
    path = study / "circuits" / SMALL[0] / SMALL[1] / "circuit.json"
    circuit = json.loads(path.read_text())
    new_sites = [n["site"] for n in circuit["nodes"]]
    old = {v: k for k, v in OLD_NODE_SITES.items()}
    for n in circuit["nodes"]:
        n["site"] = old.get(n["site"], n["site"])
    assert {"q", "k", "v"} <= {n["site"] for n in circuit["nodes"]}  # the old names are there
    path.write_text(json.dumps(circuit))
    data = page_data(report.build_report(study).read_text(encoding="utf-8"))
    _, row = circuit_row(data, SMALL)
    assert row["view"]["nodes"]["site"] == new_sites


def test_assets_cannot_end_their_script_element():
    assets = Path(report.__file__).parent / "report_assets"
    for name in ("report.js", "report.css"):
        text = (assets / name).read_text().lower()
        assert "</script" not in text and "<!--" not in text and "</style" not in text, name


def test_report_is_one_file_with_no_network_references(study):
    html = (study / "report.html").read_text(encoding="utf-8")
    assert not list(study.glob(".report.html.*"))  # the atomic write left no temporary file
    # The only URL is the SVG namespace name, which is never fetched.
    without_ns = html.replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_ns and "https://" not in without_ns
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "//cdn" not in html
    assert not re.search(r"\bfetch\s*\(|XMLHttpRequest|WebSocket|@import|\bimport\s*\(", html)
    assert "<link" not in html.replace('<link rel="icon" href="data:,">', "")
    # Exactly the two script elements of the template: data could not open or close one.
    assert html.count("<script") == 2 and html.count("</script>") == 2


def test_data_is_escaped_and_complete(study):
    html = (study / "report.html").read_text(encoding="utf-8")
    raw = DATA_RE.search(html).group(1)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in raw
    data = json.loads(raw)
    _, small = circuit_row(data, SMALL)
    assert small["view"]["examples"][0]["tokens"] == TOKENS  # "</script>" etc. survive intact
    stored = json.loads((study / small["path"]).read_text())
    assert small["view"]["nodes"]["name"] == [n["name"] for n in stored["nodes"]]
    weights = [abs(w) for w in small["view"]["edges"]["weight"]]
    assert len(weights) == len(stored["edges"]) and weights == sorted(weights, reverse=True)
    # NaN in results.json (a std of random draws) became null rather than invalid JSON.
    assert small["metrics"]["random"]["loss_std"] is None


def test_analysis_sections_are_inlined(study):
    data = page_data((study / "report.html").read_text(encoding="utf-8"))
    good, bad = data["sections"]
    assert good["title"] == "Activation sparsity"
    assert good["tables"][0]["rows"][1] == ["random", 0.61]
    assert good["images"][0]["src"].startswith("data:image/png;base64,iVBOR")
    assert bad["id"] == "analysis-modularity" and "section.json" in bad["error"]


def test_bad_circuit_file_becomes_an_error_row(study):
    data = page_data((study / "report.html").read_text(encoding="utf-8"))
    _, corrupt = circuit_row(data, CORRUPT)
    assert corrupt["view"] is None and "not valid JSON" in corrupt["view_error"]
    _, unreachable = circuit_row(data, UNREACHABLE)
    assert unreachable["view"] is None and unreachable["view_error"] is None


def test_circuit_with_unknown_edge_end_is_rejected(tmp_path):
    study = write_fake_study(tmp_path / "s")
    path = study / "circuits" / SMALL[0] / SMALL[1] / "circuit.json"
    circuit = json.loads(path.read_text())
    circuit["edges"].append({"src": "blocks.9.attn.hook_q[0]", "dst": "x[1]", "weight": 1.0})
    path.write_text(json.dumps(circuit))
    data = page_data(report.build_report(study).read_text(encoding="utf-8"))
    _, row = circuit_row(data, SMALL)
    assert "not a node of the circuit" in row["view_error"]


def test_missing_or_invalid_results(tmp_path):
    with pytest.raises(UserError, match="no results.json"):
        report.build_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match="results.json: not valid JSON"):
        report.build_report(tmp_path)
    (tmp_path / "results.json").write_text(
        json.dumps({"schema_version": StudyResults.SCHEMA_VERSION, "models": []})
    )
    with pytest.raises(UserError, match="missing circuits"):
        report.build_report(tmp_path)


class Server:
    """report.serve() in a thread, on a free port; stopped on exit."""

    def __init__(self, study_dir: Path):
        self.study_dir = study_dir

    def __enter__(self) -> str:
        ready: queue.Queue = queue.Queue()
        self.thread = threading.Thread(
            target=report.serve, args=(self.study_dir, 0), kwargs={"ready": ready.put}
        )
        self.thread.start()
        self.server = ready.get(timeout=10)
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.thread.join(timeout=10)


def test_serve_builds_a_missing_report(tmp_path, capsys):
    study = write_fake_study(tmp_path / "s")
    with Server(study) as base, urllib.request.urlopen(base + "report.html", timeout=10) as r:
        assert r.status == 200 and b'id="data"' in r.read()
    assert (study / "report.html").is_file()
    assert f"{base}report.html" in capsys.readouterr().out


def test_view_command(study):
    args = build_parser().parse_args(["view", str(study), "--port", "0", "--no-build"])
    assert cli.COMMANDS[args.command] is cli._cmd_view and args.port == 0 and args.no_build


def test_every_command_the_parser_knows_runs_something():
    names = set(build_parser()._subparsers._group_actions[0].choices)  # argparse keeps them here
    assert names == set(cli.COMMANDS)


# ---------- in a real browser ----------


@pytest.fixture(scope="module")
def browser():
    skip = (
        "no browser: install Debian's chromium (apt-get install chromium) and "
        "pip install playwright to run the browser test"
    )
    if not CHROMIUM.exists():
        pytest.skip(skip)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(skip)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def check_report_page(browser, url: str, study: Path) -> None:
    """Open the report at `url` and exercise the frontier and the circuit viewer."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(5000)
    errors, foreign = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    own = url if url.startswith("file://") else url.rsplit("/", 1)[0] + "/"
    page.on("request", lambda r: None if r.url.startswith(own) else foreign.append(r.url))
    page.goto(url)
    data = page_data((study / "report.html").read_text(encoding="utf-8"))

    # Frontier: one point per model with a geometric mean; hovering shows its label.
    plotted = [p for p in data["frontier"] if p["geomean_edges"] is not None]
    assert page.locator("#frontier-svg .point").count() == len(plotted)
    first = plotted[0]
    page.hover(f'#frontier-svg .point[data-model="{first["model"]}"]')
    assert page.locator("#frontier-tip").is_visible()
    assert first["label"] in page.text_content("#frontier-tip")

    # A small circuit: every node drawn; hovering one fills the panel.
    i, row = circuit_row(data, SMALL)
    page.select_option("#circuit-select", str(i))
    circuit = json.loads((study / row["path"]).read_text())
    assert not page.is_checked("#collapse")
    assert page.locator("circle.node").count() == len(circuit["nodes"])
    effects = circuit["node_effects"]
    node = next(n for n in circuit["nodes"] if effects.get(n["name"], 0) > 0.01)
    page.hover(f'circle.node[data-node="{node["name"]}"]')
    panel = page.text_content("#panel")
    assert node["name"] in panel
    assert re.search(rf"ablation effect\s*\+{effects[node['name']]:.4g}", panel), panel

    # Token spans: hovering shows the value; prompt code is text, not markup.
    t = TOKENS.index("</script>")
    page.locator("#panel .example").first.locator("span.tok").nth(t).hover()
    readout = page.text_content("#tok-readout")
    value = circuit["examples"][0]["activations"][node["name"]][t]
    assert float(readout.rsplit(" ", 1)[1]) == pytest.approx(value, abs=1e-3)
    prompt = page.locator("#panel .prompt").first.text_content()
    assert prompt == "".join(TOKENS)
    assert page.locator("b").count() == 0  # "<b>bold</b>" in data created no element

    # Explanations: the panel shows the node's feature, scores, quantile contexts and tokens;
    # explained nodes carry their feature as a label; the toggle colours nodes by AUC.
    expl = circuit["explanations"]
    shown = next(n["name"] for n in circuit["nodes"] if expl[n["name"]]["feature"])
    page.hover(f'circle.node[data-node="{shown}"]')
    e = expl[shown]
    feature = e["feature"] + (" (low)" if e["direction"] == -1 else "")
    box = page.text_content("#explanation")
    assert feature in box and f"{e['auc']:.3g}" in box and f"{e['precision']:.3g}" in box
    assert page.locator("#explanation .context").count() == len(e["examples"])
    assert page.locator("#explanation .tok-at").count() == len(e["examples"])
    assert page.locator("#explanation code.tokens").count() == 7  # 4 inputs, 3 logits
    explained = [n for n, x in expl.items() if is_explained(x)]
    assert explained and page.locator("text.node-label").count() == len(explained)
    site_fill = page.get_attribute(f'circle.node[data-node="{shown}"]', "fill")
    page.check("#color-auc")
    assert page.locator("#auc-legend").is_visible()
    assert page.get_attribute(f'circle.node[data-node="{shown}"]', "fill") != site_fill
    constant = next(n for n, x in expl.items() if x["feature"] is None)
    assert page.get_attribute(f'circle.node[data-node="{constant}"]', "fill") == "#c4c8cc"
    page.uncheck("#color-auc")
    assert page.get_attribute(f'circle.node[data-node="{shown}"]', "fill") == site_fill

    # Legibility: dense vs sparse table, and explained nodes per circuit.
    assert page.locator("#legibility-table tbody tr").count() == 2
    assert "explained nodes" in page.text_content("#circuits-table thead")

    # The big circuit: collapsed by default, at most 2000 edges drawn; expanded, all nodes.
    i, row = circuit_row(data, BIG)
    page.select_option("#circuit-select", str(i))
    assert page.is_checked("#collapse")
    assert page.locator("circle.node").count() == 0
    assert 0 < page.locator("circle.group").count() <= 2 * len(SITE_KINDS)
    assert 0 < page.locator(".edge").count() <= 2000
    assert "hidden" in page.text_content("#edge-info")
    page.uncheck("#collapse")
    assert page.locator("circle.node").count() == row["n_nodes"]
    assert page.locator(".edge").count() == 2000

    # The corrupt circuit says why it cannot be shown.
    i, _ = circuit_row(data, CORRUPT)
    page.select_option("#circuit-select", str(i))
    assert "not valid JSON" in page.text_content("#viewer-error")

    # Analysis sections: the good one rendered (text stays text), the damaged one says why.
    sec = page.locator("#analysis-activations")
    assert "No effect found <i>here</i>." in sec.text_content()
    assert sec.locator("tbody tr").count() == 2
    assert sec.locator("img").evaluate("i => i.naturalWidth") == 1
    assert "section.json" in page.text_content("#analysis-modularity .error")
    page.close()
    assert not errors, errors
    assert not foreign, foreign


@pytest.mark.slow
def test_report_in_browser_from_file(browser, study):
    check_report_page(browser, (study / "report.html").as_uri(), study)


@pytest.mark.slow
def test_report_in_browser_over_http(browser, study):
    with Server(study) as base:
        check_report_page(browser, base + "report.html", study)


def test_a_section_reads_as_markdown_for_readme(tmp_path):
    from sparsecircuits.markdown import section_markdown

    path = report.write_section(
        tmp_path,
        "Modularity",
        ["Effects are <b>found</b> in 3 of 4 units."],
        [
            {
                "caption": "per unit",
                "columns": ["task", "metric"],
                "rows": [["a", 0.123456], ["b", None]],
            }
        ],
        [{"file": "m.png", "caption": "matrix"}],
    )
    assert section_markdown(path).splitlines() == [
        "# Modularity",
        "",
        "Effects are <b>found</b> in 3 of 4 units.",
        "",
        "**per unit**",
        "",
        "| task | metric |",
        "|---|---|",
        "| a | 0.123 |",
        "| b | n/a |",
        "",
        "(image: `m.png`, matrix)",
    ]
    (tmp_path / "section.json").write_text('{"paragraphs": []}')
    with pytest.raises(UserError, match="needs a 'title'"):
        section_markdown(path)
