"""Which EXR channels a loop's repainted picture replaces (no ``bpy``, no OpenImageIO)."""
from silk.engine.exr_output import _combined_index


def test_only_the_combined_pass_channels_are_replaced():
    assert [_combined_index(name) for name in "RGBA"] == [0, 1, 2, 3]  # a single-layer EXR
    assert [_combined_index(f"ViewLayer.Combined.{c}") for c in "RGBA"] == [0, 1, 2, 3]
    assert _combined_index("ViewLayer.Combined.left.R") == 0  # a stereo render's view
    for other in ("Z", "ViewLayer.Depth.Z", "ViewLayer.Normal.X", "ViewLayer.Vector.W", "ViewLayer.Noise.R",
                  "ViewLayer.Occlusion.X", "Combined", "ViewLayer.Combined.RG", "ViewLayer.Combined."):
        assert _combined_index(other) is None, other
