"""The docs a user reads: generated references match the code, links lead somewhere, README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import run_cli as run

from visionkit.cli import build_parser
from visionkit.config_keys import REGENERATE, cli_markdown, keys_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _differs(name: str, generated: str) -> str | None:
    committed = (DOCS / name).read_text()
    if committed == generated:
        return None
    for i, (a, b) in enumerate(zip(committed.splitlines(), generated.splitlines(), strict=False), 1):
        if a != b:
            return f"docs/{name} line {i} is\n  {a}\nbut the code generates\n  {b}"
    return f"docs/{name} and the generated page differ in length"


def test_the_key_reference_is_what_the_schema_generates():
    problem = _differs("config-keys.md", keys_markdown())
    assert problem is None, f"{problem}\nrun `{REGENERATE}` and commit docs/config-keys.md"


def test_the_cli_reference_is_what_the_parser_generates():
    problem = _differs("cli.md", cli_markdown(build_parser()))
    assert problem is None, f"{problem}\nrun `{REGENERATE}` and commit docs/cli.md"


def test_a_changed_help_text_changes_the_generated_reference(monkeypatch):
    """The check above can fail: a key whose help changes no longer matches the committed page."""
    from visionkit import schema

    original = schema.base_schema

    def changed():
        tree = original()
        tree["train"]["epochs"].help = "a help text nobody committed"
        return tree

    monkeypatch.setattr("visionkit.config_keys.base_schema", changed)
    assert _differs("config-keys.md", keys_markdown()) is not None


def test_config_keys_on_the_command_line(capsys):
    from visionkit.cli import main

    def keys(*args) -> tuple[int, str, str]:  # the CLI in this process (a subprocess each costs seconds)
        capsys.readouterr()
        code = main(["config", "keys", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = keys("--task", "depth")
    assert code == 0, err
    assert re.search(r"data\.depth\.format +str = nyu .*one of: nyu, kitti", out)
    assert "model.head.name" in out and "data.segmentation" not in out
    code, out, _ = keys("--markdown")
    assert code == 0 and out == (DOCS / "config-keys.md").read_text()
    code, _, err = keys("--task", "detect")
    assert code == 2 and "unknown task 'detect'" in err and "detection" in err


def test_every_relative_link_points_at_a_file_that_exists():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 300, f"README.md has {lines} lines; move detail to a page under docs/"


def test_the_complete_configs_in_your_own_data_are_valid(tmp_path):
    """Each page's config is complete as printed: it loads and validates (its data is the user's)."""
    from visionkit.config import load_config

    blocks = re.findall(r"```yaml\n(task: .*?)```", (DOCS / "your-own-data.md").read_text(), re.DOTALL)
    assert len(blocks) == 4
    for i, block in enumerate(blocks):
        path = tmp_path / f"config{i}.yaml"
        path.write_text(block)
        cfg = load_config(path)
        assert cfg.task == block.split()[1]


# small overrides that make the README's recipes minutes-long on a CPU, added to every command
TINY = ["train.epochs=1", "data.synth.num_images=48", "data.batch_size=8", "data.eval_batch_size=8",
        "data.num_workers=0", "train.vis_images=0", "train.progress=false", "train.final_test=false"]


def _readme_blocks() -> dict[str, list[str]]:
    """The worked example of each task: its bash block's commands, keyed by the run directory name."""
    readme = (ROOT / "README.md").read_text()
    blocks = {}
    for block in re.findall(r"```bash\n(visionkit train .*?)```", readme, re.DOTALL):
        name = re.search(r"--run-dir runs/(\w+)", block).group(1)
        blocks[name] = [line.split() for line in block.strip().splitlines()]
    return blocks


def test_the_readme_has_one_worked_example_per_task():
    assert sorted(_readme_blocks()) == ["cls", "depth", "mrcnn", "seg"]


@pytest.mark.parametrize("name", ["cls", "seg", "mrcnn", "depth"])
def test_each_readme_worked_example_runs_as_written(name, tmp_path):
    """Train, eval, predict and export exactly as the README writes them (with TINY's overrides),
    in an empty folder, from the command line: each exits 0 and leaves the files it promises."""
    pytest.importorskip("onnxruntime")
    for words in _readme_blocks()[name]:
        assert words[0] == "visionkit"
        args = [str(ROOT / w) if w.startswith("configs/") else w for w in words[1:]]
        r = run(*args, *TINY, cwd=tmp_path)
        assert r.returncode == 0, f"{' '.join(words)}\n{r.stderr[-2000:]}"
    run_dir = tmp_path / "runs" / name
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "eval_test.json").is_file()
    assert (tmp_path / "preds" / "predictions.json").is_file()
    assert list(tmp_path.glob("*.onnx"))
