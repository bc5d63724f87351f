"""Small models of ViFi-CLIP's and X-CLIP's training loops (their ``main.py`` and ``utils/``), written
from a reading of muzairkhattak/ViFi-CLIP and microsoft/VideoX ``X-CLIP/`` (not copied), keeping what
a drop-in model meets: the calls, the optimizer groups, the checkpoint code, DDP and mixed precision."""
