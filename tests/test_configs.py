"""The YAML that users run: every file in configs/, every YAML example in the docs, and the data
layout they read, made by the documented ``promptcouple split`` commands.

* Every config in ``configs/`` and every ```yaml block in ``docs/*.md`` and ``README.md`` is read with
  the project's own loaders (``load_config`` / ``TrainConfig.from_dict``; ``benchmarks/protocol/sources.py``'s
  ``ListSource`` for ``--data-config`` files), which reject unknown keys; paths need not exist.
* ``configs/`` agrees with ``configs/make_configs.py``, and its values with their sources.
* docs/CONFIG.md documents every training-config key, and names no key that does not exist.
* Links between the docs resolve, and code that cites METHOD.md / INTEGRATION.md cites docs/.
* On a tiny generated dataset laid out as docs/CONFIG.md says, the ``promptcouple split``
  commands of docs/CONFIG.md make every file that every shipped config reads (each config's
  datasets are built, which checks files, lists, labels and anchor overlap), the docs' own-data
  walkthrough runs, and ``benchmarks/base2novel.py --data-config configs/data/...`` runs end to end
  in a subprocess.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CONFIG_MD = ROOT / "docs" / "CONFIG.md"
DOC_FILES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(CONFIGS))

import make_configs  # noqa: E402
from protocol.methods import METHODS, run_config  # noqa: E402
from protocol.setting import REAL_PRESET, Setting  # noqa: E402
from protocol.sources import ListSource  # noqa: E402

from promptcouple import CouplingConfig  # noqa: E402
from promptcouple.cli import main as promptcouple_main  # noqa: E402
from promptcouple.data import read_label_csv, read_video_list  # noqa: E402
from promptcouple.data.splits import select_classes  # noqa: E402
from promptcouple.train import TrainConfig, load_config  # noqa: E402
from promptcouple.train.config import ConfigError, WorldDataConfig, check_files  # noqa: E402
from promptcouple.train.data import build_datasets  # noqa: E402

# The keys benchmarks/protocol/sources.py's ListSource reads (its module docstring and docs/CONFIG.md).
DATA_CONFIG_KEYS = {"datasets", "anchors", "reference_anchors", "hard_prompts", "hard_prompt_source"}
PROTOCOLS = {"base_to_novel", "few_shot", "zero_shot"}
SECTIONS = ("model", "prompts", "data", "anchors", "optim", "loss", "eval", "run")

CONFIG_FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


# ------------------------------------------------------------------------------------ loaders

def is_data_config(raw: object) -> bool:
    return isinstance(raw, dict) and "datasets" in raw


def data_config_runs(path: Path, out: Path) -> list[tuple[str, TrainConfig]]:
    """The training configs a benchmark script builds from a ``--data-config`` file, built as it
    builds them (``ListSource`` fills ``{split}``/``{shots}``, ``run_config`` adds the method).

    Trained sections get the file's anchors, as the scripts' anchor methods do; evaluation-only
    sections (a zero-shot target: no ``train_list``) do not.
    """
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict), f"{path}: expected a mapping at the top level"
    unknown = set(raw) - DATA_CONFIG_KEYS
    assert not unknown, f"{path}: unknown top-level keys {sorted(unknown)}; known: {sorted(DATA_CONFIG_KEYS)}"
    setting = Setting(**REAL_PRESET)
    src = ListSource(str(path), setting)
    model = {"name": "ViT-B-16-quickgelu", "pretrained": "openai"}

    def build(data: dict, method: str = "ivlp", anchors: dict | None = None) -> TrainConfig:
        spec = run_config(METHODS[method], setting, model, data, out, seed=0, anchors=anchors,
                          hard_prompts=src.hard_prompts, base_dir=src.base_dir)
        return TrainConfig.from_dict(spec["config"], base_dir=spec["base_dir"])

    runs = []
    for dataset, sections in raw["datasets"].items():
        assert isinstance(sections, dict) and sections, f"{path}: dataset {dataset!r} has no protocol sections"
        assert set(sections) <= PROTOCOLS, f"{path}: {dataset}: unknown protocols {sorted(set(sections) - PROTOCOLS)}"
        for protocol, section in sections.items():
            assert src.datasets(protocol).count(dataset) == 1
            data = src.data(dataset, protocol, 1, 16)
            trained = "train_list" in section
            anchors = src.anchors("consistency", out) if trained and "anchors" in raw else None
            # GA2 where the file names a hard prompt; else IVLP with the anchors (the hard prompt
            # of hard_prompt_source exists only once the script has trained it)
            method = ("ga2" if src.hard_prompts else "anchors") if anchors else "ivlp"
            runs.append((f"{dataset}/{protocol}", build(data, method, anchors)))
            if trained and "reference_anchors" in raw:
                runs.append((f"{dataset}/{protocol}/reference",
                             build(data, "ga2-reference" if src.hard_prompts else "ivlp",
                                   src.anchors("reference", out))))
    if "hard_prompt_source" in raw:
        runs.append(("hard_prompt_source", build(src.hard_prompt_data())))
    if "hard_prompts" in raw:
        assert isinstance(raw["hard_prompts"], str) and raw["hard_prompts"].endswith(".safetensors")
    return runs


def yaml_blocks(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every ```yaml fenced block (indented fences inside list items included)."""
    text = path.read_text()
    blocks = []
    for m in re.finditer(r"^( *)```yaml[ \t]*\n(.*?)^\1```", text, re.M | re.S):
        blocks.append((text[:m.start()].count("\n") + 1, textwrap.dedent(m.group(2))))
    return blocks


