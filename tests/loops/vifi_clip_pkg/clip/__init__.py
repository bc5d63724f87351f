"""A small model of ViFi-CLIP's ``clip`` package: ``clip.clip._MODELS``, ``_download`` and
``build_model(state_dict, design_details)`` (fp16 weights, as theirs), on promptcouple's OpenAI-layout CLIP."""
