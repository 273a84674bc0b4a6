"""Install and packaging: where bench targets come from (explicit file, the user's config
directory, the built-ins shipped as package data; never the working directory), `targets init`,
the extras ([tflite], [report], [large], [all]), and what pyproject declares."""
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from edgekd.errors import ConfigError, ExportError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home / "edgekd" / "targets"


def run(*args, cwd=None, env=None):
    e = {k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, cwd=cwd, env=e,
                       timeout=120)
    return p.returncode, p.stdout, p.stderr


def test_the_working_directory_is_not_searched(tmp_path, monkeypatch, config_home):
    from edgekd.targets import list_targets, load_target

    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "local-cpu.toml").write_text('kind = "local"\nthreads = 7\n')
    (tmp_path / "targets" / "evil.toml").write_text('kind = "local"\n')
    monkeypatch.chdir(tmp_path)
    t = load_target("local-cpu")
    assert t.threads == 1 and not t.source.startswith(str(tmp_path))
    assert "evil" not in list_targets()
    with pytest.raises(ConfigError, match="unknown bench target 'evil'"):
        load_target("evil")
    assert load_target("targets/evil.toml").source == "targets/evil.toml"  # an explicit path still works


def test_a_user_file_overrides_a_builtin_and_says_so(config_home):
    from edgekd.targets import list_targets, load_target

    config_home.mkdir(parents=True)
    mine = config_home / "local-cpu.toml"
    mine.write_text('kind = "local"\nthreads = 3\n')
    (config_home / "box.toml").write_text('kind = "local"\nthreads = 2\n')
    t = load_target("local-cpu")
    assert (t.threads, t.source) == (3, str(mine))
    found = list_targets()
    assert (found["local-cpu"].origin, found["local-cpu"].overrides) == ("user", True)
    assert (found["box"].origin, found["box"].overrides) == ("user", False)
    assert found["pi"].origin == "built-in"
    rc, out, _ = run("targets", "list", "--json", env={"XDG_CONFIG_HOME": str(config_home.parents[1])})
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and rows["local-cpu"]["file"] == str(mine) and rows["local-cpu"]["overrides_builtin"]
    assert rows["local-cpu"]["threads"] == 3 and rows["pi"]["origin"] == "built-in"
    rc, out, _ = run("targets", "list", env={"XDG_CONFIG_HOME": str(config_home.parents[1])})
    assert f"user (overrides the built-in): {mine}" in out


def test_user_dir_follows_xdg(tmp_path, monkeypatch):
    from edgekd.targets import user_dir

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_dir() == tmp_path / "edgekd" / "targets"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_dir() == tmp_path / "home" / ".config" / "edgekd" / "targets"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/dir")  # the XDG spec: relative values are ignored
    assert user_dir() == tmp_path / "home" / ".config" / "edgekd" / "targets"


def test_a_target_name_cannot_leave_the_directories(config_home):
    from edgekd.targets import load_target

    with pytest.raises(ConfigError, match="a name is letters"):
        load_target("../../etc/passwd")


def test_targets_init_copies_a_builtin_and_keeps_an_edited_file(config_home):
    from edgekd.targets import builtin_files, init_target, load_target

    dest = init_target("pi")
    assert dest == config_home / "pi.toml"
    assert dest.read_text() == builtin_files()["pi"].read_text()
    assert load_target("pi").source == str(dest)
    dest.write_text(dest.read_text().replace('host = "pi"', 'host = "my-pi"'))
    with pytest.raises(ConfigError, match="--force"):
        init_target("pi")
    assert load_target("pi").host == "my-pi"  # not overwritten
    init_target("pi", force=True)
    assert load_target("pi").host == "pi"
    with pytest.raises(ConfigError, match="no built-in target 'phone'"):
        init_target("phone")


def test_targets_init_cli(config_home):
    env = {"XDG_CONFIG_HOME": str(config_home.parents[1])}
    rc, out, _ = run("targets", "init", "cuda", env=env)
    assert rc == 0 and out.strip() == str(config_home / "cuda.toml")
    rc, _, err = run("targets", "init", "cuda", env=env)
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and "--force" in lines[0]
    rc, _, _ = run("targets", "init", "cuda", "--force", env=env)
    assert rc == 0


def test_bench_says_which_target_file_it_loaded(tmp_path, config_home):
    config_home.mkdir(parents=True)
    mine = config_home / "local-cpu.toml"
    mine.write_text('kind = "local"\n')
    rc, _, err = run("bench", str(tmp_path / "nothing-here"), env={"XDG_CONFIG_HOME": str(config_home.parents[1])})
    assert rc == 1  # no such artifact, after the target line
    assert err.splitlines()[0] == f"target local-cpu: {mine}"


def test_a_wheel_ships_the_builtin_targets_as_package_resources(tmp_path):
    """Build the wheel, unpack it as site-packages would hold it, and list the targets from
    a directory that is neither the repository nor holds a targets/ folder."""
    import shutil

    src, dist = tmp_path / "src", tmp_path / "dist"  # a clean copy: no stale build/ folder
    for part in ("edgekd", "targets"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / part, src / part)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(src)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("edgekd-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).name for n in names if n.startswith("edgekd/_targets/")}
    assert shipped == {p.name for p in (ROOT / "targets").glob("*.toml")}
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "EDGEKD_DEBUG"}, "PYTHONPATH": str(site),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    p = subprocess.run([sys.executable, "-c", "import edgekd; print(edgekd.__file__)"], capture_output=True,
                       text=True, cwd=elsewhere, env=env, check=True)
    assert p.stdout.strip() == str(site / "edgekd" / "__init__.py")
    p = subprocess.run([sys.executable, "-m", "edgekd", "targets", "list", "--json"], capture_output=True,
                       text=True, cwd=elsewhere, env=env, timeout=120)
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    assert set(rows) >= {"local-cpu", "pi", "android", "cuda"}
    for name in ("local-cpu", "pi", "android", "cuda"):
        assert rows[name]["origin"] == "built-in" and rows[name]["error"] is None
        assert rows[name]["file"] == str(site / "edgekd" / "_targets" / f"{name}.toml")


