"""LazyCall, instantiate, overrides, YAML dump and load, Python config files and their imports."""

from __future__ import annotations

import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from detforge.config import (
    L,
    LazyCall,
    LazyConfig,
    apply_overrides,
    instantiate,
    locate,
    to_py_literal,
)


def _root(**content: object) -> DictConfig:
    return OmegaConf.create(content, flags={"allow_objects": True})


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# --- LazyCall and instantiate ----------------------------------------------------------------


def test_lazycall_records_target_and_kwargs() -> None:
    cfg = L(SimpleNamespace)(a=1, b="x")
    assert isinstance(cfg, DictConfig)
    assert cfg._target_ is SimpleNamespace
    assert (cfg.a, cfg.b) == (1, "x")
    assert LazyCall is L


def test_lazycall_rejects_bad_use() -> None:
    with pytest.raises(TypeError, match="keyword arguments only"):
        L(SimpleNamespace)(1)
    with pytest.raises(TypeError, match="must be a class or function"):
        L("types.SimpleNamespace")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reserved"):
        L(SimpleNamespace)(**{"_target_": 1})


def test_instantiate_nested_calls_lists_and_tuples() -> None:
    cfg = L(SimpleNamespace)(
        inner=L(SimpleNamespace)(x=1, deeper=L(timedelta)(days=2)),
        items=[L(timedelta)(hours=3), 4, {"k": L(timedelta)(minutes=5)}],
        pair=(1, 2),
    )
    obj = instantiate(cfg)
    assert isinstance(obj, SimpleNamespace)
    assert obj.inner.x == 1 and obj.inner.deeper == timedelta(days=2)
    assert obj.items == [timedelta(hours=3), 4, {"k": timedelta(minutes=5)}]
    assert type(obj.items) is list and obj.pair == (1, 2) and type(obj.pair) is tuple
    # The config is a recipe: each instantiate builds new objects.
    assert instantiate(cfg).inner is not obj.inner


def test_instantiate_plain_containers_and_string_targets() -> None:
    from detforge.engine.recipe import TrainSettings

    target = "detforge.engine.recipe.TrainSettings"
    cfg = {"a": [{"_target_": target, "max_iter": 2}, "s"], "b": {"c": None}}
    assert instantiate(cfg) == {"a": [TrainSettings(max_iter=2), "s"], "b": {"c": None}}
    assert instantiate([1, (2, 3)]) == [1, (2, 3)]
    assert instantiate(7) == 7 and instantiate("text") == "text"


def test_instantiate_resolves_interpolations() -> None:
    cfg = _root(n=3, m=L(SimpleNamespace)(k="${n}", ks=["${n}", 1]))
    obj = instantiate(cfg.m)
    assert obj.k == 3 and obj.ks == [3, 1]


def test_instantiate_errors_name_the_key() -> None:
    cfg = _root(outer=L(SimpleNamespace)(inner=L(timedelta)(dayz=1)))
    with pytest.raises(TypeError) as info:
        instantiate(cfg)
    notes = getattr(info.value, "__notes__", [])
    if sys.version_info >= (3, 11):
        assert len(notes) == 1 and "`outer.inner`" in notes[0] and "timedelta" in notes[0]
    with pytest.raises(ValueError, match=r"`m`.*no_such_module_xyz\.thing"):
        instantiate({"m": {"_target_": "no_such_module_xyz.thing"}})
    with pytest.raises(TypeError, match="not callable"):
        instantiate({"_target_": 3})


def test_locate() -> None:
    assert locate("datetime.timedelta") is timedelta
    assert locate("torch.nn.Linear") is torch.nn.Linear
    assert locate("torch.nn.Linear.forward") is torch.nn.Linear.forward
    with pytest.raises(ImportError, match="nope"):
        locate("torch.nn.nope")


# --- overrides ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        ("-0.5", -0.5),
        ("1e-2", 0.01),
        ("'x'", "x"),
        ('"a b"', "a b"),
        ("[1, 2]", [1, 2]),
        ("(1, 'a')", (1, "a")),
        ("True", True),
        ("false", False),
        ("None", None),
        ("null", None),
        ("out/run1", "out/run1"),
        ("abc", "abc"),
        ("{'k': 1}", {"k": 1}),
    ],
)
def test_to_py_literal(text: str, expected: object) -> None:
    value = to_py_literal(text)
    assert value == expected and type(value) is type(expected)


