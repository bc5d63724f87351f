"""Prompt sets on the Hub: a hand-filled Hugging Face cache read offline, push up to the upload, the card."""

import hashlib
import json
import os
import shutil

import pytest
import torch

import promptcouple as pc
from promptcouple import hub
from promptcouple.cli import main as cli
from promptcouple.io import save_prompts
from hosts import make_host
from test_io import CLASSES, reference_state, trained_wrapper

huggingface_hub = pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache, repo_id, files):
    """Lay out ``files`` ({name in repo: local path}) as huggingface_hub keeps a downloaded snapshot:
    blobs named by content hash, snapshot entries linking to them, refs/main naming the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, src in files.items():
        data = open(src, "rb").read()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        entry = repo / "snapshots" / COMMIT / name
        entry.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, entry.parent), entry)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    # huggingface_hub reads these variables when it is imported: set both the variables and its constants.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("PROMPTCOUPLE_CACHE", str(tmp_path / "pc-cache"))
    return cache


def test_prompt_file_and_reference_checkpoint_load_from_an_offline_cache(tmp_path, tokenizer, offline_cache):
    wrapper = trained_wrapper(tokenizer)
    wrapper.save_prompts(tmp_path / "p.safetensors")
    torch.save({"model_state_dict": reference_state(wrapper, "ga2")}, tmp_path / "ga2.pth")
    fill_cache(offline_cache, "org/prompts", {"prompts.safetensors": tmp_path / "p.safetensors",
                                              "s2/ga2_hmdb.pth": tmp_path / "ga2.pth"})
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        expected = wrapper(x, CLASSES)
    for source in ("org/prompts", "hf-hub:org/prompts", "hf-hub:org/prompts/prompts.safetensors"):
        clone = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), source, tokenizer=tokenizer).eval()
        with torch.no_grad():
            assert torch.equal(clone(x, CLASSES), expected), source
    pf = pc.read_prompt_file("hf-hub:org/prompts/prompts.safetensors")
    assert torch.equal(pf.tensors["text.ctx"], wrapper.prompts.ctx)

    # The .pth is converted on the fly, once, into the promptcouple cache (keyed by the blob's hash).
    converted = pc.read_prompt_file("hf-hub:org/prompts/s2/ga2_hmdb.pth")
    assert converted.coupled and "text.hard" not in converted.tensors
    assert torch.equal(converted.tensors["coupling.weight"], wrapper.prompts.coupling.weight)
    cached = list((tmp_path / "pc-cache" / "converted" / "models--org--prompts").iterdir())
    assert len(cached) == 1 and cached[0].name == hashlib.sha256((tmp_path / "ga2.pth").read_bytes()).hexdigest() \
        + ".safetensors"
    mtime = cached[0].stat().st_mtime_ns
    clone = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), "hf-hub:org/prompts/s2/ga2_hmdb.pth",
                                tokenizer=tokenizer, hard_prompts=wrapper.prompts.hard).eval()
    assert cached[0].stat().st_mtime_ns == mtime  # not converted again
    with torch.no_grad():
        assert torch.equal(clone(x, CLASSES), expected)


def test_a_file_missing_from_the_offline_cache_is_one_line_naming_repo_and_setting(tmp_path, offline_cache, capsys):
    fill_cache(offline_cache, "org/prompts", {})
    with pytest.raises(pc.PromptcoupleError) as err:
        pc.read_prompt_file("hf-hub:org/other/prompts.safetensors")
    text = str(err.value)
    assert "\n" not in text and "org/other" in text and "HF_HUB_OFFLINE=1" in text
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FileNotFoundError, match="no file or folder 'org/other' here, and as a Hub repository"):
        hub.resolve_prompt_source("org/other")  # a bare org/repo that is no local path either
    assert not hub.is_hub_reference("runs/missing.safetensors")  # a mistyped file stays a file
    assert cli(["inspect", "hf-hub:org/prompts/missing.safetensors"]) == 2
    out = capsys.readouterr().err.strip()
    assert len(out.splitlines()) == 1 and "org/prompts" in out and "HF_HUB_OFFLINE=1" in out


def run_folder(tmp_path, tokenizer):
    """A prompt file as a training run leaves it: run information inside, results.json beside."""
    folder = tmp_path / "runs" / "s1"
    folder.mkdir(parents=True)
    wrapper = trained_wrapper(tokenizer)
    info = {"classnames": CLASSES, "eval_classnames": {"val": ["archery", "yoga", "fencing"]},
            "backbone": {"name": "ViT-B-16-quickgelu", "pretrained": "openai", "backbone_checkpoint": "/ck/k400.pth",
                         "backbone_checkpoint_sha256": "ab" * 32},
            "num_frames": 8, "image_size": 224}
    save_prompts(wrapper, folder / "prompts.safetensors", run_info=info)
    (folder / "results.json").write_text(json.dumps({"status": "finished", "eval": {"val": {"top1": 0.8125,
                                                                                           "top5": 1.0}}}))
    return wrapper, folder


def check_card(card, repo_id):
    assert card.startswith("---\nlibrary_name: promptcouple")
    for expected in ("ViT-B-16-quickgelu", "ab" * 32, "archery, yoga", "`val` (3): archery, yoga, fencing",
                     '"n_ctx": 4', "| val.top1 | 0.8125 |", "coupled to a hard prompt: yes",
                     f'from_pretrained(clip, "hf-hub:{repo_id}")', f"--prompts hf-hub:{repo_id}",
                     'open_clip.create_model("ViT-B-16-quickgelu", pretrained=\'openai\')',
                     "load_backbone(clip, '/ck/k400.pth')"):
        assert expected in card, expected


def test_push_to_hub_uploads_the_file_and_its_card(tmp_path, tokenizer, monkeypatch):
    _, folder = run_folder(tmp_path, tokenizer)
    calls = []

    class FakeApi:  # records what would go to the Hub; nothing leaves the machine
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path)), kwargs))
            shutil.copytree(folder_path, tmp_path / "uploaded", dirs_exist_ok=True)
            return type("CommitInfo", (), {"commit_url": f"https://hf.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert cli(["push", str(folder / "prompts.safetensors"), "me/hmdb-s1", "--private"]) == 0
    assert calls[0] == ("init", None)
    assert calls[1] == ("create_repo", "me/hmdb-s1", {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2][:3] == ("upload_folder", "me/hmdb-s1", ["README.md", "prompts.safetensors"])
    uploaded = tmp_path / "uploaded"
    assert (uploaded / "prompts.safetensors").read_bytes() == (folder / "prompts.safetensors").read_bytes()
    check_card((uploaded / "README.md").read_text(), "me/hmdb-s1")

    with pytest.raises(pc.PromptcoupleError, match="expected 'org/name'"):
        hub.push_to_hub(folder, "no-slash")
    calls.clear()
    wrapper = trained_wrapper(tokenizer)
    assert wrapper.push_to_hub("me/other", private=False).endswith("me/other/commit/1")
    assert calls[1] == ("create_repo", "me/other", {"repo_type": "model", "private": False, "exist_ok": True})


def test_save_pretrained_writes_the_repo_layout_and_from_pretrained_reads_it(tmp_path, tokenizer):
    wrapper, folder = run_folder(tmp_path, tokenizer)
    out = hub.save_pretrained(folder, tmp_path / "export", repo_id="me/hmdb-s1")  # a run folder: results kept
    assert sorted(os.listdir(out)) == ["README.md", "prompts.safetensors"]
    check_card((out / "README.md").read_text(), "me/hmdb-s1")
    assert cli(["push", str(folder), "me/hmdb-s1", "--save-to", str(tmp_path / "cli")]) == 0  # the layout, no upload
    assert (tmp_path / "cli" / "README.md").read_text() == (out / "README.md").read_text()

    wrapper.save_pretrained(tmp_path / "from_wrapper")  # a wrapper: no run, no results section
    card = (tmp_path / "from_wrapper" / "README.md").read_text()
    assert "## Results" not in card and "not recorded" in card
    x = torch.randn(1, 2, 3, 32, 32)
    for source in (tmp_path / "from_wrapper", str(tmp_path / "from_wrapper" / "prompts.safetensors")):
        clone = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), source, tokenizer=tokenizer)
        with torch.no_grad():
            assert torch.equal(clone.eval()(x, CLASSES), wrapper(x, CLASSES))
    with pytest.warns(FutureWarning, match="now writes a folder"):  # the old meaning, for a release
        wrapper.save_pretrained(tmp_path / "p.safetensors")
    assert torch.equal(pc.read_prompt_file(tmp_path / "p.safetensors").tensors["text.ctx"], wrapper.prompts.ctx)
    with pytest.raises(pc.PromptcoupleError, match="takes a folder"):
        hub.save_pretrained(tmp_path / "p.safetensors", tmp_path / "q.safetensors")
    with pytest.raises(FileNotFoundError, match="without prompts.safetensors"):
        hub.resolve_prompt_source(tmp_path / "runs")


def test_offline_miss_in_a_fresh_process_is_the_typed_error(tmp_path):
    """A fresh process has not imported huggingface_hub.constants yet (the fixtures above have):
    the miss must still be the one-line MissingFileError, not an AttributeError."""
    import subprocess
    import sys

    code = ("from promptcouple.hub import hub_download\n"
            "try:\n    hub_download('org/repo', 'prompts.safetensors')\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("MissingFileError hf-hub:org/repo/prompts.safetensors") and "HF_HUB_OFFLINE=1" in out, out


def test_converted_checkpoints_are_keyed_by_content(tmp_path, monkeypatch):
    """Two checkpoints of one name (no symlinks in the cache) must not share one conversion."""
    monkeypatch.setenv("PROMPTCOUPLE_CACHE", str(tmp_path / "pc"))
    calls = []
    monkeypatch.setattr("promptcouple.convert.convert_checkpoint",
                        lambda src, dst, **kw: (calls.append(src), dst.write_bytes(src.read_bytes())))
    for folder, content in (("a", b"hmdb"), ("b", b"ucf")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "ga2.pth").write_bytes(content)
    first = hub._converted("org/repo", tmp_path / "a" / "ga2.pth")
    second = hub._converted("org/repo", tmp_path / "b" / "ga2.pth")
    again = hub._converted("org/repo", tmp_path / "a" / "ga2.pth")
    assert first != second and first == again and len(calls) == 2
    assert second.read_bytes() == b"ucf"
