"""Host models shipped with promptcouple: a minimal OpenAI-layout CLIP and an X-CLIP style video model."""
