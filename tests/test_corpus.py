import numpy as np
import pytest

from sparsecircuits import corpus
from sparsecircuits.corpus import collect_files, is_heldout, prepare, split_files
from sparsecircuits.errors import UserError


def test_default_corpus_is_the_standard_library():
    files = collect_files(None)
    assert len(files) > 500
    names = {f.name for f in files}
    assert "json/decoder.py" in names
    assert not any("site-packages" in n for n in names)


def test_split_is_by_path_hash_and_deterministic(corpus_dir):
    files = collect_files([str(corpus_dir)])
    train, held = split_files(files, 0.2)
    assert train and held and len(train) + len(held) == len(files)
    assert {f.name for f in held} == {f.name for f in files if is_heldout(f.name, 0.2)}
    assert split_files(collect_files([str(corpus_dir)]), 0.2) == (train, held)


def test_folder_without_text_is_a_clear_error(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    with pytest.raises(UserError, match=r"blob|no UTF-8 text files found"):
        collect_files([str(tmp_path)])
    with pytest.raises(UserError, match="no .py files found"):
        collect_files([str(tmp_path)], [".py"])
    with pytest.raises(UserError, match="no such file or folder"):
        collect_files([str(tmp_path / "missing")])


def test_extension_filter_and_binary_files_skipped(tmp_path, corpus_dir):
    (tmp_path / "a.txt").write_text("hello world\n" * 20)
    (tmp_path / "b.py").write_text("x = 1\n" * 20)
    (tmp_path / "c.bin").write_bytes(b"\x00" * 10)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.py").write_text("y = 2\n")
    assert [f.name for f in collect_files([str(tmp_path)])] == ["a.txt", "b.py"]
    assert [f.name for f in collect_files([str(tmp_path)], ["py"])] == ["b.py"]


def test_prepare_caches_tokenizer_and_tokens(corpus_dir, monkeypatch):
    data = prepare([str(corpus_dir)], 300, 0.1)
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    assert data.tokenizer.get_vocab_size() == 300
    eot = data.tokenizer.token_to_id("<|endoftext|>")
    n_train_files = len(split_files(collect_files([str(corpus_dir)]), 0.1)[0])
    assert int((np.asarray(data.train) == eot).sum()) == n_train_files
    text = data.tokenizer.decode(list(map(int, data.train[:50])))
    assert text.startswith("def ")

    def no_retrain(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(corpus, "train_tokenizer", no_retrain)
    monkeypatch.setattr(corpus, "_write_tokens", no_retrain)
    again = prepare([str(corpus_dir)], 300, 0.1)
    assert np.array_equal(again.train, data.train)


def test_changed_file_invalidates_cache(tmp_path):
    from conftest import write_corpus

    root = write_corpus(tmp_path / "c", n_files=20)
    a = prepare([str(root)], 280, 0.1)
    (root / "pkg0" / "mod0.py").write_text("print('changed')\n" * 50)
    b = prepare([str(root)], 280, 0.1)
    assert a.cache_dir != b.cache_dir


def test_damaged_cache_is_reported(corpus_dir):
    data = prepare([str(corpus_dir)], 300, 0.1)
    path = data.cache_dir / "train.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:100])
    try:
        with pytest.raises(UserError, match="token cache is damaged"):
            prepare([str(corpus_dir)], 300, 0.1)
    finally:
        path.write_bytes(raw)


def test_batches_are_a_function_of_seed_and_step(corpus_dir):
    data = prepare([str(corpus_dir)], 300, 0.1)
    a = data.batch("train", 4, 16, seed=1, step=7)
    assert a.shape == (4, 17)
    assert a.equal(data.batch("train", 4, 16, seed=1, step=7))
    assert not a.equal(data.batch("train", 4, 16, seed=1, step=8))
    assert not a.equal(data.batch("train", 4, 16, seed=2, step=7))
