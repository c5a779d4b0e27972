"""The bridge between Blender and the diffusion worker process (no ``bpy`` here)."""
