"""The study report: one self-contained HTML page, and a small local server for it.

`build_report(DIR)` reads DIR/results.json and the circuit.json of every circuit found, and
writes DIR/report.html: the answer, an interactive frontier plot, the model and circuit
tables, a circuit viewer, and one section per analysis run into the study folder (below). The page's script and style (report_assets/) and all the data
are inlined, and a Content-Security-Policy forbids every network request, so the file opens
offline from disk, can be mailed or archived, and leaks nothing.

Analyses (activations, modularity, ...) add a section without the report knowing them: each
writes DIR/<name>/section.json = {"title", "paragraphs": [str], "tables": [{"caption",
"columns", "rows"}], "images": [{"caption", "file"}]} (image files relative to that folder,
inlined as data: URIs), and the report shows every such section it finds, in name order.

`serve(DIR)` serves DIR on 127.0.0.1, for when the browser is elsewhere (an SSH tunnel to a
training machine) or a browser refuses file:// pages.
"""

from __future__ import annotations

import base64
import functools
import html
import http.server
import json
import math
import os
import re
import webbrowser
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from .config import OLD_NODE_SITES
from .errors import UserError
from .io import read_json, read_regular, write_json_atomic, write_text_atomic
from .record import finite
from .study_results import StudyResults

REPORT_FILE = "report.html"
SECTION_FILE = "section.json"
# A section's plots are a few hundred KB; a file far larger is not one, and would be inlined
# whole (base64) into report.html.
MAX_IMAGE = 16 * 2**20
# Node sites of one layer in forward order (the same as nodes.SITE_KINDS, which a test checks),
# kept here so the report's page data is defined next to the page that reads it.
SITES = ("attn_in", "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_neuron", "mlp_out")
# When one feature explains a node (explain.is_explained; a test checks they agree): the
# viewer labels such nodes with their feature.
LEGIBLE = {"auc": 0.9, "precision_recall": 0.9}


def build_report(study_dir: str | Path) -> Path:
    """Write DIR/report.html from DIR/results.json and the circuits it lists; return its path."""
    study_dir = Path(study_dir)
    data = _page_data(study_dir)
    title = f"sparsecircuits study: {data['study'].get('preset', study_dir.name)}"
    assets = resources.files("sparsecircuits") / "report_assets"
    parts = {
        "TITLE": html.escape(str(title)),
        "CSS": (assets / "report.css").read_text(encoding="utf-8"),
        "JS": (assets / "report.js").read_text(encoding="utf-8"),
        "DATA": _script_json(data),
    }
    template = (assets / "report.html").read_text(encoding="utf-8")
    # One pass, so text substituted for one placeholder is never scanned for another.
    page = re.sub(r"\$(TITLE|CSS|JS|DATA)", lambda m: parts[m[1]], template)
    out = study_dir / REPORT_FILE
    write_text_atomic(out, page)
    return out


def _page_data(study_dir: Path) -> dict:
    results_path = study_dir / "results.json"
    if not results_path.is_file():
        raise UserError(f"{study_dir}: no results.json (run sparsecircuits study first)")
    results = StudyResults.load(results_path)  # the rows are checked as they load
    if not isinstance(results.answer, dict):
        raise UserError(f"{results_path}: 'answer' missing or not a dict")
    circuits = []
    for c in results.circuits:
        row = dict(c.to_json(), view=None, view_error=None)  # the row as results.json has it
        if c.status == "ok":
            try:
                row["view"] = _load_circuit(study_dir, c.path)
            except UserError as e:
                # One unreadable circuit should not cost the whole report: show why instead.
                row["view_error"] = str(e)
        circuits.append(row)
    page = {
        "sites": SITES,
        "study": results.study or {},
        "models": [m.to_json() for m in results.models],
        "circuits": circuits,
        "frontier": [f.to_json() for f in results.frontier],
        "answer": results.answer,
        "legibility": (results.measures or {}).get("legibility"),
        "legible": LEGIBLE,
        "sections": analysis_sections(study_dir),
    }
    return finite(_relative_paths(page, study_dir))


