"""The bridge between Blender and the diffusion worker process (no ``bpy`` here).

- ``protocol``: length-prefixed JSON messages with optional binary attachments, and
  their validation. Nothing is ever unpickled.
- ``frames``: image frames through memory-mapped files shared by local processes,
  or inline attachments for a remote worker.
- ``client``: what Blender uses: starts, watches and talks to the worker.
- ``worker``: the worker process (a script run by another Python).
- ``diffusion``, ``tiny_model``: the worker's Stable Diffusion side (torch, diffusers).
- ``environment``: which Python runs the worker, and installing one.
"""
