"""The GA2 settings of a drop-in run: a small YAML file named by ``PROMPTCOUPLE_CONFIG``.

ViFi-CLIP's and X-CLIP's yacs configs refuse keys they do not define, so the settings that have
no key there (the hard prompt, the anchors) cannot go into them without editing their
``utils/config.py``. They live in a file of their own, found through an environment variable, so
the same ``main.py`` command runs GA2 (with the variable) or plain prompts (without it)::

    PROMPTCOUPLE_CONFIG=ga2_hmdb.yaml python -m torch.distributed.launch ... main.py -cfg their.yaml

    # ga2_hmdb.yaml (relative paths are read against this file's folder)
    hard_prompt: k400_base.safetensors      # a prompt file, or a GA2-CLIP hard-prompt .pth
    dropout: 0.5                            # dropout on the coupled context
    anchors:                                # omit for coupled prompts without the anchor term
      list: gaa_train.txt                   # anchor videos (or clips: anchors.safetensors)
      labels: gaa_labels.csv
      root: gaa/videos
      mode: consistency
      weight: 1.0
      batch_size: 1
    prompts: {n_ctx: 16, text_depth: 9, n_vision_ctx: 16, vision_depth: 9}   # X-CLIP only

Without the variable (and without ``settings=``) the settings are empty: prompts of the sizes the
host's config gives (ViFi-CLIP) or the paper's (X-CLIP), uncoupled, no anchors.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from promptcouple.anchors import MODES
from promptcouple.config import CouplingConfig
from promptcouple.constants import HAND_CRAFTED_TEMPLATE
from promptcouple.errors import ConfigError, MissingFileError

ENV_VAR = "PROMPTCOUPLE_CONFIG"


@dataclass
class AnchorSettings:
    """Where the anchor clips come from and how the anchor term acts (as ``anchors:`` in a train config).

    Attributes:
        list: Video list of the anchor clips (ViFi-CLIP / GA2-CLIP list formats).
        labels: Label CSV of the anchor classes (their names are the negative prompts).
        root: Folder of the anchor videos.
        clips: A clip file (``promptcouple.train.write_clip_file``) instead of ``list``.
        mode, weight, batch_size, template, allow_overlap: as :class:`promptcouple.AnchorRegularizer`.
        seed: Shuffling seed of the anchor stream.
    """

    list: Optional[str] = None
    labels: Optional[str] = None
    root: Optional[str] = None
    clips: Optional[str] = None
    mode: str = "consistency"
    weight: float = 1.0
    batch_size: int = 1
    template: str = HAND_CRAFTED_TEMPLATE
    allow_overlap: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.list is None) == (self.clips is None):
            raise ConfigError("anchors: give exactly one of 'list' (anchor videos, with 'labels') or 'clips' "
                              "(a clip file); omit the anchors section to train without the anchor term")
        if self.list is not None and self.labels is None:
            raise ConfigError("anchors.list needs anchors.labels (the label CSV of the anchor classes)")
        if self.mode not in MODES or self.mode == "reference":
            raise ConfigError(f"anchors.mode={self.mode!r}: expected 'consistency' or 'negative' (the released "
                              "'reference' form has no gradient with one anchor label; docs/METHOD.md section 2)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"anchors.batch_size={self.batch_size!r}: expected an int >= 1")
        if not float(self.weight) >= 0:
            raise ConfigError(f"anchors.weight={self.weight!r}: expected a number >= 0")


@dataclass
class IntegrationSettings:
    """Everything a drop-in run takes besides the host's own config (see the module docstring)."""

    hard_prompt: Optional[str] = None
    dropout: float = 0.5
    anchors: Optional[AnchorSettings] = None
    prompts: Optional[dict] = None
    trust: bool = False
    source: str = "defaults"

    @property
    def coupled(self) -> bool:
        return self.hard_prompt is not None

    def coupling_config(self, default: CouplingConfig) -> CouplingConfig:
        """``default`` with ``prompts:`` (if any) and ``dropout`` applied."""
        config = default
        if self.prompts:
            known = {f.name for f in dataclasses.fields(CouplingConfig)}
            unknown = sorted(set(self.prompts) - known)
            if unknown:
                raise ConfigError(f"{self.source}: unknown keys {unknown} under prompts:; known: {sorted(known)}")
            config = dataclasses.replace(config, **self.prompts)
        return dataclasses.replace(config, dropout=float(self.dropout))


_TOP_KEYS = {"hard_prompt", "dropout", "anchors", "prompts", "trust"}


def load_settings(source: Union[None, str, os.PathLike, Mapping[str, Any], IntegrationSettings] = None,
                  ) -> IntegrationSettings:
    """Settings from ``source``: a YAML path, a dict, settings, or ``None`` for ``$PROMPTCOUPLE_CONFIG``.

    Raises:
        MissingFileError: The named file does not exist.
        ConfigError: Unknown keys or values out of range, naming the file.
    """
    if isinstance(source, IntegrationSettings):
        return source
    base = Path.cwd()
    name = "settings"
    if source is None:
        path = os.environ.get(ENV_VAR)
        if not path:
            return IntegrationSettings()
        source, name = path, f"{ENV_VAR}={path}"
    if isinstance(source, (str, os.PathLike)):
        import yaml

        path = Path(source)
        if not path.is_file():
            raise MissingFileError(f"{name}: no settings file at {path}; create it (docs/INTEGRATIONS.md) "
                                   f"or unset {ENV_VAR}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
        base, name = path.resolve().parent, str(path)
    else:
        data = dict(source)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{name}: unknown keys {unknown}; known: {sorted(_TOP_KEYS)}")

    def resolved(value: Optional[str]) -> Optional[str]:
        return None if value is None else str(base / Path(value).expanduser())

    anchors = data.get("anchors")
    if anchors is not None:
        if not isinstance(anchors, Mapping):
            raise ConfigError(f"{name}: anchors must be a mapping, got {type(anchors).__name__}")
        known = {f.name for f in dataclasses.fields(AnchorSettings)}
        bad = sorted(set(anchors) - known)
        if bad:
            raise ConfigError(f"{name}: unknown keys {bad} under anchors:; known: {sorted(known)}")
        anchors = dict(anchors)
        for key in ("list", "labels", "root", "clips"):
            anchors[key] = resolved(anchors.get(key))
        try:
            anchors = AnchorSettings(**anchors)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err}") from None
    prompts = data.get("prompts")
    if prompts is not None and not isinstance(prompts, Mapping):
        raise ConfigError(f"{name}: prompts must be a mapping of CouplingConfig fields, got {type(prompts).__name__}")
    dropout = data.get("dropout", 0.5)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{name}: dropout={dropout!r}, expected a probability in [0, 1)")
    return IntegrationSettings(hard_prompt=resolved(data.get("hard_prompt")), dropout=float(dropout), anchors=anchors,
                               prompts=dict(prompts) if prompts is not None else None,
                               trust=bool(data.get("trust", False)), source=name)