def check_yaml_text(text: str, where: str, tmp: Path) -> list[TrainConfig]:
    """Parse a YAML example with the loader it is meant for; returns the training configs."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        pytest.fail(f"{where}: not valid YAML: {err}")
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "example.yaml"
    path.write_text(text)
    if is_data_config(raw):
        return [cfg for _, cfg in data_config_runs(path, tmp / "out")]
    assert isinstance(raw, dict) and set(raw) <= set(SECTIONS), f"{where}: top-level keys {list(raw or {})}"
    try:
        return [load_config(path)]
    except ConfigError as err:
        pytest.fail(f"{where}: {err}")


# ------------------------------------------------------------------------------- configs/ itself

def test_configs_are_what_the_generator_writes(capsys):
    assert make_configs.main(["--check"]) == 0, capsys.readouterr().out
    assert len(CONFIG_FILES) == len(make_configs.all_configs()) >= 80


@pytest.mark.parametrize("rel", CONFIG_FILES)
def test_every_config_parses_with_known_keys(rel, tmp_path):
    path = CONFIGS / rel
    raw = yaml.safe_load(path.read_text())
    if rel.startswith("data/"):
        runs = data_config_runs(path, tmp_path)
        assert runs and all(isinstance(cfg, TrainConfig) for _, cfg in runs)
        return
    assert set(raw) <= set(SECTIONS)
    cfg = load_config(path)
    # relative paths resolve against the file's folder: up to the repository root, then data/ or runs/
    for key in ("train_list", "labels", "val_list", "root"):
        value = getattr(cfg.data, key)
        assert value is not None and _under(value, ROOT / "data"), (rel, key, value)
    if "/eval/" not in rel:
        assert _under(cfg.run.output_dir, ROOT / "runs"), rel
    assert cfg.model.name == "ViT-B-16-quickgelu" and cfg.model.pretrained == "openai"


def _under(path: str, folder: Path) -> bool:
    return Path(os.path.normpath(path)).is_relative_to(folder)


def _cfg(rel: str) -> TrainConfig:
    return load_config(CONFIGS / rel)


@pytest.mark.parametrize("rel, want", [
    # [G] hmdb_base2novel.yaml: lr 4e-2 x clip_ratio 0.1, 12 epochs, 2 warm-up, 8 clips; [GA] crops
    ("base2novel/hmdb51/ga2_s1.yaml", dict(lr=4e-3, epochs=12, warmup=2, batch=8, crop="random_resized", flip=True)),
    ("base2novel/ucf101/ivlp_s2.yaml", dict(lr=4e-2, epochs=12, warmup=2, batch=8, crop="random_resized", flip=True)),
    ("base2novel/k400/coop_s3.yaml", dict(lr=4e-2, epochs=12, warmup=2, batch=8, crop="random_resized", flip=True)),
    ("base2novel/ssv2/ga2_s1.yaml", dict(lr=4e-2, epochs=12, warmup=2, batch=4, crop="multiscale", flip=False)),
    # [G] few-shot configs: lr 8e-3 x clip_ratio (0.1 HMDB-51, 1.0 others), 30 epochs, 5 warm-up
    ("few_shot/hmdb51/ga2_k2.yaml", dict(lr=8e-4, epochs=30, warmup=5, batch=8, crop="random_resized", flip=True)),
    ("few_shot/ucf101/ivlp_k16.yaml", dict(lr=8e-3, epochs=30, warmup=5, batch=8, crop="random_resized", flip=True)),
    ("few_shot/ssv2/coop_k8.yaml", dict(lr=8e-3, epochs=30, warmup=5, batch=4, crop="multiscale", flip=False)),
    ("zero_shot/ga2_k400.yaml", dict(lr=4e-2, epochs=12, warmup=2, batch=8, crop="random_resized", flip=True)),
])
def test_config_values_follow_their_sources(rel, want):
    cfg = _cfg(rel)
    o, d = cfg.optim, cfg.data
    assert (o.lr, o.epochs, o.warmup_epochs, o.batch_size, o.weight_decay) == pytest.approx(
        (want["lr"], want["epochs"], want["warmup"], want["batch"], 1e-3))
    assert (d.crop, d.flip, d.grayscale, d.num_frames, d.image_size) == (want["crop"], want["flip"], 0.2, 32, 224)
    assert (cfg.run.seed, cfg.run.precision, cfg.eval.num_clips, cfg.eval.num_crops, cfg.eval.every_epochs) == \
        (1024, "bf16", 1, 1, 0)


def test_methods_are_the_documented_prompt_layouts():
    hard_outputs = {}
    for name in ("k400_base", "k600_only100"):
        cfg = _cfg(f"hard_prompts/{name}.yaml")
        assert cfg.prompts.hard_prompts is None and not cfg.anchors.enabled  # IVLP
        hard_outputs[name] = os.path.normpath(Path(cfg.run.output_dir) / "prompts.safetensors")
    outputs = set()
    for rel in CONFIG_FILES:
        if rel.startswith(("data/", "zero_shot/eval/", "hard_prompts/")):
            continue
        cfg = _cfg(rel)
        method = Path(rel).stem.split("_")[0]
        c = cfg.coupling_config()
        if method == "coop":
            assert (c.n_ctx, c.text_depth, c.n_vision_ctx, c.vision_depth) == (16, 1, 0, 0), rel
        else:
            assert (c.n_ctx, c.text_depth, c.n_vision_ctx, c.vision_depth) == (16, 9, 16, 9), rel
        if method == "ga2":
            k400 = "/k400/" in rel or rel.startswith("zero_shot/")
            assert os.path.normpath(cfg.prompts.hard_prompts) == hard_outputs["k600_only100" if k400 else "k400_base"], rel
            assert c.dropout == 0.5 and cfg.anchors.enabled and cfg.anchors.mode == "consistency", rel
            assert cfg.anchors.batch_size == 1 and cfg.anchors.template == "a video of a person {}.", rel
            assert ("/anchors/k600/" if k400 else "/anchors/k400/") in cfg.anchors.list, rel
        else:
            assert cfg.prompts.hard_prompts is None and not cfg.anchors.enabled, rel
        if rel.startswith("base2novel/"):
            split = Path(rel).stem.split("_s")[1]
            assert cfg.data.train_list.endswith(f"/b2n/fs_base_s{split}_train.txt"), rel
            assert cfg.data.novel_list.endswith("/b2n/novel_val.txt"), rel
        outputs.add(os.path.normpath(cfg.run.output_dir))
    assert len(outputs) == len([r for r in CONFIG_FILES if not r.startswith(("data/", "zero_shot/eval/",
                                                                             "hard_prompts/"))])


# --------------------------------------------------------------------------------------- docs

DOC_BLOCKS = [(p, line, text) for p in DOC_FILES for line, text in yaml_blocks(p)]


def test_the_docs_have_yaml_examples():
    assert sum(p == CONFIG_MD for p, _, _ in DOC_BLOCKS) >= 4


@pytest.mark.parametrize("path, line, text", DOC_BLOCKS,
                         ids=[f"{p.name}:{line}" for p, line, _ in DOC_BLOCKS])
def test_doc_yaml_examples_parse_with_the_project_loaders(path, line, text, tmp_path):
    cfgs = check_yaml_text(text, f"{path.relative_to(ROOT)}:{line}", tmp_path)
    assert cfgs


def _docstring_blocks(module_file: Path) -> list[str]:
    """Literal blocks (``::``) of a module docstring that look like YAML mappings."""
    doc = re.match(r'\s*(?:r|u)?"""(.*?)"""', module_file.read_text(), re.S)
    blocks = []
    for m in re.finditer(r"::\n\n((?:(?: {4,}.*)?\n)+)", doc.group(1) + "\n" if doc else ""):
        block = textwrap.dedent(m.group(1))
        if re.match(r"[a-z_]+:", block):
            blocks.append(block)
    return blocks


@pytest.mark.parametrize("module", ["benchmarks/protocol/sources.py", "promptcouple/train/config.py"])
def test_docstring_yaml_examples_parse(module, tmp_path):
    for i, block in enumerate(_docstring_blocks(ROOT / module)):
        check_yaml_text(block, f"{module} docstring example {i + 1}", tmp_path / str(i))


def _documented_keys() -> set[str]:
    found = re.findall(r"`((?:%s)\.[a-z_]+(?:\.[a-z_]+)?)`" % "|".join(SECTIONS), CONFIG_MD.read_text())
    return {k for k in found if not k.endswith((".safetensors", ".yaml", ".csv", ".txt", ".json"))}  # file names


def _schema_keys() -> set[str]:
    keys = set()
    for section in dataclasses.fields(TrainConfig):
        for f in dataclasses.fields(section.default_factory()):
            if (section.name, f.name) != ("prompts", "coupling"):  # YAML keeps the coupling fields flat
                keys.add(f"{section.name}.{f.name}")
    keys |= {f"prompts.{f.name}" for f in dataclasses.fields(CouplingConfig) if f.name != "version"}
    keys |= {f"data.world.{f.name}" for f in dataclasses.fields(WorldDataConfig)}
    return keys


def test_config_md_documents_every_key_and_only_real_ones():
    documented, schema = _documented_keys(), _schema_keys()
    assert not documented - schema, f"docs/CONFIG.md names keys the schema lacks: {sorted(documented - schema)}"
    assert not schema - documented, f"docs/CONFIG.md does not document: {sorted(schema - documented)}"


def test_doc_links_resolve():
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: link to {target} does not resolve"


def test_references_to_the_method_docs_point_into_docs():
    sections = set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "METHOD.md").read_text(), re.M))
    assert {"1", "2", "3", "4", "5", "6"} <= sections
    files = [ROOT / "README.md", *ROOT.glob("promptcouple/**/*.py"), *ROOT.glob("benchmarks/*.py"),
             *ROOT.glob("examples/*.py")]
    bad = []
    for f in files:
        text = f.read_text()
        for m in re.finditer(r"(?<![\w/])(METHOD|INTEGRATION)\.md", text):
            bad.append(f"{f.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}")
        for m in re.finditer(r"docs/METHOD\.md,? section (\d+)", text):
            assert m.group(1) in sections, f"{f.relative_to(ROOT)} cites METHOD.md section {m.group(1)}"
    assert not bad, f"references without docs/: {bad}"


# -------------------------------------------------------------------------------------- splits

def test_select_classes():
    names = ["Archery", "ride_bike", "yoga", "juggling balls", "abseiling"]
    assert select_classes(names, exclude=["archery", "ride bike"]) == (2, 3, 4)  # lower-case, _ as space
    drawn = select_classes(names, exclude=["archery"], num=2, seed=3)
    assert drawn == select_classes(names, exclude=["archery"], num=2, seed=3) and len(drawn) == 2 and 0 not in drawn
    assert drawn == tuple(sorted(drawn))
    assert {select_classes(names, num=3, seed=s) for s in range(1, 6)} != {drawn}  # the seed matters
    assert select_classes(names, keep=["yoga", "Archery"]) == (2, 0)  # a released file's order
    with pytest.raises(ValueError, match="not in the label file"):
        select_classes(names, keep=["surfing"])
    with pytest.raises(ValueError, match=r"num must be in \[1, 3\]"):
        select_classes(names, exclude=["yoga", "abseiling"], num=4)
    with pytest.raises(ValueError, match="does not combine"):
        select_classes(names, keep=["yoga"], num=1)


def split_main(argv: list) -> int:
    return promptcouple_main(["split", *argv])


def test_split_classes_command(tmp_path, capsys):
    (tmp_path / "all.csv").write_text("id,name\n0,archery\n1,k600 only a\n2,k600 only b\n3,Ride Bike\n")
    (tmp_path / "k400.csv").write_text("id,name\n0,Archery\n1,ride_bike\n2,yoga\n")
    lines = "".join(f"c{c}/v{i}.mp4 {c}\n" for c in range(4) for i in range(3))
    (tmp_path / "train.txt").write_text(lines)
    (tmp_path / "val.txt").write_text(lines)
    out = tmp_path / "out"
    assert split_main(["classes", "--labels", str(tmp_path / "all.csv"), "--train", str(tmp_path / "train.txt"),
                       "--val", str(tmp_path / "val.txt"), "--exclude", str(tmp_path / "k400.csv"),
                       "--shots", "2", "--out", str(out)]) == 0
    assert "2 of 4 classes (2 excluded by name)" in capsys.readouterr().out
    assert read_label_csv(out / "labels.csv") == ["k600 only a", "k600 only b"]
    val = read_video_list(out / "val.txt", num_classes=2)
    assert [(r.path[:2], r.label) for r in val] == [("c1", 0)] * 3 + [("c2", 1)] * 3  # relabelled
    shots = read_video_list(out / "train_2shot.txt", num_classes=2)
    assert len(shots) == 4 and {r.path for r in shots} <= {r.path for r in read_video_list(out / "train.txt")}
    assert split_main(["classes", "--labels", str(tmp_path / "all.csv"), "--val", str(tmp_path / "val.txt"),
                       "--shots", "2", "--out", str(out)]) == 2
    assert "--shots draws from the training list" in capsys.readouterr().err
    assert split_main(["classes", "--labels", str(tmp_path / "all.csv"), "--val", str(tmp_path / "val.txt"),
                       "--classes", str(tmp_path / "k400.csv"), "--out", str(out)]) == 2
    assert "not in the label file: ['yoga']" in capsys.readouterr().err


# ------------------------------------------------------- the documented layout, end to end

# Tiny stand-ins for the real datasets: names that overlap across datasets the way the real ones
# do (a K400 class that is also an HMDB-51 / UCF-101 class), so the documented --exclude matters.
TOY = {
    "hmdb51": ["brush hair", "cartwheel", "ride bike", "pour", "wave", "climb"],
    "ucf101": ["ApplyEyeMakeup", "Archery", "Biking", "Drumming", "Fencing", "Typing"],
    "ssv2": ["Pushing something from left to right", "Pushing something from right to left",
             "Moving something up", "Moving something down"],
    "k400": ["archery", "ride bike", "abseiling", "air drumming", "baking cookies", "juggling balls",
             "playing guitar", "yoga"],
    "mydata": ["opening a door", "closing a door", "waving a flag", "folding paper"],
}
TOY["k600"] = TOY["k400"] + [f"k600 class {i}" for i in range(170)]


def _write_video(path: Path) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _make_dataset(folder: Path, names: list[str], *, extra_val_splits: bool) -> None:
    """The files a user provides: labels.csv, train.txt, val.txt (3 / 2 videos per class), videos/."""
    videos = folder / "videos"
    source = folder / "source.mp4"
    folder.mkdir(parents=True)
    _write_video(source)
    (folder / "labels.csv").write_text("id,name\n" + "".join(f'{i},"{n}"\n' for i, n in enumerate(names)))
    lists = {"train.txt": 3, "val.txt": 2}
    if extra_val_splits:
        lists.update({"val_split2.txt": 2, "val_split3.txt": 2})
    for name, per_class in lists.items():
        lines = []
        for c in range(len(names)):
            for i in range(per_class):
                entry = f"c{c}/{Path(name).stem}_{i}.mp4"
                (videos / entry).parent.mkdir(parents=True, exist_ok=True)
                os.link(source, videos / entry)
                lines.append(f"{entry} {c}\n")
        (folder / name).write_text("".join(lines))


def _doc_split_commands() -> list[str]:
    """Every `promptcouple split ...` command in docs/CONFIG.md's bash blocks, in order."""
    commands = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", CONFIG_MD.read_text(), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("promptcouple split "):
                commands.append(" ".join(line.split()))
    return commands


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A checkout's configs/ beside a data/ folder made as docs/CONFIG.md says."""
    root = tmp_path_factory.mktemp("checkout")
    for key, names in TOY.items():
        _make_dataset(root / "data" / key, names, extra_val_splits=key in ("hmdb51", "ucf101"))
    # the released label files the docs' "exactly" commands name
    vifi = root / "ViFi-CLIP" / "labels"
    vifi.mkdir(parents=True)
    (vifi / "hmdb_51_base_labels.csv").write_text("id,name\n0,wave\n1,pour\n2,climb\n")
    (vifi / "hmdb_51_novel_labels.csv").write_text("id,name\n0,brush hair\n1,cartwheel\n2,ride bike\n")
    (vifi / "ZS_split1_K600.csv").write_text("id,name\n" + "".join(f"{i},k600 class {169 - i}\n" for i in range(160)))
    shutil.copytree(CONFIGS, root / "configs", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    commands = _doc_split_commands()
    assert len(commands) >= 15, commands
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for command in commands:
            # the toy classes have 3 training videos, fewer than the protocol's K
            argv = shlex.split(command)[1:] + ["--allow-fewer"]
            assert promptcouple_main(argv) == 0, command
    finally:
        os.chdir(cwd)
    return root


def test_doc_commands_make_the_released_splits_when_given_their_files(layout):
    data = layout / "data"
    assert read_label_csv(data / "hmdb51/b2n/base_labels.csv") == ["wave", "pour", "climb"]
    assert read_label_csv(data / "k600/zero_shot/s1/labels.csv")[:2] == ["k600 class 169", "k600 class 168"]
    for s in (2, 3):  # drawn: 160 of the 170 K600 classes K400 lacks
        names = read_label_csv(data / f"k600/zero_shot/s{s}/labels.csv")
        assert len(names) == 160 and not set(names) & set(TOY["k400"])
    assert len(read_label_csv(data / "k600/hard_prompt_source/labels.csv")) == 100
    anchors = read_label_csv(data / "anchors/k400/labels.csv")
    assert "archery" not in anchors and "ride bike" not in anchors and len(anchors) == 6


def test_every_shipped_config_finds_its_files_in_the_documented_layout(layout):
    configs = layout / "configs"
    # GA2 configs read the hard prompts that the hard-prompt configs write
    for name in ("k400_base", "k600_only100"):
        out = Path(load_config(configs / "hard_prompts" / f"{name}.yaml").run.output_dir)
        out.mkdir(parents=True)
        (out / "prompts.safetensors").write_bytes(b"")
    checked = 0
    for rel in CONFIG_FILES:
        path = configs / rel
        runs = data_config_runs(path, layout / "out") if rel.startswith("data/") else [(rel, load_config(path))]
        for name, cfg in runs:
            try:
                check_files(cfg)
                ds = build_datasets(cfg, train=True)
            except ConfigError as err:
                pytest.fail(f"configs/{rel} ({name}): {err}")
            assert len(ds.train) > 0 and (ds.evals or name == "hard_prompt_source"), (rel, name)
            if cfg.data.novel_list is not None:
                assert ds.base_to_novel
            checked += 1
    assert checked >= len(CONFIG_FILES)


def _base2novel_argv(data_config: Path, out: Path, methods: list[str]) -> list[str]:
    # the docs' commands with a tiny random CLIP, 2 frames and 1 epoch instead of ViT-B/16
    return ["--model", "tiny", "--data-config", str(data_config), "--methods", *methods, "--frames", "2",
            "--epochs", "1", "--batch-size", "4", "--splits", "1", "--workers", "1", "--threads", "1",
            "--out", str(out), "--json", str(out / "b2n.json")]


def test_own_data_walkthrough_runs(layout):
    """docs/CONFIG.md's five steps: the split command ran above; the data.yaml of step 3 next to
    data/; step 4's command with the tiny model."""
    import base2novel

    block = next(text for _, text in yaml_blocks(CONFIG_MD) if "mydata" in text and "datasets" in text)
    (layout / "data.yaml").write_text(block)
    doc = base2novel.main(_base2novel_argv(layout / "data.yaml", layout / "runs" / "mydata", ["zero-shot", "ivlp"]))
    assert sorted(r["method"] for r in doc["runs"]) == ["ivlp", "zero-shot"]
    assert all(r["dataset"] == "mydata" and 0 <= r["hm"] <= 100 for r in doc["runs"])
    assert (layout / "runs" / "mydata" / "b2n.json").is_file()


def test_base2novel_data_config_end_to_end_in_a_subprocess(layout):
    """The shipped data config on the generated lists: hard prompt trained on the K400 base lists,
    anchors from the K400 anchor set, GA2 and IVLP trained, zero-shot CLIP evaluated."""
    out = layout / "runs" / "bench"
    argv = _base2novel_argv(layout / "configs" / "data" / "hmdb_ucf_ssv2.yaml", out, ["zero-shot", "ivlp", "ga2"])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "base2novel.py"), *argv, "--datasets", "hmdb51"],
                          cwd=layout, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "b2n.json").read_text())
    runs = {r["method"]: r for r in doc["runs"]}
    assert set(runs) == {"zero-shot", "ivlp", "ga2"}
    for r in runs.values():
        assert r["dataset"] == "hmdb51" and 0 <= r["base"] <= 100 and 0 <= r["novel"] <= 100
        assert r["hm"] == pytest.approx(2 * r["base"] * r["novel"] / (r["base"] + r["novel"])
                                        if r["base"] + r["novel"] else 0.0)
    assert runs["ga2"]["split"] == 1 and Path(runs["ga2"]["prompts"]).is_file()
    hard = Path(doc["hard_prompts"])
    assert hard.is_file() and hard.parent.parent == out / "cache"  # trained on hard_prompt_source
    assert doc["data"].endswith("hmdb_ucf_ssv2.yaml")
    assert "| GA2, ours (coupling + anchor consistency) |" in proc.stdout
