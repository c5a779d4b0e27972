"""``mini``: a small SD-1.5-shaped model Silk trains itself (tools/mini/make_data.py, then
tools/mini/train.py) and ships in ``models/mini``, so demos, tests and benchmarks paint
pictures that follow the scene without downloading anything. A proxy, not an artist's model.
"""

# How mini paints in the demo, the benchmark and the tests (one place). It was trained with
# empty or plain captions, so the negative prompt is empty; it predicts the clean latents, so
# few steps do, and guidance 1 (no unconditional pass) halves the cost.
MINI_SETTINGS = {"steps": 8, "guidance": 1.0, "scheduler": "euler"}
MINI_PROMPT = "marble, a toy room"
