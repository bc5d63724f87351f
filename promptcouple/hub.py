"""Prompt sets on the Hugging Face Hub, and folders laid out like a Hub repository.

A repository (or a local folder) holds ``prompts.safetensors`` (the prompt file) and
``README.md`` (a model card generated from the file's metadata), the names
:func:`save_pretrained` writes and :func:`resolve_prompt_source` looks for. Sources, everywhere a
prompt file is read (``from_pretrained``, ``pc.read_prompt_file``, ``promptcouple predict``)::

    prompts.safetensors                    a file
    runs/hmdb_s1/                          a folder holding prompts.safetensors
    org/repo                               a Hub repository's prompts.safetensors (when no such local path exists)
    hf-hub:org/repo                        the same, always the Hub
    hf-hub:org/repo/sub/s1.safetensors     another file of the repository
    hf-hub:org/repo/ga2_hmdb.pth           a reference checkpoint, converted on the fly

Downloads go through ``huggingface_hub`` (``pip install promptcouple[hub]``) into its cache, so
``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE`` and ``HF_TOKEN`` act as they do for any Hub library. A
reference checkpoint (``.pth``) is read with ``torch.load(weights_only=True)``, converted by
:func:`promptcouple.convert.convert_checkpoint` and the prompt file kept in the promptcouple cache
(:func:`cache_dir`: ``$PROMPTCOUPLE_CACHE``, else ``$XDG_CACHE_HOME/promptcouple``, else
``~/.cache/promptcouple``) under ``converted/models--org--repo/<blob hash>.safetensors``, keyed by
the checkpoint's content, so it is converted once per version.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from promptcouple.errors import InvalidInputError, MissingFileError
from promptcouple.fileio import PathLike, atomic_write_text

logger = logging.getLogger(__name__)

PROMPTS_NAME = "prompts.safetensors"
CARD_NAME = "README.md"
HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def cache_dir() -> Path:
    """Where converted Hub checkpoints are kept (see the module docstring)."""
    if os.environ.get("PROMPTCOUPLE_CACHE"):
        return Path(os.environ["PROMPTCOUPLE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "promptcouple"


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise InvalidInputError("reading or writing prompt sets on the Hugging Face Hub needs huggingface_hub; "
                                "fix: pip install 'promptcouple[hub]'") from None
    return huggingface_hub


def parse_hub_reference(source: str) -> tuple[str, str]:
    """``hf-hub:org/repo[/path/in/repo]`` (or ``org/repo``) -> ``(repo_id, filename)``."""
    ref = source[len(HUB_PREFIX):] if source.startswith(HUB_PREFIX) else source
    parts = [p for p in ref.strip("/").split("/") if p]
    if len(parts) < 2 or not _REPO_ID.match("/".join(parts[:2])):
        raise InvalidInputError(f"{source!r} is not a Hub reference; expected hf-hub:org/repo or "
                                "hf-hub:org/repo/file.safetensors")
    return "/".join(parts[:2]), "/".join(parts[2:]) or PROMPTS_NAME


def is_hub_reference(source: Any) -> bool:
    """``hf-hub:...``, or ``org/repo`` where no such local path exists."""
    if not isinstance(source, str):
        return False
    if source.startswith(HUB_PREFIX):
        return True
    # "runs/s1.safetensors" that does not exist is a mistyped file, not a repository
    return bool(_REPO_ID.match(source)) and not source.endswith((".safetensors", *CHECKPOINT_SUFFIXES)) \
        and not os.path.exists(source)


def hub_download(repo_id: str, filename: str, *, revision: Optional[str] = None) -> Path:
    """A file of a Hub model repository, from the local cache or downloaded into it.

    Raises:
        MissingFileError: Not cached while offline, or no such repository or file (one line,
            naming the repository and the offline setting).
    """
    hub = _hub()
    # constants is a submodule that `import huggingface_hub` does not make an attribute by itself.
    from huggingface_hub import constants
    from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    where = f"hf-hub:{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    offline = constants.HF_HUB_OFFLINE
    try:
        return Path(hub.hf_hub_download(repo_id, filename, revision=revision))
    except LocalEntryNotFoundError:
        if offline:
            raise MissingFileError(f"{where}: not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                                   "HF_HUB_OFFLINE=1 forbids downloading it; fix: download it once online "
                                   f"(unset HF_HUB_OFFLINE), or point HF_HUB_CACHE at a cache holding {repo_id}") from None
        raise MissingFileError(f"{where}: not cached and the Hub cannot be reached (HF_HUB_OFFLINE is not set); "
                               "fix: check the network, or set HF_HUB_CACHE to a cache that holds it") from None
    except RepositoryNotFoundError:
        raise MissingFileError(f"{where}: no repository {repo_id!r} on the Hub (or it is private: set HF_TOKEN); "
                               "fix: check the name") from None
    except RevisionNotFoundError:
        raise MissingFileError(f"{where}: the repository {repo_id!r} has no revision {revision!r}; fix: check the "
                               "branch, tag or commit") from None
    except EntryNotFoundError:
        raise MissingFileError(f"{where}: the repository {repo_id!r} has no file {filename!r}; fix: name the file, "
                               f"e.g. hf-hub:{repo_id}/{PROMPTS_NAME}") from None


def _converted(repo_id: str, checkpoint: Path) -> Path:
    """The prompt file of a reference checkpoint from the Hub, converted once and cached."""
    from promptcouple.convert import convert_checkpoint

    # Keyed by the content, not the name: a new upload, or two files of one name in different folders,
    # must not get one another's conversion (the cache's blob names are hashes only where it uses symlinks).
    from promptcouple.train.run_info import sha256_of

    key = sha256_of(checkpoint)
    target = cache_dir() / "converted" / f"models--{repo_id.replace('/', '--')}" / f"{key}.safetensors"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(checkpoint, target)  # weights_only=True: a file from the Hub is not trusted
        logger.info("converted %s from %s into %s", checkpoint.name, repo_id, target)
    return target


def resolve_prompt_source(source: Union[PathLike, str], *, revision: Optional[str] = None) -> Path:
    """The local prompt file a source names (see the module docstring): a file, a folder's
    ``prompts.safetensors``, or a Hub file (downloaded or taken from the cache; a ``.pth`` converted).

    Raises:
        MissingFileError: Nothing there.
    """
    if is_hub_reference(source):
        repo_id, filename = parse_hub_reference(str(source))
        try:
            path = hub_download(repo_id, filename, revision=revision)
        except MissingFileError as err:
            if str(source).startswith(HUB_PREFIX):
                raise
            raise MissingFileError(f"no file or folder {source!r} here, and as a Hub repository: {err}") from None
        return _converted(repo_id, path) if path.suffix in CHECKPOINT_SUFFIXES else path
    path = Path(source)
    if path.is_dir():
        if not (path / PROMPTS_NAME).is_file():
            raise MissingFileError(f"{path} is a folder without {PROMPTS_NAME}; expected a folder written by "
                                   "save_pretrained or a run folder, or give the prompt file itself")
        return path / PROMPTS_NAME
    return path


# ----------------------------------------------------------------------------------- model card


def run_results(prompt_path: Optional[PathLike]) -> Optional[dict]:
    """The final evaluation of the run folder a prompt file sits in (its ``results.json``), if any."""
    from promptcouple.train.config import RESULTS

    if prompt_path is None:
        return None
    found = Path(prompt_path).parent / RESULTS
    try:
        results = json.loads(found.read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) and results.get("eval") else None


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flat(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, value)] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def model_card(pf, *, repo_id: Optional[str] = None, results: Optional[dict] = None) -> str:
    """A model card (Markdown with Hub front matter) from a :class:`PromptFile`'s metadata."""
    from promptcouple import __version__
    from promptcouple.io import run_info_of

    info = run_info_of(pf.metadata)
    backbone = info.get("backbone") or {}
    name = backbone.get("name")
    source = f"hf-hub:{repo_id}" if repo_id else "path/to/folder"
    lines = ["---", "library_name: promptcouple", "tags:", "- promptcouple", "- prompt-tuning", "- clip",
             "- video-classification", "---", "",
             f"# {repo_id.split('/')[-1] if repo_id else 'Prompt set'}", "",
             "Prompts for a frozen CLIP-style video model, trained with "
             "[promptcouple](https://arxiv.org/abs/2511.22125) (GA2-CLIP's coupled hard and soft prompts). "
             f"The file `{PROMPTS_NAME}` holds only the prompt tensors; the backbone is loaded separately.", "",
             "## Backbone", ""]
    if backbone:
        lines += [f"- {key}: `{value}`" for key, value in backbone.items() if value is not None]
    else:
        lines.append("- not recorded (a converted or hand-written file); use the backbone it was trained on")
    if "num_frames" in info:
        lines.append(f"- frames per clip: {info['num_frames']}, frame size: {info.get('image_size')} px")
    lines += ["", "## Prompts", "", f"- coupled to a hard prompt: {'yes' if pf.coupled else 'no'}"]
    if pf.metadata.get("merged_from"):
        lines.append(f"- merged (coupled context computed once) from: `{pf.metadata['merged_from']}`")
    n_params = sum(t.numel() for t in pf.tensors.values())
    lines += [f"- tensors: {len(pf.tensors)}, {n_params:,} values", "", "```json", pf.config.to_json(), "```", ""]
    classnames = info.get("classnames")
    if classnames:
        lines += ["## Classes", "", f"Trained on {len(classnames)} classes: {', '.join(classnames)}.", ""]
        for set_name, names in (info.get("eval_classnames") or {}).items():
            lines.append(f"- evaluated on `{set_name}` ({len(names)}): {', '.join(names)}")
        lines.append("")
    rows = _flat("", (results or {}).get("eval", {}))
    if rows:
        lines += ["## Results", "", "The training run's final evaluation (its `results.json`):", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
        lines.append("")
    model_line = (f'clip = open_clip.create_model("{name}", pretrained={backbone.get("pretrained")!r})'
                  if name and name not in ("tiny", "tiny-quickgelu", "world") else
                  "clip = ...  # the backbone named above")
    if backbone.get("backbone_checkpoint"):  # a fine-tuned backbone (ViFi-CLIP, GA2-CLIP) loaded over it
        model_line += ("\nfrom promptcouple.train.backbone import load_backbone\n"
                       f"load_backbone(clip, {backbone['backbone_checkpoint']!r})   # the checkpoint named above")
    lines += ["## Use", "", "```python", "import open_clip", "import promptcouple as pc", "", model_line,
              f'model = pc.CouplingPromptWrapper.from_pretrained(clip, "{source}").eval()',
              "probabilities = model(frames, classnames).softmax(-1)   # frames (B, T, 3, H, W)", "```", "",
              "```bash", f"promptcouple predict video.mp4 --prompts {source if repo_id else 'path/to/folder'}",
              "```", "", f"Written by promptcouple {__version__}.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- save / load


def save_pretrained(source, directory: PathLike, *, results: Optional[dict] = None,
                    repo_id: Optional[str] = None) -> Path:
    """Write ``directory/prompts.safetensors`` and ``directory/README.md`` (the model card).

    ``source``: a wrapper (its active prompts) or a prompt file (path, folder or Hub reference;
    the card then takes the results of the run folder it sits in). Returns the folder.
    """
    from promptcouple.io import PromptFile, check_prompt_tensors, read_prompt_file

    directory = Path(directory)
    if directory.suffix == ".safetensors" and hasattr(source, "save_prompts"):
        # What wrapper.save_pretrained(path) did before it wrote a folder: kept for a release.
        warnings.warn(f"save_pretrained({str(directory)!r}): save_pretrained now writes a folder ({PROMPTS_NAME} and "
                      f"{CARD_NAME}); for one file use save_prompts, which this call did", FutureWarning, stacklevel=3)
        source.save_prompts(directory)
        return directory
    if directory.suffix == ".safetensors" or directory.is_file():
        raise InvalidInputError(f"save_pretrained: {directory} names a file; it takes a folder (it writes "
                                f"{PROMPTS_NAME} and {CARD_NAME} there); for one file use save_prompts")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / PROMPTS_NAME
    if isinstance(source, PromptFile):  # built in memory (e.g. merged): written with its own metadata
        from promptcouple.merge import save_prompt_file

        check_prompt_tensors(source.tensors, source.config, "save_pretrained")
        save_prompt_file(source, target)
    elif hasattr(source, "save_prompts"):
        source.save_prompts(target)
    else:
        path = resolve_prompt_source(source)
        read_prompt_file(path)  # only prompt files are published
        results = results if results is not None else run_results(path)
        if path.resolve() != target.resolve():
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
    atomic_write_text(directory / CARD_NAME, model_card(read_prompt_file(target), repo_id=repo_id, results=results))
    return directory


def from_pretrained(cls, model, source, *, hard_prompts=None, revision: Optional[str] = None, **kwargs):
    """Wrap ``model`` with the config, hard prompt and tensors of the prompt file ``source`` names
    (a file, a folder, ``org/repo`` or ``hf-hub:...``; see :func:`resolve_prompt_source`)."""
    from promptcouple.io import PromptFile, read_prompt_file, recorded_descriptions

    pf = source if isinstance(source, PromptFile) else read_prompt_file(resolve_prompt_source(source, revision=revision))
    if pf.coupled and hard_prompts is None:
        hard_prompts = pf.tensors.get("text.hard")
        if hard_prompts is None:
            raise InvalidInputError(f"{source} was trained with a hard prompt that it does not contain "
                                    "(converted from a GA2-CLIP checkpoint?); pass hard_prompts=")
    kwargs.setdefault("train_host", tuple(json.loads(pf.metadata.get("train_host", "[]"))))
    wrapper = cls(model, pf.config, hard_prompts=hard_prompts if pf.coupled else None, **kwargs)
    wrapper.load_prompts(pf)
    wrapper.descriptions = recorded_descriptions(pf)  # those it was trained with
    return wrapper


def push_to_hub(source, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                commit_message: Optional[str] = None, revision: Optional[str] = None) -> str:
    """Upload a prompt set (a wrapper's active prompts, or a prompt file) with its model card.

    The repository is created if needed; returns the commit's URL.
    """
    hub = _hub()
    if not _REPO_ID.match(repo_id):
        raise InvalidInputError(f"repo_id {repo_id!r}: expected 'org/name' (your user name or an organisation)")
    with tempfile.TemporaryDirectory(prefix="promptcouple-push-") as folder:
        save_pretrained(source, folder, repo_id=repo_id)
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
                                 commit_message=commit_message or "Upload prompts with promptcouple")
    return str(getattr(info, "commit_url", info))
