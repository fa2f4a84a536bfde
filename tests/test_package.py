"""Packaging promises: `import detforge` is cheap, and nothing needs torchvision."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import detforge

ROOT = Path(detforge.__file__).resolve().parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_is_cheap():
    res = _run("import sys, detforge; print('torch' in sys.modules, detforge.__version__)")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", detforge.__version__]


def test_every_module_imports_without_torchvision():
    # A meta-path finder that refuses torchvision, as on a machine where it is not installed.
    modules = sorted(m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="detforge."))
    assert "detforge.ops.roi_align" in modules and "detforge.structures.masks" in modules
    code = (
        "import importlib, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torchvision':\n"
        "            raise ImportError('torchvision is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    res = _run(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_no_source_mentions_torchvision_imports():
    offenders = [
        str(p.relative_to(ROOT))
        for p in ROOT.rglob("*.py")
        if "import torchvision" in p.read_text() or "from torchvision" in p.read_text()
    ]
    assert offenders == []
