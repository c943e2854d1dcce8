import json

import pytest

from sparsecircuits.config import (
    PRESETS,
    ModelConfig,
    config_to_dict,
    load_config_file,
    parse_value,
    resolve,
)
from sparsecircuits.errors import UserError


def test_presets_resolve_and_are_weight_sparse():
    for name in PRESETS:
        m, t = resolve(name)
        assert t.density < 1.0, name
        assert m.n_head * m.d_head == m.d_model
    m, _ = resolve("paper")
    assert (m.n_layer, m.d_model, m.n_ctx) == (8, 2048, 256)


def test_set_overrides_both_sections_and_parses_values():
    m, t = resolve("smoke", None, ["density=1/64", "d_model=48", "afrac=null", 'data=["x"]'])
    assert t.density == pytest.approx(1 / 64)
    assert m.d_model == 48 and m.afrac is None and t.data == ["x"]
    assert parse_value("true") is True and parse_value("abc") == "abc"


@pytest.mark.parametrize(
    "bad, words",
    [
        (["densty=0.5"], "unknown config key 'densty'"),
        (["density=0"], "density must be in (0, 1]"),
        (["density=1.5"], "density must be in (0, 1]"),
        (["norm=batch"], "norm must be one of"),
        (["precision=fp16"], "precision must be one of fp32, bf16"),
        (["afrac_sites=attn_x"], "afrac_sites entry"),
        (["d_model"], "expected key=value"),
    ],
)
def test_bad_settings_name_the_problem(bad, words):
    with pytest.raises(UserError, match=None) as e:
        resolve("smoke", None, bad)
    assert words in str(e.value)


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        resolve("huge")


def test_config_file_round_trip_and_unknown_key(tmp_path):
    m, t = resolve("smoke", None, ["seed=3"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_to_dict(m, t)))
    m2, t2 = resolve(None, str(path))
    assert (m2, t2) == (m, t)
    assert load_config_file(path) == (m, t)
    path.write_text(json.dumps({"steps": 5, "widht": 3}))
    with pytest.raises(UserError, match=r"config.json: unknown config key 'widht'"):
        resolve(None, str(path))
    path.write_text("{not json")
    with pytest.raises(UserError, match="config.json: not valid JSON"):
        resolve(None, str(path))


def test_derived_fields():
    cfg = ModelConfig(d_model=64, d_head=16)
    assert cfg.n_head == 4 and cfg.d_mlp == 256
    with pytest.raises(UserError, match="not a multiple of d_head"):
        ModelConfig(d_model=40, d_head=16)


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    import os
    import stat

    from sparsecircuits.io import write_text_atomic

    write_text_atomic(tmp_path / "a.txt", "x")
    mode = stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
