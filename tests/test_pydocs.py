"""The demo's offline dataset: docstring parsing (hand-worked), sampling, splits, KD candidates, determinism."""

from __future__ import annotations

import textwrap

import pytest

from colbench import pydocs
from colbench.errors import InputError

BODY = "This body has enough words to pass the filter because it keeps going for quite a while longer."


@pytest.mark.parametrize(
    ("doc", "summary", "body"),
    [
        ("Return the sum.\n\nIt adds numbers.", "Return the sum.", "It adds numbers."),
        # A first paragraph of several sentences: the rest of it belongs to the body.
        ("Open a file. It must exist.\n\nMore here.", "Open a file.", "It must exist. More here."),
        # A summary over two lines is one sentence.
        ("Compute the value\nof x.\n\nBody.", "Compute the value of x.", "Body."),
        ("No full stop here", "No full stop here", ""),
        ("Version 3.11 is here. Next.", "Version 3.11 is here.", "Next."),
    ],
)
def test_split_docstring(doc, summary, body):
    assert pydocs.split_docstring(doc) == (summary, body)


def test_extract_items_keeps_documented_definitions_with_a_body():
    source = textwrap.dedent(f'''
        def good(x):
            """Return the good thing.

            {BODY}
            """

        def short():
            """Return something.

            Too short a body.
            """

        def undocumented():
            pass

        class Box:
            """A box that holds items.

            {BODY}
            """

            def open(self):
                """Open the box now.

                {BODY}
                """
                def inner():
                    """Nested helpers are not documentation.

                    {BODY}
                    """
    ''')
    items = pydocs.extract_items(source, "pkg.mod", pydocs.PyDocsOptions(max_doc_words=5))
    assert [(i.qualname, i.summary) for i in items] == [
        ("pkg.mod.good", "Return the good thing."),
        ("pkg.mod.Box", "A box that holds items."),
        ("pkg.mod.Box.open", "Open the box now."),
    ]
    assert items[0].body == "This body has enough words"  # cut to max_doc_words
    assert items[0].doc_id == "pkg.mod.good" and items[0].query_id == "q:pkg.mod.good"


def _write_stdlib(root, n_modules=30):
    """A fake stdlib: n modules with two documented functions each, one shared summary, one test dir."""
    for m in range(n_modules):
        (root / f"mod{m:02d}.py").write_text(textwrap.dedent(f'''
            def alpha():
                """Compute alpha number {m} for the module.

                Alpha {m} {BODY}
                """

            def beta():
                """Return the same summary everywhere.

                Beta {m} {BODY}
                """
        '''))
    (root / "test").mkdir()
    (root / "test" / "test_x.py").write_text(f'def t():\n    """Test summary here.\n\n    {BODY}\n    """\n')
    (root / "broken.py").write_text("def (:\n")


def test_stdlib_items_drops_ambiguous_summaries_and_test_dirs(tmp_path):
    _write_stdlib(tmp_path)
    items = pydocs.stdlib_items(pydocs.PyDocsOptions(stdlib_dir=str(tmp_path)))
    # beta's summary is shared by every module: such queries would have 30 right answers.
    assert [i.qualname for i in items] == [f"mod{m:02d}.alpha" for m in range(30)]


def test_collection_splits_are_disjoint_and_deterministic(tmp_path):
    _write_stdlib(tmp_path)
    options = pydocs.PyDocsOptions(n_documents=20, n_eval_queries=5, n_train_queries=8, n_candidates=4,
                                   stdlib_dir=str(tmp_path))
    one = pydocs.build_collection(3, options)
    assert one == pydocs.build_collection(3, options)
    assert one != pydocs.build_collection(4, options)
    assert len(one.corpus) == 20 and len(one.eval_items) == 5 and len(one.train_items) == 8
    corpus_ids = {d.doc_id for d in one.corpus}
    assert {i.doc_id for i in one.eval_items + one.train_items} <= corpus_ids
    assert not {i.query_id for i in one.eval_items} & {i.query_id for i in one.train_items}
    corpus, queries, qrels = pydocs.beir_records(one)
    assert [q["_id"] for q in queries] == [q for q, _, _ in qrels]
    assert all(q != d for q, d, _ in qrels)  # BEIR's ignore_identical_ids must never drop a positive


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"n_documents": 10, "n_eval_queries": 8, "n_train_queries": 8}, "exceed n_documents"),
        ({"n_sizes": 3}, "unknown"),
        ({"n_candidates": 0}, "n_candidates"),
    ],
)
def test_bad_options_are_refused(options, needle):
    with pytest.raises(InputError, match=needle):
        pydocs.PyDocsOptions.from_dict(options)


def test_too_few_docstrings_says_so(tmp_path):
    _write_stdlib(tmp_path, n_modules=3)
    with pytest.raises(InputError, match="only 3 eligible"):
        pydocs.build_collection(0, pydocs.PyDocsOptions(n_documents=10, n_eval_queries=1, n_train_queries=1,
                                                        stdlib_dir=str(tmp_path)))


def test_kd_candidates_are_the_positive_then_hard_and_random_negatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _write_stdlib(tmp_path)
    options = pydocs.PyDocsOptions(n_documents=20, n_eval_queries=5, n_train_queries=6, n_candidates=5,
                                   stdlib_dir=str(tmp_path))
    collection = pydocs.build_collection(0, options)
    train, queries, documents = pydocs.kd_tables(collection, pydocs.DEFAULT_TEACHER, n_candidates=5)
    assert queries["query_id"] == [i.query_id for i in collection.train_items]
    for qid, ids, scores in zip(train["query_id"], train["document_ids"], train["scores"]):
        assert len(ids) == len(set(ids)) == 5
        assert ids[0] == qid[2:]  # the positive first
        hard, easy = scores[1::2], scores[2::2]  # then hard and random negatives, alternating
        assert hard == sorted(hard, reverse=True) and min(hard) >= max(easy)
        assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in scores)  # cosine similarities
    used = {d for ids in train["document_ids"] for d in ids}
    assert set(documents["document_id"]) == used
    # Alpha documents mention their own number: the teacher must score the positive highest for most queries.
    best = sum(scores[0] == max(scores) for scores in train["scores"])
    assert best >= 4
    # Seeded: the random negatives are the same on every build.
    assert pydocs.kd_tables(collection, pydocs.DEFAULT_TEACHER, n_candidates=5)[0] == train


def test_this_pythons_stdlib_gives_the_demo_defaults():
    options = pydocs.PyDocsOptions()
    collection = pydocs.build_collection(42, options)
    assert len(collection.corpus) == options.n_documents
    assert len({d.doc_id for d in collection.corpus}) == options.n_documents
    assert all(len(d.body.split()) >= options.min_body_words for d in collection.corpus)