def _relative_paths(obj, study_dir: Path, key: str | None = None):
    """The page's paths relative to the study, for a page that is shared: a model folder
    (`dir`, in the cache) as a relative path, and messages naming a file in the study
    without the study's own location, so no absolute path shows the user's home or cache."""
    if isinstance(obj, dict):
        return {k: _relative_paths(v, study_dir, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative_paths(v, study_dir) for v in obj]
    if not isinstance(obj, str):
        return obj
    if key == "dir":
        return Path(os.path.relpath(Path(obj).absolute(), study_dir.absolute())).as_posix()
    for prefix in {str(study_dir.absolute()), str(study_dir.resolve())}:
        obj = obj.replace(prefix + os.sep, "")
    return obj


def analysis_sections(study_dir: Path) -> list[dict]:
    """The section.json of every analysis folder in the study, images inlined; a damaged
    section shows its error instead of costing the whole report."""
    sections = []
    for path in sorted(Path(study_dir).glob(f"*/{SECTION_FILE}")):
        try:
            sec = read_json(path)
            if not isinstance(sec, dict) or not isinstance(sec.get("title"), str):
                raise UserError(f"{path}: a section needs a 'title' string")
            images = []
            for img in sec.get("images") or []:
                data = read_regular(_section_file(path, img["file"]), "image", MAX_IMAGE)
                uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                images.append({"caption": str(img.get("caption", "")), "src": uri})
            sections.append(
                {
                    "id": "analysis-" + path.parent.name,
                    "title": sec["title"],
                    "paragraphs": [str(x) for x in sec.get("paragraphs") or []],
                    "tables": sec.get("tables") or [],
                    "images": images,
                }
            )
        except (UserError, OSError, KeyError, TypeError) as e:
            sections.append(
                {
                    "id": "analysis-" + path.parent.name,
                    "title": path.parent.name,
                    "error": str(e) if isinstance(e, UserError) else f"{path}: {e}",
                }
            )
    return sections


def _section_file(section: Path, name) -> Path:
    """A file a section names, which must lie inside the section's folder: a section.json is
    data, and must not pull /etc/passwd or another folder's files into the page."""
    folder = section.parent.resolve()
    if "\0" in str(name):  # no file has such a name, and resolve() would raise
        raise UserError(f"{section}: image {name!r} is not a file in the section's folder")
    path = (folder / str(name)).resolve()
    if Path(str(name)).is_absolute() or not path.is_relative_to(folder) or path == folder:
        raise UserError(f"{section}: image {name!r} is not a file in the section's folder")
    return path


def write_section(folder: str | Path, title: str, paragraphs=(), tables=(), images=()) -> Path:
    """Write an analysis's report section (see the module docstring) into its folder."""
    path = Path(folder) / SECTION_FILE
    write_json_atomic(
        path,
        finite(
            {
                "title": title,
                "paragraphs": list(paragraphs),
                "tables": list(tables),
                "images": list(images),
            }
        ),
    )
    return path


def _load_circuit(study_dir: Path, rel_path: str | None) -> dict:
    if not rel_path:
        raise UserError("results.json gives no path for this circuit")
    path = study_dir / rel_path
    circuit = read_json(path)
    try:
        return _compact_circuit(circuit)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a valid circuit.json ({type(e).__name__}: {e})") from None


def _compact_circuit(c: dict) -> dict:
    """What the viewer needs from a circuit.json, small enough to inline many of them.

    Columns instead of objects, node names replaced by indices in edges and activations, and
    floats cut to 4 significant digits: a dense model's 50,000-edge circuit shrinks ~4x.
    Edges are sorted strongest first, so the page's top-N filter is a prefix.
    """
    nodes = c["nodes"]
    index = {n["name"]: i for i, n in enumerate(nodes)}
    sites = [OLD_NODE_SITES.get(n["site"], n["site"]) for n in nodes]
    for n, site in zip(nodes, sites, strict=True):
        if site not in SITES:
            raise ValueError(f"node {n['name']}: unknown site {site!r}")
    effects = c.get("node_effects") or {}
    edges = sorted(c["edges"], key=lambda e: -abs(e["weight"]))
    for e in edges:
        for end in ("src", "dst"):
            if e[end] not in index:
                raise ValueError(f"an edge's {end} {e[end]!r} is not a node of the circuit")
    examples = [
        {
            "label": str(ex.get("label", f"example {j}")),
            "tokens": [str(t) for t in ex["tokens"]],
            "correct": str(ex.get("correct", "")),
            "incorrect": str(ex.get("incorrect", "")),
            # Per node (by index) the activation on each token, or None when not recorded.
            "acts": [_rounded_list(ex.get("activations", {}).get(n["name"])) for n in nodes],
        }
        for j, ex in enumerate(c.get("examples") or [])
    ]
    return {
        "task": c.get("task"),
        "method": c.get("method"),
        "target_loss": c.get("target_loss"),
        "n_nodes_total": c.get("n_nodes_total"),
        "n_layer": (c.get("model_config") or {}).get("n_layer"),
        "nodes": {
            "name": [n["name"] for n in nodes],
            "site": sites,
            "layer": [int(n["layer"]) for n in nodes],
            "index": [int(n["index"]) for n in nodes],
            "mean": [_rounded(n.get("mean")) for n in nodes],
            "score": [_rounded(n.get("score")) for n in nodes],
            "effect": [_rounded(effects.get(n["name"])) for n in nodes],
        },
        "edges": {
            "src": [index[e["src"]] for e in edges],
            "dst": [index[e["dst"]] for e in edges],
            "weight": [_rounded(e["weight"]) for e in edges],
        },
        "examples": examples,
        # per node (by index) its explanation, or None where it has none
        "explanations": [
            _compact_explanation((c.get("explanations") or {}).get(n["name"])) for n in nodes
        ],
    }


def _compact_explanation(e: dict | None) -> dict | None:
    """What the node panel shows of an explanation (explain.py): the best feature and its
    scores, the quantile examples and the direct-path tokens."""
    if not e:
        return None
    return {
        "feature": None if e.get("feature") is None else str(e["feature"]),
        "direction": e.get("direction"),
        **{k: _rounded(e.get(k)) for k in ("auc", "precision", "recall")},
        "examples": [
            {
                "label": str(x["label"]),
                "value": _rounded(x["value"]),
                "tokens": [str(t) for t in x["tokens"]],
                "at": int(x["at"]),
            }
            for x in e.get("examples") or []
        ],
        **{
            k: [[str(t), _rounded(v)] for t, v in e.get(k) or []]
            for k in ("top_inputs", "top_logits")
        },
    }


def _rounded(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.4g}") if math.isfinite(x) else None


def _rounded_list(xs) -> list | None:
    return None if xs is None else [_rounded(x) for x in xs]


def _script_json(data) -> str:
    """JSON that is inert inside <script type="application/json">.

    The HTML parser ends a script at `</script` and treats `<!--` specially, whatever the
    type; escaping every <, > and & (legal JSON string escapes, and these characters occur
    only inside strings) rules both out. ensure_ascii covers U+2028/2029.
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------- serving ----------


LOCAL_HOSTS = ("127.0.0.1", "localhost")


class _StudyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the files of the study folder, and nothing else: no folder listings, no path
    (symlinks included) that leads out of it, and only to a Host header naming this machine,
    so a web page whose domain is made to point at 127.0.0.1 (DNS rebinding) reads nothing.
    No log line per request: the terminal shows the URL and problems (send_error logs)."""

    def send_head(self):
        host = (self.headers.get("Host") or "").lower()
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "")
        if name not in LOCAL_HOSTS or not (port == "" or port.isdigit()):
            self.send_error(421, "this server answers only to 127.0.0.1 and localhost")
            return None
        root = Path(self.directory).resolve()
        translated = self.translate_path(self.path)
        if "\0" in translated:  # GET /%00: no such file, and resolve() would raise
            self.send_error(404, "not a file of this study")
            return None
        path = Path(translated).resolve()
        if path == root:
            self.send_response(302)
            self.send_header("Location", "/" + REPORT_FILE)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if not path.is_relative_to(root) or not path.is_file():
            self.send_error(404, "not a file of this study")
            return None
        return super().send_head()

    def log_request(self, code="-", size="-"):
        pass


def serve(
    study_dir: str | Path,
    port: int | None = None,
    open_browser: bool = False,
    ready: Callable[[http.server.ThreadingHTTPServer], None] | None = None,
) -> None:
    """Serve DIR on http://127.0.0.1:PORT/ until interrupted; None or 0 picks a free port.

    Builds the report first if DIR has none. `ready`, if given, is called with the listening
    server before serving starts: a caller in another thread can read its port and later stop
    it with server.shutdown().
    """
    study_dir = Path(study_dir)
    if port is not None and not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is a number from 0 to 65535")
    if not (study_dir / REPORT_FILE).is_file():
        build_report(study_dir)
    handler = functools.partial(_StudyHandler, directory=str(study_dir))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port or 0), handler)
    except OSError as e:
        raise UserError(f"cannot serve on 127.0.0.1 port {port}: {e.strerror}") from None
    with server:
        url = f"http://127.0.0.1:{server.server_address[1]}/{REPORT_FILE}"
        print(f"serving {study_dir} at {url}  (Ctrl-C to stop)", flush=True)
        if open_browser:
            webbrowser.open(url)
        if ready is not None:
            ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
