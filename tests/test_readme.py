"""README.md's "Python" section runs as written, on a tiny run laid out as `mvformer demo` leaves its own."""

import contextlib
import io
import os
import re
from pathlib import Path

from mvformer.cli import build_parser
from mvformer.config import load_config
from mvformer.data.synthetic import generate_pouring_dataset
from mvformer.train.loop import train

README = Path(__file__).resolve().parents[1] / "README.md"


def python_section() -> str:
    """The first ```python block after the '## Python' heading."""
    section = README.read_text().split("\n## Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_python_section_of_the_readme_runs(tmp_path):
    demo = tmp_path / "runs" / "demo"
    root = generate_pouring_dataset(demo / "data", num_train=4, num_val=2, size=64, min_frames=16, max_frames=24)
    train(load_config("demo", [f"data.root={root}", "data.clip_len=16", "train.epochs=1", "train.batch_size=2",
                               f"train.output_dir={demo / 'mv_former_seed0'}"]))
    printed = io.StringIO()
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(python_section(), str(README), "exec"), {})
    finally:
        os.chdir(here)
    lines = printed.getvalue().splitlines()
    assert re.fullmatch(r"pour_004 \(\d+, 32\)", lines[0])  # the first val video: (L, E)
    matches = [line.split() for line in lines if line.startswith(("pour_005 ", "black "))]
    distances = [float(match[2]) for match in matches]
    assert len(matches) == 3 and distances == sorted(distances)  # nearest first
    for name in ("aligned.mp4", "aligned_path.csv", "aligned_cost.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_the_command_list_names_every_command_and_the_readme_no_other():
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    block = re.search(r"## Commands\n\n```bash\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    listed = set(re.findall(r"^mvformer ([a-z-]+)", block, re.MULTILINE))
    listed |= set(re.search(r"^mvformer (embed \|.*?) \.\.\.", block, re.MULTILINE).group(1).split(" | "))
    assert listed == commands
    text = README.read_text()  # commands as written: in backticks, or a line of a bash block
    used = set(re.findall(r"`mvformer ([a-z-]+)", text)) | set(re.findall(r"^mvformer ([a-z-]+)", text, re.MULTILINE))
    assert len(used) > 10 and used <= commands, used - commands