def test_tflite_conversion_without_the_extra_is_one_clear_error(tiny_student, tmp_path, monkeypatch):
    from edgekd.export import export
    from edgekd.extras import tflite_available

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    assert not tflite_available()
    for fmt in ("tflite-fp32", "tflite-int8", "tflite-fp16"):
        with pytest.raises(ExportError, match=re.escape("install the extra: pip install 'edgekd[tflite]'")):
            export(tiny_student, fmt, store=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_tflite_export_cli_without_the_extra(tiny_student, tmp_path, monkeypatch, capsys):
    from edgekd import cli

    monkeypatch.setitem(sys.modules, "litert_torch", None)
    monkeypatch.setattr(sys, "argv", ["edgekd", "export", str(tiny_student.path), "--target", "tflite-fp32",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 1 and len(err) == 1
    assert "pip install 'edgekd[tflite]'" in err[0] and "Traceback" not in err[0]


def _imports(folder: Path) -> set[str]:
    """Top-level names of every absolute import in the folder's Python files."""
    import ast

    mods = set()
    for f in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods.add(node.module.split(".")[0])
    return mods


# import name -> distribution, for the modules edgekd imports that are not in the standard library
DIST = {"torch": "torch", "numpy": "numpy", "onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime",
        "litert_torch": "litert-torch", "ai_edge_quantizer": "ai-edge-quantizer", "ai_edge_litert": "ai-edge-litert",
        "typer": "typer", "click": "click", "rich": "rich", "safetensors": "safetensors",
        "matplotlib": "matplotlib", "tomli_w": "tomli-w", "tensorboard": "tensorboard", "scipy": "scipy", "pyarrow": "pyarrow",
        "pytest": "pytest", "hypothesis": "hypothesis", "fastapi": "fastapi", "starlette": "starlette",
        "uvicorn": "uvicorn", "prometheus_client": "prometheus-client", "httpx": "httpx", "pydantic": "pydantic",
        "optuna": "optuna"}
OPTIONAL_RUNTIMES = {"tflite_runtime"}  # the older devices' runtime, tried when ai-edge-litert is absent


def test_every_third_party_import_is_declared_and_pinned():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in meta["dependencies"]}
    for deps in meta["optional-dependencies"].values():
        declared |= {re.split(r"[<>=\[ ;]", d)[0].lower() for d in deps}
    pins = {l.split("==")[0].lower() for l in (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
            if "==" in l and not l.startswith("#")}
    third = set()
    for folder in ("edgekd", "tests", "benchmarks"):
        third |= {m for m in _imports(ROOT / folder) if m not in sys.stdlib_module_names}
    # the benchmark scripts' own helpers (benchmarks/record.py, ...) are first-party too
    own = {f.stem for f in (ROOT / "benchmarks").glob("*.py")}
    third -= {"edgekd", "tests", "__future__"} | OPTIONAL_RUNTIMES | own
    unknown = third - set(DIST)
    assert not unknown, f"imported but not in DIST (declare it in pyproject.toml, pin it): {unknown}"
    for m in third:
        assert DIST[m] in declared, f"{m} is imported but {DIST[m]} is not declared in pyproject.toml"
        assert DIST[m] in pins, f"{DIST[m]} is not pinned in .ci/constraints.txt"


def test_python_floor_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.11"  # tomllib
    base = " ".join(meta["dependencies"])
    assert "litert-torch" not in base and "ai-edge-quantizer" not in base
    assert {"litert-torch>=0.10", "ai-edge-quantizer>=0.10"} <= set(meta["optional-dependencies"]["tflite"])
    assert {"litert-torch", "ai-edge-quantizer"} <= _extra(meta, "dev")


def _extra(meta: dict, name: str, seen=()) -> set[str]:
    """The distributions an extra installs, its nested edgekd[...] extras expanded."""
    out = set()
    for d in meta["optional-dependencies"][name]:
        if d.startswith("edgekd["):
            for sub in d[len("edgekd["):d.index("]")].split(","):
                if sub not in seen:
                    out |= _extra(meta, sub, (*seen, name))
        else:
            out.add(re.split(r"[<>=\[ ;]", d)[0].lower())
    return out


def test_charts_big_files_and_scipy_are_extras_and_the_readme_installs_what_the_pipeline_needs():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in meta["dependencies"]}
    assert not base & {"matplotlib", "pyarrow", "scipy", "litert-torch", "ai-edge-quantizer"}
    assert _extra(meta, "report") == {"matplotlib"} and _extra(meta, "large") == {"pyarrow"}
    everything = _extra(meta, "all")
    for name in ("tflite", "report", "large", "serve", "search"):
        assert _extra(meta, name) <= everything
    assert everything | _extra(meta, "studies") | _extra(meta, "tensorboard") <= _extra(meta, "dev")
    # the README's first command: the default pipeline exports TFLite and draws its charts
    first = re.search(r"pip install -c \.ci/constraints\.txt -e '\.\[([a-z,]+)\]' && edgekd pipeline",
                      (ROOT / "README.md").read_text())
    assert first, "the README's first command installs edgekd and runs the pipeline"
    installed = set().union(*(_extra(meta, x) for x in first.group(1).split(",")))
    assert {"litert-torch", "ai-edge-quantizer", "matplotlib"} <= installed
