"""docs/input-errors.md is generated from the InputError raise sites (colbench.errors) and kept current."""

from __future__ import annotations

from pathlib import Path

from colbench.errors import catalogue, raise_sites

ROOT = Path(__file__).resolve().parents[1]

# Line numbers matter: raise_sites reports them. Line 1 is the import.
STORE = '''from colbench.errors import InputError
if False:
    raise InputError("no params file")
class Store:
    def open(self, params):
        raise InputError(f"store {self.path}: {params.train.model.document_length} is too long")
def load(path, problems):
    def check():
        raise InputError("first part, "
                         f"then {path!r} | again\\non two lines")
    raise InputError(problems[0])
'''


def write_package(folder: Path) -> Path:
    folder.mkdir()
    (folder / "store.py").write_text(STORE, encoding="utf-8")
    (folder / "zeta.py").write_text('from colbench.errors import InputError\nraise InputError("z")\n', encoding="utf-8")
    (folder / "errors.py").write_text('class InputError(Exception):\n    pass\nInputError("skip")\n', encoding="utf-8")
    return folder


def test_raise_sites_names_scope_line_and_readable_message(tmp_path):
    sites = raise_sites(write_package(tmp_path / "pkg"))
    assert sites == [
        {"module": "store", "function": "<module>", "line": 3, "message": "no params file"},
        # self. is stripped; an expression over 30 characters becomes ‹…›.
        {"module": "store", "function": "Store.open", "line": 6, "message": "store ‹path›: ‹…› is too long"},
        # Implicit concatenation is joined; the conversion (!r) is not shown.
        {"module": "store", "function": "load.check", "line": 9,
         "message": "first part, then ‹path› | again\non two lines"},
        {"module": "store", "function": "load", "line": 11, "message": "‹problems[0]›"},
        {"module": "zeta", "function": "<module>", "line": 2, "message": "z"},
    ]


def test_catalogue_orders_modules_and_keeps_each_row_on_one_line(tmp_path):
    text = catalogue(write_package(tmp_path / "pkg"))
    # store is in the pipeline order, zeta is not, so it comes after; errors.py is not listed.
    assert text.index("## store") < text.index("## zeta") and "## errors" not in text
    assert "| `load.check` | first part, then ‹path› \\| again on two lines |" in text.splitlines()
    assert text.endswith("\n5 input errors are detected in 2 modules.\n")


def test_the_committed_input_error_doc_is_current():
    committed = (ROOT / "docs" / "input-errors.md").read_text(encoding="utf-8")
    assert committed == catalogue(ROOT / "src" / "colbench"), "docs/input-errors.md is stale: run `make docs`"
