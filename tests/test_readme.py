"""The README's "Your own model and data" example runs as printed."""
import re
from pathlib import Path

from chanprune.models import registry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_own_data_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- own-data-example -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README lost its own-data example"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    try:
        exec(compile(code, "README.md (own data example)", "exec"), {"__name__": "readme_example"})
    finally:
        registry._REGISTRY.pop("mynet", None)
    printed = capsys.readouterr().out
    assert "'accuracy'" in printed and printed.rstrip().endswith("256")
    assert (tmp_path / "runs/mynet_half/model.json").is_file() and (tmp_path / "runs/mynet_half/model.safetensors").is_file()
