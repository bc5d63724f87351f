"""Drop-in use of promptcouple inside other codebases' own training scripts.

* :mod:`promptcouple.integrations.vificlip`: ``returnCLIP(config, logger, class_names)`` for
  ViFi-CLIP's ``main.py`` (change its ``from trainers import vificlip`` line);
* :mod:`promptcouple.integrations.xclip`: ``wrap(model, class_names)`` for the model X-CLIP's
  ``models.xclip.load`` returns.

Settings their yacs configs cannot hold (the hard prompt, anchors) come from a small YAML file
named by the ``PROMPTCOUPLE_CONFIG`` environment variable (:mod:`promptcouple.integrations.settings`).
docs/INTEGRATIONS.md has the diffs, the configs and what changes in their outputs.
"""

from promptcouple.integrations.common import anchor_loss, checkpoint_prompt_tensors
from promptcouple.integrations.settings import ENV_VAR, AnchorSettings, IntegrationSettings, load_settings

__all__ = ["ENV_VAR", "AnchorSettings", "IntegrationSettings", "anchor_loss", "checkpoint_prompt_tensors",
           "load_settings"]