def _cfg() -> DictConfig:
    return _root(
        model=L(SimpleNamespace)(
            num_classes=80,
            backbone=L(SimpleNamespace)(depth=50, out=[1, 2]),
            head=L(torch.nn.Linear)(in_features=4, out_features=2),
        ),
        optimizer={"lr": 0.02, "betas": [0.9, 0.99], "name": "sgd"},
        train={"output_dir": "???", "amp": False, "init": None},
    )


def test_overrides_of_every_value_kind() -> None:
    cfg = apply_overrides(
        _cfg(),
        [
            "model.num_classes=3",
            "optimizer.lr=0.01",
            "optimizer.betas=[0.8, 0.9]",
            "optimizer.name=adamw",
            "train.output_dir=out/x",  # a ??? (mandatory) value; unquoted text stays a string
            "train.amp=True",
            "train.init=None",
            "model.backbone.out.1=7",
        ],
    )
    assert cfg.model.num_classes == 3 and cfg.optimizer.lr == 0.01
    assert list(cfg.optimizer.betas) == [0.8, 0.9] and cfg.optimizer.name == "adamw"
    assert cfg.train.output_dir == "out/x" and cfg.train.amp is True and cfg.train.init is None
    assert list(cfg.model.backbone.out) == [1, 7]
    assert instantiate(cfg.model).num_classes == 3


def test_override_replaces_a_lazy_subtree() -> None:
    cfg = apply_overrides(_cfg(), ["model.backbone=None", "model.head={'depth': 3}"])
    model = instantiate(cfg.model)
    assert model.backbone is None and model.head == {"depth": 3}


def test_override_may_add_a_keyword_the_target_accepts() -> None:
    cfg = apply_overrides(_cfg(), ["model.head.bias=False"])
    head = instantiate(cfg.model).head
    assert isinstance(head, torch.nn.Linear) and head.bias is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "model.num_clases=3",
            "unknown config key 'model.num_clases'; did you mean 'model.num_classes'?",
        ),
        ("model.backbon.depth=18", "did you mean 'model.backbone.depth'"),
        ("model.head.biass=False", "did you mean 'model.head.bias'"),
        ("optimiser.lr=0.1", "did you mean 'optimizer.lr'"),
        (
            "schedule.steps=3",
            "unknown config key 'schedule.steps' (top-level keys: model, optimizer",
        ),
        ("optimizer.lr.x=1", "unknown config key 'optimizer.lr.x'"),
        ("model.backbone.out.5=1", "unknown config key 'model.backbone.out.5'"),
        ("model.num_classes=eighty", "expected a number"),
        ("optimizer.lr=1e-2x", "expected a number"),
        ("model.num_classes", "expected 'key=value'"),
        ("=3", "expected 'key=value'"),
        ("model._target_=torch.nn.ReLU", "swap components in a config file"),
    ],
)
def test_bad_overrides_are_rejected(item: str, message: str) -> None:
    cfg = _cfg()
    before = OmegaConf.to_container(cfg)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        apply_overrides(cfg, [item])
    assert OmegaConf.to_container(cfg) == before


# --- YAML dump and load --------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = _root(
        n=2,
        model=dict(
            layer=L(torch.nn.Linear)(in_features=3, out_features="${n}"),
            act=torch.nn.ReLU,
            sizes=(1, 2),
            opts={"k": [True, None, 0.5]},
        ),
    )
    path = tmp_path / "run" / "config.yaml"
    LazyConfig.save(cfg, path)
    text = path.read_text()
    assert "_target_: torch.nn.modules.linear.Linear" in text and "${n}" not in text
    loaded = LazyConfig.load(path)
    assert loaded.model.layer._target_ == "torch.nn.modules.linear.Linear"
    torch.manual_seed(0)
    a = instantiate(cfg.model)
    torch.manual_seed(0)
    b = instantiate(loaded.model)
    assert isinstance(b["layer"], torch.nn.Linear) and b["layer"].out_features == 2
    assert torch.equal(a["layer"].weight, b["layer"].weight) and torch.equal(
        a["layer"].bias, b["layer"].bias
    )
    assert b["act"] is torch.nn.ReLU and list(b["sizes"]) == [1, 2] and b["opts"] == a["opts"]
    LazyConfig.save(loaded, tmp_path / "again.yaml")  # a loaded dump saves to the same text
    assert (tmp_path / "again.yaml").read_text() == text


def test_save_rejects_what_cannot_be_imported_back(tmp_path: Path) -> None:
    def local_fn() -> None:
        pass

    with pytest.raises(ValueError, match=r"`m\._target_`.*local_fn"):
        LazyConfig.save(_root(m={"_target_": local_fn}), tmp_path / "a.yaml")
    with pytest.raises(ValueError, match=r"`m\.x`.*YAML cannot store"):
        LazyConfig.save(_root(m={"x": object()}), tmp_path / "b.yaml")


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such config file"):
        LazyConfig.load(tmp_path / "missing.py")
    with pytest.raises(ValueError, match="expected a .py, .yaml or .yml"):
        LazyConfig.load(_write(tmp_path, "c.json", "{}"))
    with pytest.raises(ValueError, match="top level must be a mapping"):
        LazyConfig.load(_write(tmp_path, "c.yaml", "- 1\n- 2\n"))


# --- Python config files -------------------------------------------------------------------------

_BASE = """\
    from types import SimpleNamespace
    from detforge.config import LazyCall as L
    model = L(SimpleNamespace)(x=1, parts=[1, 2])
    _helper = 5
"""


def test_relative_imports_between_config_files(tmp_path: Path) -> None:
    root = tmp_path / "my-configs.v1"  # folder names need not be identifiers
    _write(root, "common/base.py", _BASE)
    a = _write(root, "exp/a.py", "from ..common.base import model\nmodel.x = 2\nlr = 0.1\n")
    b = _write(root, "exp/b.py", "from ..common import base\nmodel = base.model\n")
    cfg_a = LazyConfig.load(a)
    assert set(cfg_a.keys()) == {"model", "lr"}  # imports, modules and _names are left out
    assert cfg_a.model.x == 2 and cfg_a.lr == 0.1
    assert instantiate(cfg_a.model) == SimpleNamespace(x=2, parts=[1, 2])
    # Every load executes its files afresh: a's edit does not leak into b.
    assert LazyConfig.load(b).model.x == 1
    assert LazyConfig.load(str(a)).model.x == 2
    assert not [n for n in sys.modules if n.startswith("_detforge_config_")]
    assert not list(root.rglob("__pycache__"))


def test_config_file_that_raises_names_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad.py", "x = 1\ny = x / 0\n")
    with pytest.raises(ValueError, match="bad.py raised ZeroDivisionError") as info:
        LazyConfig.load(bad)
    assert str(bad) in str(info.value) and isinstance(info.value.__cause__, ZeroDivisionError)
    top = _write(tmp_path, "top.py", "from .bad import y\n")
    with pytest.raises(ValueError, match="bad.py raised ZeroDivisionError") as info:
        LazyConfig.load(top)
    assert str(top) in str(info.value)
    missing = _write(tmp_path, "missing.py", "from .common.nothing import model\n")
    with pytest.raises(
        ValueError, match=r"missing\.py raised ModuleNotFoundError: no config file .*common\.py"
    ):
        LazyConfig.load(missing)
    syntax = _write(tmp_path, "syntax.py", "model = (\n")
    with pytest.raises(ValueError, match="syntax.py raised SyntaxError"):
        LazyConfig.load(syntax)
    assert not [n for n in sys.modules if n.startswith("_detforge_config_")]


def test_config_file_must_not_build_objects(tmp_path: Path) -> None:
    eager = _write(tmp_path, "eager.py", "import torch\nmodel = torch.nn.Linear(2, 2)\n")
    with pytest.raises(ValueError, match=r"eager\.py: top-level name 'model' is a Linear"):
        LazyConfig.load(eager)


def test_yaml_configs_are_data_and_never_name_arbitrary_code(tmp_path: Path) -> None:
    from detforge.config.targets import UnsafeConfigError

    marker = tmp_path / "pwned"
    payloads = [
        {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
        {"_target_": "detforge.modeling.zoo.os.system", "command": f"touch {marker}"},
        {"_target_": "detforge.config.lazy.locate", "path": "os.system"},
        {"_target_": "detforge.cli.main", "argv": ["--help"]},
        {"_target_": "builtins.exec", "source": f"open({str(marker)!r}, 'w')"},
    ]
    for i, payload in enumerate(payloads):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(yaml.safe_dump({"model": {"inner": [payload]}}))
        with pytest.raises(UnsafeConfigError, match=str(path)):
            LazyConfig.load(path)
        with pytest.raises(UnsafeConfigError, match="refusing"):
            instantiate({"model": {"inner": [payload]}})  # also when built without loading
    assert not marker.exists()
    ok = {"_target_": "detforge.config.lazy.locate", "path": "torch.nn.ReLU"}
    assert instantiate(ok) is torch.nn.ReLU
